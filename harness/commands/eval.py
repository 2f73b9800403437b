"""`harness eval`: score models the job did not train against its reference models, as `harness run` scores.

The models (`--model NAME=SOURCE`, `--adapter DIR`, or the spec's `models:` list; harness/scoring/load.py
says what a source may be) are scored with the job's benchmark and backend (`eval.backend`, `eval.workers`
on Ray) and compared with the job's reference models (trained and cached, or loaded, exactly as `harness run`
prepares them), and the results contract of `harness run` is written: the scored models are rows beside
`target` and `retain`. A finished run's methods keep their seeds (each compared with the references of its
reference seed); any other model is scored once and reported under each of the job's seeds.

An adapter that names no base model, or a builtin config (what `harness run` writes: its real base is the
job's target model), is scored over the job's target model.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch

from harness.adapters.checkpoint import check_lora_fits, read_bound_config, read_json, read_lora_weights
from harness.adapters.format import CONFIG_NAME, WEIGHTS_NAME
from harness.config import REFERENCE_METHODS, ModelSource, parse_model_arg
from harness.core.errors import DataError, ModelError, SpecError
from harness.models.modality import get_modality
from harness.models.text import damaged_file, is_builtin, load_model_config, torch_dtype
from harness.pipeline.context import JobContext, JobResult, ModelKey, ScoredModel
from harness.pipeline.job import reference_sources, staged_job
from harness.pipeline.preflight import job_model_config
from harness.pipeline.write import score_and_write
from harness.scoring.load import load_scoring_model, load_with_adapter, resolve_sources
from harness.spec import JobSpec, read_spec_data, validate_spec
from harness.train.memory import meta_model
from harness.train.reference import reference_seed_for


def adapter_source(path: str | Path) -> ModelSource:
    """`--adapter DIR`: one adapter model named after its directory (a `seedN` directory by its method's)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--adapter {path}: the directory does not exist")
    stem = p.parent.name if re.fullmatch(r"seed\d+", p.name) and p.parent.name else p.name
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", stem) or "adapter"
    return ModelSource(name="adapter" if name in REFERENCE_METHODS else name, path=str(p))


def _named_base(src: ModelSource) -> str | None:
    """The base model an adapter source's own files name (None for plain models)."""
    if src.kind == "harness":
        return read_bound_config(src.path).get("base_model")
    if src.kind == "peft":
        return read_json(Path(src.path) / CONFIG_NAME).get("base_model_name_or_path")
    return None


def _needs_job_base(src: ModelSource) -> bool:
    if src.kind not in ("harness", "peft") or src.base:
        return False
    named = _named_base(src)  # reads the adapter's config: a damaged one fails here, before any work
    return not named or is_builtin(named)


def precheck(src: ModelSource, spec: JobSpec) -> None:
    """Cheap checks of a resolved source before any work: no damaged file (JSON, safetensors headers), and an
    adapter's LoRA weights fit its base model's layer shapes (built on the meta device, no weights read)."""

    path = Path(src.path)
    if path.is_dir():
        problem = damaged_file(path)
        if problem:
            raise ModelError(f"model {src.name!r}: {problem}")
    if src.kind not in ("harness", "peft") or not (path / WEIGHTS_NAME).is_file():
        return
    if src.kind == "peft" and str(read_json(path / CONFIG_NAME).get("peft_type", "")).upper() != "LORA":
        return
    state = read_lora_weights(path / WEIGHTS_NAME)
    base = src.base or _named_base(src)
    config = load_model_config(base, src.trust_remote_code) if base and not is_builtin(base) else job_model_config(spec)
    modules = list(read_bound_config(path)["modules"]) if src.kind == "harness" else None
    check_lora_fits(meta_model(config), state, f"model {src.name!r}: adapter {path}", modules)


def _check_out_dir(out: Path, given: list[ModelSource]) -> None:
    """Refuse an out dir that is, or holds, a model being scored (its results would overwrite it)."""
    out = out.expanduser().resolve()
    for src in given:
        path = Path(src.path).expanduser()
        if path.exists() and (path.resolve() == out or out in path.resolve().parents):
            raise SpecError(f"out: {out} holds the scored model {src.name!r} ({src.path}); "
                            "write the evaluation elsewhere (--out DIR)")


def _loader(src: ModelSource, modality: str) -> Any:
    """Loads the model and processor of a resolved source in this process (eval mode)."""
    if modality == "text":
        return lambda: load_scoring_model(src)

    def load() -> tuple[torch.nn.Module, Any]:
        if src.kind == "peft":
            raise DataError(f"model {src.name!r}: PEFT adapters are scored on text benchmarks only")
        where = src.base if src.kind == "harness" and src.base else src.path
        model, processor = load_with_adapter(where, src.path if src.kind == "harness" else None, modality=modality,
                                             dtype=torch_dtype(src.dtype), trust_remote_code=src.trust_remote_code)
        return model.eval(), processor

    return load


def _processor(src: ModelSource, modality: str) -> Any:
    """The processor scoring uses for a source in the driver (tokenizer of the model, or of an adapter's base)."""
    where = src.base if src.kind in ("harness", "peft") and src.base else src.path
    if modality == "text":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=src.trust_remote_code,
                                                  revision=src.revision)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    return get_modality(modality).load(where, torch.float32, src.trust_remote_code)[1]


def _scored_model(ctx: JobContext, src: ModelSource, seed: int) -> ScoredModel:
    """How `score_all` scores one resolved source: in process through its loader, or on Ray workers from
    (model, adapter) directories (a PEFT adapter is merged and saved under `models/` for them)."""
    modality = ctx.bench.modality
    ref = ctx.refs[reference_seed_for(ctx.spec, seed)]
    model, adapter = (src.base, src.path) if src.kind == "harness" else (src.path, None)
    if ctx.spec.eval.workers > 1:
        if src.kind == "peft":
            merged, tokenizer = load_scoring_model(src)
            model = str(get_modality(modality).save(merged, tokenizer, ctx.out / "models" / src.name))
        processor = None if model == ref.target_source else _processor(src, modality)
        return ScoredModel(str(model), adapter, processor=processor)
    return ScoredModel(str(model), adapter, load=_loader(src, modality))


def _describe(src: ModelSource) -> str:
    over = f" over {src.base or _named_base(src)}" if src.kind in ("harness", "peft") else ""
    what = {"hf": "model", "peft": "PEFT adapter", "harness": "harness adapter"}[src.kind or "hf"]
    origin = f" (method {src.method}, seed {src.seed})" if src.method is not None else ""
    return f"{src.name}: {what} {src.path}{over}{origin}"


def eval_job(spec: JobSpec, models: list[ModelSource] | None = None, progress: bool = True,
             overwrite: bool = False, resume: bool = False) -> JobResult:
    """Score `models` (and the spec's `models:`) without training against the job's reference models and write
    the results contract under the spec's out dir; `resume` reuses the scores an interrupted attempt kept."""
    given = [*spec.models, *(models or [])]
    if not given:
        raise SpecError("no model to score: pass --model NAME=SOURCE or --adapter DIR, or list `models:` in the spec")
    _check_out_dir(spec.out_dir(), given)
    resolved = resolve_sources(given, seed_in_name=False)
    seeds_of = {id(s): [s.seed] if s.seed is not None else list(spec.seeds) for s in resolved}
    job_base = [_needs_job_base(s) for s in resolved]
    for src in resolved:
        precheck(src, spec)
    spec = spec.model_copy(update={"models": given})
    extra = [reference_seed_for(spec, seed) for s in resolved for seed in seeds_of[id(s)]]
    return staged_job(spec, lambda ctx: _score_given(ctx, resolved, seeds_of, job_base), progress, overwrite,
                      extra_ref_seeds=extra, resume=resume)


def _score_given(ctx: JobContext, resolved: list[ModelSource], seeds_of: dict[int, list[int]],
                 job_base: list[bool]) -> JobResult:
    """Score the resolved sources of a started job beside its references and write the results."""
    spec = ctx.spec
    sources: dict[ModelKey, ScoredModel] = reference_sources(ctx)
    copies: dict[ModelKey, ModelKey] = {}
    names: list[str] = []
    notes = []
    for src, use_job_base in zip(resolved, job_base, strict=True):
        seeds = seeds_of[id(src)]
        if use_job_base:
            src = src.model_copy(update={"base": ctx.refs[reference_seed_for(spec, seeds[0])].target_source})
        sources[(src.name, seeds[0])] = _scored_model(ctx, src, seeds[0])
        copies.update({(src.name, seed): (src.name, seeds[0]) for seed in seeds[1:]})
        if src.name not in names:
            names.append(src.name)
        notes.append(f"scored without training (harness eval): {_describe(src)}")
    all_seeds = sorted({seed for s in resolved for seed in seeds_of[id(s)]})
    return score_and_write(ctx, sources, names, all_seeds, notes, copies=copies)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness eval`'s arguments."""
    parser.add_argument("spec", help="job spec (YAML): benchmark, model, reference models and eval settings")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=SOURCE[,key=value...]",
                        help="a model to score (repeatable): a HF model dir or hub id, a PEFT or harness adapter dir "
                        "(base=DIR), or a finished run dir (method=NAME); see harness/scoring/load.py")
    parser.add_argument("--adapter", metavar="DIR", help="an adapter directory to score over the job's target model")
    parser.add_argument("--backend", choices=["hf", "vllm"], help="scoring backend (overrides eval.backend)")
    parser.add_argument("--workers", type=int, help="Ray scoring workers per model (overrides eval.workers)")
    parser.add_argument("--out", help="output directory (default: the spec's `out` with -eval appended)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a spec field by its dotted path (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished run's results in the out dir (kept until the new run finishes)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted or failed run in the out "
                        "dir (same spec): models already scored are not scored again")


def main(args: argparse.Namespace) -> int:
    """Score the models given (`--model`, `--adapter`) and the spec's `models:`; print the summary."""
    overrides = list(args.set)
    if args.backend:
        overrides.append(f"eval.backend={args.backend}")
    if args.workers:
        overrides.append(f"eval.workers={args.workers}")
    models = [parse_model_arg(text) for text in args.model]
    if args.adapter:
        models.append(adapter_source(args.adapter))
    data = read_spec_data(args.spec, overrides)
    data["models"] = [*(data.get("models") or []), *(m.model_dump(exclude_defaults=True) for m in models)]
    if not data["models"]:
        raise SpecError(f"{args.spec}: no model to score: pass --model NAME=SOURCE or --adapter DIR, or list "
                        "`models:` in the spec")
    spec = validate_spec(data, args.spec)
    spec = spec.model_copy(update={"out": args.out or f"{spec.out}-eval"})
    result = eval_job(spec, overwrite=args.overwrite, resume=args.resume)
    print(result.summary)
    print(f"results: {result.out_dir}")
    return 0
