"""Bounded LoRA inside PEFT: a `LoraConfig` subclass, a LoRA variant and the layer that uses it.

A bounded adapter's `adapter_config.json` names `peft_type: HARNESS_BOUNDED_LORA`, a type that plain
PEFT does not know, so `PeftModel.from_pretrained` refuses the directory instead of computing plain LoRA
(`W0 + s B A`); its `init_lora_weights` is a marker that vLLM's LoRA loader refuses. Two ways to get
a `PeftModel` that computes the bounded weight:

- `harness.adapters.load_as_peft_model(base, adapter_dir)`: builds the config from the adapter's files
  and loads it through PEFT; nothing global changes;
- `register_with_peft()`, once per process: afterwards `PeftModel.from_pretrained(base, adapter_dir)`
  (and `PeftConfig.from_pretrained`, `AutoPeftModelForCausalLM`) load bounded adapters themselves.

The layer goes through PEFT's custom-module mechanism (`LoraConfig._register_custom_module`, which the
config does in `__post_init__`, since PEFT does not save that mapping) and computes its update with
PEFT's LoRA-variant hooks, so PEFT's forward, mixed-batch forward, merge, unmerge and
`merge_and_unload` all apply `delta W = (alpha/r) f(omega B A) / g(d_in)` (harness.adapters.bounds).
Both are PEFT APIs marked experimental/private (PEFT 0.21); `tests/adapters` pin the behaviour.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.layer import LoraLayer, LoraVariant
from torch import nn
from transformers.pytorch_utils import Conv1D

from harness.adapters.bounds import BOUNDS, Bound
from harness.adapters.format import BOUNDED_INIT_MARKER
from harness.adapters.format import BOUNDED_PEFT_TYPE as PEFT_TYPE
from harness.adapters.fused import bounded_linear


@dataclasses.dataclass
class BoundedLoraConfig(LoraConfig):
    """`LoraConfig` plus the bound (`sine`, `tanh`, `clip`); saved with `peft_type: HARNESS_BOUNDED_LORA`."""

    bound: str = dataclasses.field(default="sine", metadata={"help": "bound function (harness.adapters.bounds)"})
    omega: float = dataclasses.field(default=100.0, metadata={"help": "frequency omega of sine/tanh"})
    clip_value: float = dataclasses.field(default=0.01, metadata={"help": "clip bound c"})

    def __post_init__(self) -> None:
        if self.init_lora_weights == BOUNDED_INIT_MARKER:  # as saved (for vLLM's sake): PEFT's default init
            self.init_lora_weights = True
        super().__post_init__()
        if self.bound not in BOUNDS or self.bound == "none":
            raise ValueError(f"BoundedLoraConfig.bound must be one of "
                             f"{[b for b in BOUNDS.names() if b != 'none']}, got {self.bound!r}")
        self._register_custom_module({nn.Linear: BoundedLinear, Conv1D: BoundedLinear})

    def to_dict(self) -> dict[str, Any]:
        """The config as saved: the harness peft_type (plain PEFT refuses it) and an `init_lora_weights`
        that vLLM's LoRA loader refuses (it reads no peft_type); both mean PEFT's plain init here."""
        out = super().to_dict()
        out["peft_type"] = PEFT_TYPE
        if out.get("init_lora_weights") is True:
            out["init_lora_weights"] = BOUNDED_INIT_MARKER
        return out


def layer_bound(module: LoraLayer, adapter: str) -> Bound:
    """The bound of `adapter` on `module`, with PEFT's own `scaling[adapter]` as `alpha / r`."""
    name, omega, clip_value = module.bound_settings[adapter]
    cls = BOUNDS.get(name)
    return cls(scale=module.scaling[adapter] / cls.norm(module.in_features), omega=omega, clip_value=clip_value)


def _delta(module: LoraLayer, adapter: str) -> torch.Tensor:
    """`delta W` of `adapter` in the base layer's weight layout (transposed for Conv1D)."""
    a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
    delta = layer_bound(module, adapter).delta(b @ a)
    return delta.t() if module.fan_in_fan_out else delta


class BoundedLinearVariant(LoraVariant):
    """PEFT LoRA-variant hooks that apply the bound to the full product `B A`."""

    def supports_lora_conversion(self) -> bool:
        """A bounded update is not low rank: PEFT's `convert_to_lora` must not approximate it."""
        return False

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, config: BoundedLoraConfig | None = None, **kwargs: Any) -> None:
        if not isinstance(config, BoundedLoraConfig):
            raise TypeError(f"a bounded LoRA layer needs a BoundedLoraConfig, got {type(config).__name__}")
        module.bound_settings[adapter_name] = (config.bound, float(config.omega), float(config.clip_value))

    @staticmethod
    def merge_safe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + _delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += _delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - _delta(module, active_adapter).to(orig_weight.dtype)

    @staticmethod
    def forward(module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor,
                **kwargs: Any) -> torch.Tensor:
        a, b = module.lora_A[active_adapter].weight, module.lora_B[active_adapter].weight
        x = module.lora_dropout[active_adapter](x.to(a.dtype))
        update = bounded_linear(x, None, None, a, b, layer_bound(module, active_adapter))
        return result + update.to(result.dtype)


class BoundedLinear(PeftLoraLinear):
    """PEFT's LoRA `Linear` (nn.Linear or Conv1D base) whose every adapter is a `BoundedLinearVariant`."""

    other_param_names = (*PeftLoraLinear.other_param_names, "bound_settings")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: BoundedLoraConfig, **kwargs: Any) -> None:
        # Set before the parent's __init__, whose update_layer runs the variant's init.
        self.__dict__["bound_settings"] = {}
        kwargs.setdefault("is_target_conv_1d_layer", isinstance(base_layer, Conv1D))
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> LoraVariant:
        return BoundedLinearVariant()

    def __repr__(self) -> str:
        return "lora." + nn.Module.__repr__(self)


def register_with_peft() -> None:
    """Let plain `PeftModel.from_pretrained` / `PeftConfig.from_pretrained` load bounded adapters (idempotent)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    PEFT_TYPE_TO_CONFIG_MAPPING[PEFT_TYPE] = BoundedLoraConfig


def is_registered_with_peft() -> bool:
    """True once `register_with_peft()` ran in this process."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING.get(PEFT_TYPE) is BoundedLoraConfig
