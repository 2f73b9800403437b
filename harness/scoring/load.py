"""Models to score that the job did not train: parsing `--model NAME=SOURCE[,key=value...]` and loading them.

A source is one of (detected from its files, or named with `kind=`):

- `hf`: a plain Hugging Face causal LM: a local directory (e.g. one written by `harness export`) or a
  hub id in the local cache;
- `peft`: a PEFT adapter directory saved by `peft` itself, over `base=` or the adapter's
  `base_model_name_or_path`; loaded with `PeftModel.from_pretrained` and merged;
- `harness`: a harness adapter directory (bounded or not, `bound_config.json`), over `base=` or the
  base the adapter names; attached with `load_adapter`, exactly as `harness run` scores its methods;
- `run`: a finished run directory: every method it scored (or only `method=`), each over the base
  recorded in its `models.json`.

Options: `base=DIR|HUB_ID`, `kind=hf|peft|harness|run`, `method=NAME` and `seed=N` (runs),
`dtype=float32|bfloat16|float16`, `revision=REV`, `trust_remote_code=true`. Paths may not contain commas.
In a job spec's `models:` list each entry has the same fields (`source:` or `path:` for the source).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.adapters import load_adapter, read_bound_config
from harness.adapters.checkpoint import check_lora_fits, read_lora_weights
from harness.adapters.format import BOUND_CONFIG_NAME, BOUNDED_PEFT_TYPE, WEIGHTS_NAME
from harness.config import ModelSource, SourceKind
from harness.core.errors import DataError, ModelError, SpecError
from harness.models.modality import get_modality
from harness.models.text import is_builtin, load_pretrained, torch_dtype
from harness.results.run_record import RECORD_NAME, load_finished_run


def _adapter_config(path: Path) -> dict[str, Any] | None:
    file = path / "adapter_config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{file} is not valid JSON: {err}") from None
    return data if isinstance(data, dict) else None


def detect_kind(path: str) -> SourceKind:
    """The kind of a source path: run dir, harness adapter, PEFT adapter, or plain HF model (dir or hub id)."""

    local = Path(path).expanduser()
    if not local.exists():
        if path.startswith(("/", ".", "~")) or path.count("/") > 1:
            raise DataError(f"model source {path!r} does not exist")
        return "hf"  # a hub id, looked up in the local cache
    if not local.is_dir():
        raise DataError(f"model source {path} is not a directory")
    if (local / RECORD_NAME).is_file() or ((local / "spec.yaml").is_file() and (local / "env.json").is_file()):
        return "run"
    if (local / BOUND_CONFIG_NAME).is_file():
        return "harness"
    config = _adapter_config(local)
    if config is not None:
        return "harness" if config.get("peft_type") == BOUNDED_PEFT_TYPE else "peft"
    if (local / "config.json").is_file():
        return "hf"
    raise DataError(f"model source {path} is neither a model (config.json), an adapter (adapter_config.json) "
                    "nor a run directory (models.json)")


def resolve_sources(sources: list[ModelSource], seed_in_name: bool = True) -> list[ModelSource]:
    """Each source with its kind set; a run source becomes one `harness` source per method (`NAME.METHOD`)
    and seed (`seed` set; the name ends in `.seedN` when the method ran several seeds, unless
    `seed_in_name` is False: then the seed tells them apart).

    Raises SpecError when two resolved sources share a name (and seed).
    """

    out: list[ModelSource] = []
    for src in sources:
        kind = src.kind or detect_kind(src.path)
        if kind != "run":
            out.append(src.model_copy(update={"kind": kind}))
            continue
        run = load_finished_run(src.path)
        methods = [src.method] if src.method else sorted(run.models.methods)
        if not methods:
            raise DataError(f"run {src.path} recorded no scored method")
        for method in methods:
            seeds = [src.seed] if src.seed is not None else sorted(run.models.methods.get(method, {})) or [None]
            for seed in seeds:
                entry = run.method_model(method, seed)
                name = src.name if src.method else f"{src.name}.{method}"
                name += f".seed{entry.seed}" if len(seeds) > 1 and seed_in_name else ""
                out.append(src.model_copy(update={"name": name, "kind": "harness", "path": entry.adapter,
                                                  "base": src.base or entry.base, "method": method,
                                                  "seed": entry.seed}))
    keys = [(s.name, None if seed_in_name else s.seed) for s in out]
    dupes = sorted({n for n, seed in keys if keys.count((n, seed)) > 1})
    if dupes:
        raise SpecError(f"scored model names must be unique; repeated: {', '.join(dupes)}")
    return out


def _base_of(src: ModelSource, named: str | None, what: str) -> str:
    """The base model of an adapter source: `base=`, else what the adapter's own files name."""

    base = src.base or named
    if not base:
        raise DataError(f"model {src.name!r}: {what} {src.path} names no base model; pass base=DIR or a hub id")
    if is_builtin(base):
        raise DataError(f"model {src.name!r}: {what} {src.path} names base {base!r}, a randomly initialised "
                        "builtin config, not the model it was trained on; pass base=DIR (the run's target "
                        "model), or score the run directory, whose models.json records it")
    return base


def _load_hf(name: str, src: ModelSource) -> tuple[torch.nn.Module, Any]:
    try:
        return load_pretrained(name, torch_dtype(src.dtype), src.trust_remote_code, src.revision)
    except ModelError as err:
        raise ModelError(f"model {src.name!r}: {err}") from None


def _load_peft(src: ModelSource) -> tuple[torch.nn.Module, Any]:
    from peft import PeftModel
    from safetensors import SafetensorError

    path = Path(src.path)
    config = _adapter_config(path) or {}
    model, tokenizer = _load_hf(_base_of(src, config.get("base_model_name_or_path"), "PEFT adapter"), src)
    lora = str(config.get("peft_type", "")).upper() == "LORA"
    if lora or (path / WEIGHTS_NAME).is_file():  # a damaged file: a DataError naming it, not PEFT's raw error
        weights = read_lora_weights(path / WEIGHTS_NAME)
        if lora:
            check_lora_fits(model, weights, f"PEFT adapter {path}")
    try:
        peft_model = PeftModel.from_pretrained(model, str(path))
        merged = peft_model.merge_and_unload()
    except (KeyError, ValueError, RuntimeError, OSError, SafetensorError) as err:
        raise DataError(f"model {src.name!r}: PEFT cannot load adapter {path} over {src.base or 'its base'}: "
                        f"{type(err).__name__}: {err}") from None
    return merged, tokenizer


def _load_harness(src: ModelSource) -> tuple[torch.nn.Module, Any]:
    cfg = read_bound_config(src.path)
    model, tokenizer = _load_hf(_base_of(src, cfg.get("base_model"), "harness adapter"), src)
    load_adapter(model, src.path)
    return model, tokenizer


def load_scoring_model(source: ModelSource) -> tuple[torch.nn.Module, Any]:
    """The model (eval mode, on CPU) and tokenizer that scoring uses for one resolved source.

    Harness adapters stay attached (the fused bounded layers `harness run` scores with); PEFT adapters
    are merged into their base. The tokenizer is the base model's (the model's own for `hf`).
    """
    kind = source.kind or detect_kind(source.path)
    if kind == "run":
        resolved = resolve_sources([source])
        if len(resolved) != 1:
            raise SpecError(f"model {source.name!r}: run {source.path} has methods "
                            f"{', '.join(s.method or '' for s in resolved)}; pick one with method=NAME "
                            "or resolve_sources() first")
        source, kind = resolved[0], "harness"
    if kind == "hf":
        model, tokenizer = _load_hf(source.path, source)
    elif kind == "peft":
        model, tokenizer = _load_peft(source)
    else:
        model, tokenizer = _load_harness(source)
    return model.eval(), tokenizer


def load_with_adapter(source: str, adapter_dir: str | Path | None = None, *, modality: str = "text",
                      dtype: torch.dtype = torch.float32,
                      trust_remote_code: bool = False) -> tuple[torch.nn.Module, Any]:
    """The one way a base model plus a harness adapter is loaded, for scoring or export: the modality's model and
    processor from `source`, with the adapter (when given) attached in place, not merged."""
    model, processor = get_modality(modality).load(source, dtype, trust_remote_code)
    if adapter_dir is not None:
        load_adapter(model, adapter_dir)
    return model, processor
