"""Frozen adapter extras that objectives' preparation passes set, and their checkpoint file.

- Update mask (SalUn): `W = W0 + M * delta(B A)` with a 0/1 matrix `M` per layer, so the weights outside the
  mask stay exactly at `W0`.
- Origin (FILA, LoKU's initialisation): the factors start at `(A0, B0)` and the base weight becomes
  `W0 - delta(B0 A0)`, so the model starts unchanged; the change from the target is then
  `delta(B A) - delta(B0 A0)` (for a bound `|delta| <= c` elementwise, at most `2c`).

Both are stored beside the PEFT-format weights in `adapter_extras.safetensors` (keys `<module>.update_mask`,
`<module>.origin_A`, `<module>.origin_B`), and `bound_config.json` lists which are present, so an adapter
with extras never loads as plain LoRA.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save

from harness.adapters.layer import BoundedLoRALinear
from harness.core.errors import DataError

EXTRAS_NAME = "adapter_extras.safetensors"
#: The kinds of extras, as named in `bound_config.json` ("extras": [...]).
MASK, ORIGIN = "update_mask", "origin"


def linear_slope(layer: BoundedLoRALinear) -> float:
    """`d delta / d M` at `M = 0`: `alpha/r` for plain LoRA and clip, `scale * omega` for sine and tanh."""
    m = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(layer.bound.delta(m), m)
    return float(slope)


@torch.no_grad()
def set_update_mask(layer: BoundedLoRALinear, mask: torch.Tensor) -> None:
    """Restrict the layer's update to `mask` (d_out x d_in, nn.Linear orientation; nonzero = free)."""
    if layer.origin_A is not None:
        raise ValueError("a layer with an origin (FILA) cannot also take an update mask")
    shape = (layer.out_features, layer.in_features)
    if tuple(mask.shape) != shape:
        raise ValueError(f"update mask has shape {tuple(mask.shape)}, the layer needs {shape}")
    layer.update_mask = mask.to(device=layer.base_layer.weight.device, dtype=torch.bool)


@torch.no_grad()
def set_origin(layer: BoundedLoRALinear, a0: torch.Tensor, b0: torch.Tensor) -> None:
    """Start the factors at `(a0, b0)` and subtract their update from the base weight (an exact no-op start)."""
    if layer.origin_A is not None:
        raise ValueError("the layer already has an origin")
    if tuple(a0.shape) != tuple(layer.lora_A.weight.shape) or tuple(b0.shape) != tuple(layer.lora_B.weight.shape):
        raise ValueError(f"origin factors have shapes {tuple(a0.shape)}, {tuple(b0.shape)}; the layer needs "
                         f"{tuple(layer.lora_A.weight.shape)}, {tuple(layer.lora_B.weight.shape)}")
    w = layer.base_layer.weight
    a0 = a0.to(device=w.device, dtype=torch.float32)
    b0 = b0.to(device=w.device, dtype=torch.float32)
    offset = layer.update(a0, b0)  # in fp32, then stored in the base weight's dtype
    w.sub_((offset.t() if layer.fan_in_fan_out else offset).to(w.dtype))
    layer.lora_A.weight.copy_(a0)
    layer.lora_B.weight.copy_(b0)
    layer.origin_A, layer.origin_B = a0, b0


@torch.no_grad()
def clear_origin(layer: BoundedLoRALinear) -> None:
    """Add the origin's update back to the base weight (the inverse of `set_origin`, up to rounding)."""
    if layer.origin_A is None:
        return
    offset = layer.update(layer.origin_A, layer.origin_B)
    w = layer.base_layer.weight
    w.add_((offset.t() if layer.fan_in_fan_out else offset).to(w.dtype))
    layer.origin_A = layer.origin_B = None


def extras_kinds(layers: dict[str, BoundedLoRALinear]) -> list[str]:
    """Which kinds of extras any of the layers carries."""
    kinds = []
    if any(layer.update_mask is not None for layer in layers.values()):
        kinds.append(MASK)
    if any(layer.origin_A is not None for layer in layers.values()):
        kinds.append(ORIGIN)
    return kinds


def extras_state(layers: dict[str, BoundedLoRALinear]) -> dict[str, torch.Tensor]:
    """Every layer's extras as CPU tensors keyed `<module>.<kind>`."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if layer.update_mask is not None:
            state[f"{name}.update_mask"] = layer.update_mask.detach().to("cpu").contiguous()
        if layer.origin_A is not None:
            state[f"{name}.origin_A"] = layer.origin_A.detach().to("cpu").contiguous()
            state[f"{name}.origin_B"] = layer.origin_B.detach().to("cpu").contiguous()
    return state


def extras_bytes(layers: dict[str, BoundedLoRALinear]) -> bytes:
    """The extras file's content (safetensors)."""
    return save(extras_state(layers), metadata={"format": "pt"})


def apply_extras(layers: dict[str, BoundedLoRALinear], state: dict[str, torch.Tensor]) -> None:
    """Put saved extras back on freshly attached layers (origins before their factors are loaded)."""
    for name, layer in layers.items():
        if f"{name}.update_mask" in state:
            set_update_mask(layer, state[f"{name}.update_mask"])
        if f"{name}.origin_A" in state:
            set_origin(layer, state[f"{name}.origin_A"], state[f"{name}.origin_B"])


def read_extras(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The extras file of an adapter directory (empty when it has none)."""
    path = Path(adapter_dir) / EXTRAS_NAME
    if not path.is_file():
        return {}
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
