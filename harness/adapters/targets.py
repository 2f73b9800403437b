"""Which modules get a bounded adapter: the MLP projections of each architecture (attention never)."""

from __future__ import annotations

import re

from torch import nn

from harness.adapters.layer import SUPPORTED_LAYERS
from harness.core.errors import ModelError, SpecError

_LLAMA_MLP = r"(^|\.)mlp\.(gate_proj|up_proj|down_proj)$"
_MLP_FC = r"(^|\.)mlp\.(fc1|fc2)$"
_VIT_MLP = r"(^|\.)(layer\.\d+\.(intermediate|output)\.dense|mlp\.(fc1|fc2))$"

#: model_type -> regex searched on full module names (as given by `model.named_modules()`).
MLP_TARGETS: dict[str, str] = {
    **{t: _LLAMA_MLP for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                               "olmo", "olmo2", "granite", "smollm3")},
    "phi3": r"(^|\.)mlp\.(gate_up_proj|down_proj)$",
    # GPT-2 also has attn.c_proj: the `mlp.` prefix keeps it out.
    "gpt2": r"(^|\.)mlp\.(c_fc|c_proj)$",
    "gpt_neo": r"(^|\.)mlp\.(c_fc|c_proj)$",
    "gpt_neox": r"(^|\.)mlp\.(dense_h_to_4h|dense_4h_to_h)$",
    "bloom": r"(^|\.)mlp\.(dense_h_to_4h|dense_4h_to_h)$",
    "opt": r"(^|\.)layers\.\d+\.(fc1|fc2)$",
    "phi": _MLP_FC,
    # ViT/DeiT: transformers 5.x names the MLP layers.N.mlp.fc1/fc2; older releases used
    # layer.N.intermediate.dense and layer.N.output.dense (attention.output.dense must not match).
    "vit": _VIT_MLP,
    "deit": _VIT_MLP,
    "clip_vision_model": _MLP_FC,
    "clip": r"(^|\.)vision_model\..*\.mlp\.(fc1|fc2)$",
}


def _matches_explicit(name: str, targets: list[str]) -> bool:
    # PEFT-like: a full name, a dotted suffix ("mlp.fc1"), or a regex matching the whole name.
    for t in targets:
        if name == t or name.endswith("." + t):
            return True
        try:
            if re.fullmatch(t, name):
                return True
        except re.error:
            continue
    return False


def target_module_names(model: nn.Module, explicit: list[str] | None = None) -> list[str]:
    """Full names of the linear modules to adapt: `explicit` (names/suffixes/regexes) or the MLP map."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)]
    if explicit:
        names = [n for n, _ in linears if _matches_explicit(n, explicit)]
        if not names:
            raise SpecError(f"adapter.targets {explicit} match no nn.Linear/Conv1D module of the model")
        return names
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    pattern = MLP_TARGETS.get(model_type or "")
    if pattern is None:
        raise SpecError(
            f"no MLP target map for model_type {model_type!r} (known: {', '.join(sorted(MLP_TARGETS))}); "
            "set adapter.targets to the MLP module names (full names, dotted suffixes or regexes)"
        )
    regex = re.compile(pattern)
    names = [n for n, _ in linears if regex.search(n)]
    if not names:
        raise SpecError(f"model_type {model_type!r}: no module matches {pattern!r}; set adapter.targets")
    return names


def adapted_mlp_names(model: nn.Module, name: str, explicit: list[str] | None = None) -> list[str]:
    """`target_module_names`, with a ModelError naming the model when it has no MLP layer the harness can adapt."""

    try:
        return target_module_names(model, explicit)
    except SpecError as err:
        raise ModelError(f"model {name!r} has no MLP layers the harness can adapt: {err}") from None
