"""Attach bounded adapters to a model in place, and inspect, merge, disable or remove them."""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator

import torch
from torch import nn

from harness.adapters.bounds import make_bound
from harness.adapters.extras import clear_origin
from harness.adapters.layer import BoundedLoRALinear, layer_shape
from harness.adapters.targets import target_module_names
from harness.config import AdapterSpec

# Names of the parameters that `attach` froze, kept on the model so `detach` can unfreeze them.
_FROZEN_ATTR = "_bounded_lora_frozen"


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _refuse_twice(model: nn.Module) -> None:
    if adapted_layers(model):
        raise ValueError("the model already has bounded adapters; detach() or merge() them first")


def _layer_seed(seed: int, name: str) -> int:
    # Per-layer seed from (seed, name): a layer's init does not depend on which other layers are adapted.
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def attach_to(model: nn.Module, names: list[str], spec: AdapterSpec, seed: int = 0) -> list[str]:
    """Wrap exactly the named modules with `BoundedLoRALinear` and freeze every other parameter."""
    _refuse_twice(model)
    frozen = [n for n, p in model.named_parameters() if p.requires_grad]
    for name in names:
        base = model.get_submodule(name)
        layer = BoundedLoRALinear(base, bound=spec.bound, rank=spec.rank, alpha=spec.alpha, omega=spec.omega,
                                  clip_value=spec.clip_value, dropout=spec.dropout, keep_dense=spec.keep_dense)
        gen = torch.Generator().manual_seed(_layer_seed(seed, name))
        layer.reset_parameters(generator=gen)
        _set_submodule(model, name, layer)
    trainable = {id(p) for p in adapter_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    model.__dict__[_FROZEN_ATTR] = frozen
    return list(names)


def attach(model: nn.Module, spec: AdapterSpec, seed: int = 0) -> list[str]:
    """Replace each target module (spec.targets or the architecture's MLP map) by a bounded adapter."""
    _refuse_twice(model)
    return attach_to(model, target_module_names(model, spec.targets), spec, seed)


def adapted_layers(model: nn.Module) -> dict[str, BoundedLoRALinear]:
    """Adapted modules by full name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BoundedLoRALinear)}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters (every layer's `lora_A` and `lora_B` weights)."""
    params: list[nn.Parameter] = []
    for layer in adapted_layers(model).values():
        params += [layer.lora_A.weight, layer.lora_B.weight]
    return params


def adapter_product_sq(model: nn.Module) -> torch.Tensor:
    """`sum over layers of ||B A||_F^2` (differentiable), computed as `sum((B^T B) * (A A^T))` in r x r."""
    total = None
    for layer in adapted_layers(model).values():
        a, b = layer.lora_A.weight.float(), layer.lora_B.weight.float()
        term = ((b.t() @ b) * (a @ a.t())).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("the model has no bounded adapters")
    return total


@torch.no_grad()
def adapter_norms(model: nn.Module) -> dict[str, float]:
    """`adapter_norm` = sqrt(sum ||delta W||_F^2) and `adapter_param_norm` = sqrt(sum ||A||^2 + ||B||^2)."""
    delta_sq = param_sq = 0.0
    for layer in adapted_layers(model).values():
        delta_sq += float(layer.delta_weight().float().pow(2).sum())
        for p in (layer.lora_A.weight, layer.lora_B.weight):
            param_sq += float(p.float().pow(2).sum())
    return {"adapter_norm": math.sqrt(delta_sq), "adapter_param_norm": math.sqrt(param_sq)}


def adapter_norm_bound(model: nn.Module, spec: AdapterSpec) -> float:
    """The largest `adapter_norm` the spec's bound allows on this (unadapted) model:
    sqrt(sum over target layers of max|delta W_ij|^2 * d_out * d_in); inf for plain LoRA."""
    modules = dict(model.named_modules())
    total = 0.0
    for name in target_module_names(model, spec.targets):
        d_in, d_out = layer_shape(modules[name])
        bound = make_bound(spec.bound, spec.alpha, spec.rank, d_in, spec.omega, spec.clip_value)
        total += bound.max_abs() ** 2 * d_out * d_in
    return math.sqrt(total)


def merge(model: nn.Module) -> list[str]:
    """Replace every adapted layer by a plain layer holding `W0 + delta W` (exact), in place."""
    layers = adapted_layers(model)
    for name, layer in layers.items():
        _set_submodule(model, name, layer.merged_linear())
    model.__dict__.pop(_FROZEN_ATTR, None)
    return list(layers)


def detach(model: nn.Module) -> list[str]:
    """Put the original base layers back and unfreeze what `attach` froze."""
    layers = adapted_layers(model)
    for name, layer in layers.items():
        clear_origin(layer)  # FILA moved the base weight; give it back
        _set_submodule(model, name, layer.base_layer)
    frozen = set(model.__dict__.pop(_FROZEN_ATTR, []))
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(True)
    return list(layers)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model computes its base (reference) outputs; no copy is made."""
    layers = list(adapted_layers(model).values())
    before = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, before):
            layer.disabled = was
