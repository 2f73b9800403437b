"""Adapter checkpoints in PEFT's LoRA format plus `bound_config.json` with the bound settings.

Files: `adapter_model.safetensors` (keys `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`),
`adapter_config.json` (a PEFT `LoraConfig`, target_modules = the full module names), `bound_config.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from harness.adapters.attach import adapted_layers, attach_to, detach
from harness.errors import DataError
from harness.results import atomic_write_bytes, atomic_write_json
from harness.spec import AdapterSpec

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
BOUND_CONFIG_NAME = "bound_config.json"
PEFT_PREFIX = "base_model.model."
FORMAT_VERSION = 1


def _weight_keys(name: str) -> tuple[str, str]:
    return f"{PEFT_PREFIX}{name}.lora_A.weight", f"{PEFT_PREFIX}{name}.lora_B.weight"


def _peft_config(spec: AdapterSpec, names: list[str], fan_in_fan_out: bool,
                 base_model: str) -> dict[str, Any]:
    from peft import LoraConfig

    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=sorted(names),
        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model,
    )
    out = config.to_dict()
    for key, value in out.items():
        if isinstance(value, set):
            out[key] = sorted(value)
    out["peft_type"] = str(config.peft_type.value)
    return out


def save_adapter(model: nn.Module, out_dir: str | Path, spec: AdapterSpec, base_model: str) -> Path:
    """Write the attached adapters as a PEFT LoRA checkpoint plus `bound_config.json`; returns `out_dir`."""
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("the model has no bounded adapters to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        key_a, key_b = _weight_keys(name)
        tensors[key_a] = layer.lora_A.weight.detach().to("cpu").contiguous().clone()
        tensors[key_b] = layer.lora_B.weight.detach().to("cpu").contiguous().clone()
    names = list(layers)
    fan_in_fan_out = any(layer.fan_in_fan_out for layer in layers.values())
    # Serialise in memory and write atomically: safetensors' save_file creates files with mode 0600.
    atomic_write_bytes(out / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    atomic_write_json(out / CONFIG_NAME, _peft_config(spec, names, fan_in_fan_out, base_model), sort_keys=True)
    atomic_write_json(out / BOUND_CONFIG_NAME, {
        "format_version": FORMAT_VERSION,
        "bound": spec.bound,
        "omega": spec.omega,
        "clip_value": spec.clip_value,
        "rank": spec.rank,
        "alpha": spec.alpha,
        "dropout": spec.dropout,
        "targets": spec.targets,
        "modules": names,
        "base_model": base_model,
    }, sort_keys=True)
    return out


def read_bound_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The parsed `bound_config.json` of an adapter directory (DataError when missing or malformed)."""
    path = Path(adapter_dir) / BOUND_CONFIG_NAME
    if not path.is_file():
        raise DataError(f"{path} is missing: not a harness adapter directory (expected {BOUND_CONFIG_NAME}, "
                        f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for key in ("bound", "rank", "alpha", "omega", "clip_value", "modules"):
            data[key]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path} is malformed (truncated or edited?): {err!r}") from None
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err.strerror or err}") from None
    return data


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> AdapterSpec:
    """Attach the saved bounded adapters to `model` (same modules) and load their weights."""
    adapter_dir = Path(adapter_dir)
    cfg = read_bound_config(adapter_dir)
    weights_path = adapter_dir / WEIGHTS_NAME
    if not weights_path.is_file():
        raise DataError(f"{weights_path} is missing")
    try:
        spec = AdapterSpec(bound=cfg["bound"], rank=cfg["rank"], alpha=cfg["alpha"], omega=cfg["omega"],
                           clip_value=cfg["clip_value"], dropout=cfg.get("dropout", 0.0),
                           targets=cfg.get("targets"))
    except ValueError as err:
        raise DataError(f"{adapter_dir / BOUND_CONFIG_NAME}: invalid adapter settings: {err}") from None
    names: list[str] = list(cfg["modules"])
    modules = dict(model.named_modules())
    absent = [n for n in names if n not in modules]
    if absent:
        raise DataError(f"{adapter_dir}: the model has no module(s) {absent[:5]} "
                        f"named in {BOUND_CONFIG_NAME}")
    try:
        state = load_file(str(weights_path))
    except SafetensorError as err:
        raise DataError(f"{weights_path} is not a readable safetensors file (truncated or damaged?): {err}") from None
    except OSError as err:
        raise DataError(f"{weights_path} cannot be read: {err.strerror or err}") from None
    expected = {k for n in names for k in _weight_keys(n)}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise DataError(f"{weights_path}: weight keys do not match {BOUND_CONFIG_NAME}: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    attach_to(model, names, spec)
    layers = adapted_layers(model)
    try:
        with torch.no_grad():
            for name in names:
                key_a, key_b = _weight_keys(name)
                for param, key in ((layers[name].lora_A.weight, key_a), (layers[name].lora_B.weight, key_b)):
                    if param.shape != state[key].shape:
                        raise DataError(f"{weights_path}: {key} has shape {tuple(state[key].shape)}, "
                                        f"the model needs {tuple(param.shape)}")
                    param.copy_(state[key])
    except DataError:
        detach(model)
        raise
    return spec


def load_as_peft_model(base_model: nn.Module, adapter_dir: str | Path, **kwargs: Any) -> Any:
    """A `peft.PeftModel` from a saved bound-`none` adapter (a bounded one needs `load_adapter` instead)."""
    cfg = read_bound_config(adapter_dir)
    if cfg["bound"] != "none":
        raise DataError(
            f"{adapter_dir}: bound {cfg['bound']!r} cannot be expressed by plain PEFT LoRA (PEFT applies "
            "W0 + s*B@A, without the bound); use harness.adapters.load_adapter, or merge() and save the "
            "dense weights"
        )
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(adapter_dir), **kwargs)
