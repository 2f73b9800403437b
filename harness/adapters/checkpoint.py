"""Adapter checkpoints in PEFT's LoRA layout plus `bound_config.json` with the bound settings.

Files: `adapter_model.safetensors` (keys `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`),
`adapter_config.json`, `bound_config.json` (the harness's own record), for a bounded adapter a README.md
saying how to load it, and, when a preparation pass set any, `adapter_extras.safetensors` (update masks,
FILA origins; harness/adapters/extras.py), listed under `extras` in `bound_config.json`.

`adapter_config.json` of bound `none` is a plain PEFT `LoraConfig`: `PeftModel.from_pretrained` loads
it and computes what the harness computes. A bounded adapter's (format_version 2) is a
`BoundedLoraConfig` with `peft_type: HARNESS_BOUNDED_LORA`, which plain PEFT refuses (it raises
`KeyError: 'HARNESS_BOUNDED_LORA'`) instead of silently computing `W0 + s B A`, and whose
`init_lora_weights` vLLM's LoRA loader refuses (it ignores peft_type); `load_adapter`,
`load_as_peft_model` and, after `harness.adapters.peft_bounded.register_with_peft()`, PEFT itself load it
with the bound. Format-version-1 directories (bounded ones still saying `peft_type: LORA`) load in the
harness as before; `upgrade_adapter` rewrites their adapter_config.json to version 2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from harness.adapters.attachment import adapted_layers, attach_to
from harness.adapters.bounds import BOUNDS
from harness.adapters.extras import EXTRAS_NAME, apply_extras, extras_bytes, extras_kinds, read_extras
from harness.adapters.format import (
    BOUND_CONFIG_NAME,
    BOUNDED_INIT_MARKER,
    BOUNDED_PEFT_TYPE,
    CONFIG_NAME,
    FORMAT_VERSION,
    PEFT_PREFIX,
    README_NAME,
    WEIGHTS_NAME,
)
from harness.adapters.layer import layer_shape
from harness.config import AdapterSpec
from harness.core.errors import DataError
from harness.core.io import atomic_write_bytes, atomic_write_json

_README = """# Bounded LoRA adapter ({bound})

Saved by the `harness` package. This is **not** plain LoRA: on each module named in `bound_config.json`,
`W = W0 + delta W` with the bound applied to the full product `M = B A`:

- {formula}
- `s = alpha / r` with alpha = {alpha}, r = {rank}; omega = {omega}; clip_value = {clip_value}

So its `adapter_config.json` has `peft_type: {peft_type}`, which plain `PeftModel.from_pretrained`
refuses (`KeyError: '{peft_type}'`), and an `init_lora_weights` marker that vLLM's LoRA loader refuses.
Load it with the bound:

```python
from harness.adapters import load_adapter, load_as_peft_model
load_adapter(base_model, "this/dir")                  # in place, harness layers
peft_model = load_as_peft_model(base_model, "this/dir")  # a peft.PeftModel computing the bound

from harness.adapters.peft_bounded import register_with_peft
register_with_peft()                                  # then plain PEFT loads it too:
peft_model = PeftModel.from_pretrained(base_model, "this/dir")
```

or turn a finished run's method into a plain merged checkpoint: `harness export RUN_DIR --method NAME --out DIR`.
"""


def _weight_keys(name: str) -> tuple[str, str]:
    return f"{PEFT_PREFIX}{name}.lora_A.weight", f"{PEFT_PREFIX}{name}.lora_B.weight"


def _peft_config(spec: AdapterSpec, names: list[str], fan_in_fan_out: bool,
                 base_model: str) -> dict[str, Any]:
    """adapter_config.json: a plain `LoraConfig` for bound `none`, else a `BoundedLoraConfig` (own peft_type)."""
    from peft import LoraConfig

    kwargs: dict[str, Any] = dict(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=sorted(names),
        fan_in_fan_out=fan_in_fan_out, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model,
    )
    if spec.bound == "none":
        config: LoraConfig = LoraConfig(**kwargs)
    else:
        from harness.adapters.peft_bounded import BoundedLoraConfig

        config = BoundedLoraConfig(**kwargs, bound=spec.bound, omega=spec.omega, clip_value=spec.clip_value)
    out = config.to_dict()
    for key, value in out.items():
        if isinstance(value, set):
            out[key] = sorted(value)
    out["peft_type"] = str(getattr(out["peft_type"], "value", out["peft_type"]))
    return out


def _readme(spec: AdapterSpec) -> str:
    formula = (BOUNDS.get(spec.bound).__doc__ or spec.bound).strip().splitlines()[0]
    return _README.format(bound=spec.bound, formula=formula, alpha=spec.alpha, rank=spec.rank, omega=spec.omega,
                          clip_value=spec.clip_value, peft_type=BOUNDED_PEFT_TYPE)


def save_adapter(model: nn.Module, out_dir: str | Path, spec: AdapterSpec, base_model: str) -> Path:
    """Write the attached adapters (PEFT layout) plus `bound_config.json`; returns `out_dir`.

    A bounded adapter's adapter_config.json gets `peft_type: HARNESS_BOUNDED_LORA` (see the module docstring).
    """
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
    extras = extras_kinds(layers)
    if extras:
        atomic_write_bytes(out / EXTRAS_NAME, extras_bytes(layers))
    peft_config = _peft_config(spec, names, fan_in_fan_out, base_model)
    if extras:  # masks and origins change what the factors mean: no plain tool may read them as plain LoRA
        peft_config.update(peft_type=BOUNDED_PEFT_TYPE, init_lora_weights=BOUNDED_INIT_MARKER, extras=extras)
    atomic_write_json(out / CONFIG_NAME, peft_config, sort_keys=True)
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
        "extras": extras,
    }, sort_keys=True)
    if spec.bound != "none":
        atomic_write_bytes(out / README_NAME, _readme(spec).encode())
    return out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path` (DataError naming the file when missing, unreadable or not an object)."""
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path} is not valid JSON (truncated or edited?): {err}") from None
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err.strerror or err}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is malformed: expected a JSON object")
    return data


def read_lora_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter's safetensors file (DataError naming it when missing, truncated or corrupt)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None


def lora_modules(state: dict[str, torch.Tensor]) -> list[str]:
    """Module names that carry LoRA weights (`base_model.model.<module>.lora_A.weight`) in a PEFT state dict."""
    suffix = ".lora_A.weight"
    return sorted(k[len(PEFT_PREFIX):-len(suffix)] for k in state if k.startswith(PEFT_PREFIX) and k.endswith(suffix))


def check_lora_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path,
                    modules: list[str] | None = None) -> list[str]:
    """Check that LoRA weights fit `model`: every module exists, is linear, and has matching shapes.

    `modules` defaults to those found in `state`; returns them. Raises DataError naming the adapter
    (`source`), the module and the shapes, which is what an adapter for a different base model gives.
    """
    names = lora_modules(state) if modules is None else list(modules)
    if not names:
        raise DataError(f"{source}: no LoRA weights (keys {PEFT_PREFIX}<module>.lora_A.weight) found")
    found = dict(model.named_modules())
    absent = [n for n in names if n not in found]
    if absent:
        raise DataError(f"{source}: the model has no module(s) {absent[:5]} that the adapter adapts: "
                        "an adapter for a different base model?")
    for name in names:
        try:
            d_in, d_out = layer_shape(found[name])
        except TypeError as err:
            raise DataError(f"{source}: module {name}: {err}") from None
        key_a, key_b = _weight_keys(name)
        if key_a not in state or key_b not in state:
            raise DataError(f"{source}: weights of module {name} are incomplete: missing "
                            f"{[k for k in (key_a, key_b) if k not in state]}")
        a, b = state[key_a].shape, state[key_b].shape
        if len(a) != 2 or len(b) != 2 or a[1] != d_in or b[0] != d_out or a[0] != b[1]:
            raise DataError(f"{source}: module {name} is {d_out}x{d_in} but the adapter has lora_A {tuple(a)} and "
                            f"lora_B {tuple(b)}: an adapter for a different base model?")
    return names


def _bound_config_from_peft(adapter_dir: Path) -> dict[str, Any] | None:
    """The bound settings of a bounded adapter saved by PEFT itself (no bound_config.json), else None."""
    path = adapter_dir / CONFIG_NAME
    if not path.is_file():
        return None
    cfg = read_json(path)
    if cfg.get("peft_type") != BOUNDED_PEFT_TYPE:
        return None
    try:
        return {"format_version": FORMAT_VERSION, "bound": cfg["bound"], "omega": cfg["omega"],
                "clip_value": cfg["clip_value"], "rank": cfg["r"], "alpha": cfg["lora_alpha"],
                "dropout": cfg.get("lora_dropout", 0.0), "targets": None,
                "modules": lora_modules(read_lora_weights(adapter_dir / WEIGHTS_NAME)),
                "base_model": cfg.get("base_model_name_or_path")}
    except KeyError as err:
        raise DataError(f"{path} is malformed: {err!r} missing") from None


def read_bound_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The bound settings of a harness adapter directory (DataError when missing or malformed).

    From `bound_config.json`, or, for a bounded adapter saved by `PeftModel.save_pretrained`, from its
    adapter_config.json.
    """
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / BOUND_CONFIG_NAME
    if not path.is_file():
        derived = _bound_config_from_peft(adapter_dir)
        if derived is not None:
            return derived
        raise DataError(f"{path} is missing: not a harness adapter directory (expected {BOUND_CONFIG_NAME}, "
                        f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    data = read_json(path)
    try:
        for key in ("bound", "rank", "alpha", "omega", "clip_value", "modules"):
            data[key]
    except (KeyError, TypeError) as err:
        raise DataError(f"{path} is malformed: {err!r}") from None
    return data


def _adapter_spec(cfg: dict[str, Any], adapter_dir: Path) -> AdapterSpec:
    try:
        return AdapterSpec(bound=cfg["bound"], rank=cfg["rank"], alpha=cfg["alpha"], omega=cfg["omega"],
                           clip_value=cfg["clip_value"], dropout=cfg.get("dropout", 0.0),
                           targets=cfg.get("targets"))
    except ValueError as err:
        raise DataError(f"{adapter_dir / BOUND_CONFIG_NAME}: invalid adapter settings: {err}") from None


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> AdapterSpec:
    """Attach the saved bounded adapters to `model` (same modules) and load their weights."""
    adapter_dir = Path(adapter_dir)
    cfg = read_bound_config(adapter_dir)
    spec = _adapter_spec(cfg, adapter_dir)
    weights_path = adapter_dir / WEIGHTS_NAME
    state = read_lora_weights(weights_path)
    names: list[str] = list(cfg["modules"])
    expected = {k for n in names for k in _weight_keys(n)}
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise DataError(f"{weights_path}: weight keys do not match {BOUND_CONFIG_NAME}: "
                        f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    if adapted_layers(model):
        raise ValueError("the model already has bounded adapters; detach() or merge() them first")
    check_lora_fits(model, state, adapter_dir, names)
    attach_to(model, names, spec)
    layers = adapted_layers(model)
    if cfg.get("extras"):
        extras = read_extras(adapter_dir)
        if not extras:
            raise DataError(f"{adapter_dir / BOUND_CONFIG_NAME} lists extras {cfg['extras']} but "
                            f"{adapter_dir / EXTRAS_NAME} is missing")
        apply_extras(layers, extras)  # origins first: they set the factors the weights then overwrite
    with torch.no_grad():
        for name in names:
            key_a, key_b = _weight_keys(name)
            layers[name].lora_A.weight.copy_(state[key_a])
            layers[name].lora_B.weight.copy_(state[key_b])
    return spec


def bounded_peft_config(adapter_dir: str | Path) -> Any:
    """The `BoundedLoraConfig` of a bounded adapter directory (format version 1 or 2)."""
    from harness.adapters.peft_bounded import BoundedLoraConfig

    adapter_dir = Path(adapter_dir)
    cfg = read_bound_config(adapter_dir)
    if cfg["bound"] == "none":
        raise DataError(f"{adapter_dir}: bound 'none' is plain LoRA; load it with peft.PeftModel.from_pretrained")
    saved = read_json(adapter_dir / CONFIG_NAME)
    fields = {f.name for f in dataclasses.fields(BoundedLoraConfig) if f.init}
    kwargs = {k: v for k, v in saved.items() if k in fields and k != "peft_type"}
    kwargs.update(bound=cfg["bound"], omega=cfg["omega"], clip_value=cfg["clip_value"], r=cfg["rank"],
                  lora_alpha=cfg["alpha"], target_modules=list(cfg["modules"]))
    try:
        return BoundedLoraConfig(**kwargs)
    except (TypeError, ValueError) as err:
        raise DataError(f"{adapter_dir / CONFIG_NAME}: invalid adapter config: {err}") from None


def load_as_peft_model(base_model: nn.Module, adapter_dir: str | Path, **kwargs: Any) -> Any:
    """A `peft.PeftModel` of `base_model` plus the saved adapter, computing what the harness computes.

    Bound `none` goes through plain `PeftModel.from_pretrained`; a bounded adapter through it with
    a `BoundedLoraConfig` (PEFT's custom-module mechanism), without registering anything globally.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    cfg = read_bound_config(adapter_dir)
    if cfg.get("extras"):
        raise DataError(f"{adapter_dir}: the adapter carries {', '.join(cfg['extras'])} (see {EXTRAS_NAME}), "
                        "which PEFT's LoRA layers cannot express; use harness.adapters.load_adapter, or "
                        "`harness export` for a merged checkpoint")
    check_lora_fits(base_model, read_lora_weights(adapter_dir / WEIGHTS_NAME), adapter_dir, list(cfg["modules"]))
    if cfg["bound"] == "none":
        return PeftModel.from_pretrained(base_model, str(adapter_dir), **kwargs)
    return PeftModel.from_pretrained(base_model, str(adapter_dir), config=bounded_peft_config(adapter_dir), **kwargs)


def upgrade_adapter(adapter_dir: str | Path) -> bool:
    """Rewrite a format-version-1 bounded adapter's files so plain PEFT refuses it; True when changed."""
    adapter_dir = Path(adapter_dir)
    cfg = read_bound_config(adapter_dir)
    if cfg.get("format_version", 1) >= FORMAT_VERSION:
        return False
    if cfg["bound"] != "none":
        spec = _adapter_spec(cfg, adapter_dir)
        saved = read_json(adapter_dir / CONFIG_NAME)
        atomic_write_json(adapter_dir / CONFIG_NAME, {**saved, "peft_type": BOUNDED_PEFT_TYPE, "bound": spec.bound,
                                                      "omega": spec.omega, "clip_value": spec.clip_value,
                                                      "init_lora_weights": BOUNDED_INIT_MARKER}, sort_keys=True)
        atomic_write_bytes(adapter_dir / README_NAME, _readme(spec).encode())
    atomic_write_json(adapter_dir / BOUND_CONFIG_NAME, {**cfg, "format_version": FORMAT_VERSION}, sort_keys=True)
    return True
