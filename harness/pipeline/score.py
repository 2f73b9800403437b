"""Scoring a job's models: in this process or on Ray scoring workers, with lm-eval tasks beside the benchmark."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from harness.adapters import load_adapter
from harness.benchmarks.base import Benchmark, ModelScores
from harness.config import REFERENCE_METHODS
from harness.core.errors import SpecError
from harness.models.text import torch_dtype
from harness.pipeline.context import ModelKey, ScoredModel, log
from harness.pipeline.resume import (
    load_scores,
    save_scores,
)
from harness.results.contract import (
    run_key,
)
from harness.scoring.backend import make_backend
from harness.scoring.lm_eval import run_lm_eval_tasks
from harness.scoring.load import load_with_adapter
from harness.scoring.parallel import ScoringPool
from harness.spec import JobSpec
from harness.train.reference import References, reference_seed_for


def score_model(bench: Benchmark, model: torch.nn.Module, processor: Any, spec: JobSpec,
                device: torch.device) -> ModelScores:
    """Score one in-memory model in this process with the spec's backend."""
    backend = make_backend(spec.eval.backend, model, processor, spec.eval.batch_size, device)
    return bench.score(backend, processor, spec.eval)


def _in_memory_model(name: str, refs: References, adapter_dir: str | Path | None) -> torch.nn.Module:
    if name == "target":
        return refs.target
    if name == "retain":
        assert refs.retain is not None
        return refs.retain
    model = copy.deepcopy(refs.target)
    load_adapter(model, adapter_dir)
    return model.eval()


@contextmanager
def job_pool(spec: JobSpec, device: torch.device) -> Iterator[ScoringPool | None]:
    """The job's Ray scoring pool when it scores on several workers (`eval.workers` > 1), else None: one pool
    for all of a job's scoring (its models, then every attacked variant), so its crews start once."""
    if spec.eval.workers <= 1:
        yield None
        return
    with ScoringPool.from_spec(spec, device) as pool:
        yield pool


def score_all(bench: Benchmark, refs: dict[int, References],
              sources: Mapping[ModelKey, ScoredModel | tuple[str, str | Path | None]],
              spec: JobSpec, device: torch.device, cache: Path | None = None,
              pool: ScoringPool | None = None) -> dict[ModelKey, ModelScores]:
    """Score every model ((name, seed) -> ScoredModel, or (model dir, adapter dir or None)).

    With `eval.workers` > 1 the models are scored together on Ray, by crews of long-lived scoring workers that
    each take the next model once one is scored (harness.scoring.parallel); otherwise one after another here.
    With a `cache` directory, each model's scores are kept there as they are computed, and scores kept by
    an earlier attempt of the job for the same model are reused (harness.pipeline.resume). `pool` (see
    `job_pool`) scores on a pool the caller keeps; without it a pool is started for this call.
    """
    if _lm_eval_tasks(spec) and bench.modality != "text":
        raise SpecError(f"eval.lm_eval_tasks: lm-evaluation-harness tasks score language models; benchmark "
                        f"{bench.name!r} is {bench.modality}")
    every = {key: src if isinstance(src, ScoredModel) else ScoredModel(*src) for key, src in sources.items()}
    kept = load_scores(cache, {k: (m.source, m.adapter) for k, m in every.items()}) if cache else {}
    if kept:
        log(f"reusing the scores of {', '.join(run_key(*k) for k in kept)} from the interrupted run")
    models = {key: src for key, src in every.items() if key not in kept}
    scored = _score_models(bench, refs, models, spec, device, cache, pool)
    return {key: kept[key] if key in kept else scored[key] for key in every}


def _score_models(bench: Benchmark, refs: dict[int, References], models: dict[ModelKey, ScoredModel],
                  spec: JobSpec, device: torch.device, cache: Path | None,
                  pool: ScoringPool | None) -> dict[ModelKey, ModelScores]:
    """`score_all` on the models not scored yet, each one's scores kept in `cache` once computed."""
    def keep(key: ModelKey) -> None:
        if cache is not None:
            save_scores(cache, key, models[key].source, models[key].adapter, scores[key])

    if not models:
        return {}
    default = next(iter(refs.values())).processor
    if spec.eval.workers > 1:
        scores: dict[ModelKey, ModelScores] = {}
        groups: dict[int, list[ModelKey]] = {}  # one pool call per processor (the score function takes one)
        for key, src in models.items():
            groups.setdefault(id(src.processor), []).append(key)
        with nullcontext(pool) if pool is not None else job_pool(spec, device) as pool:
            for keys in groups.values():
                processor = models[keys[0]].processor or default
                named = {run_key(*key): (models[key].source, models[key].adapter) for key in keys}
                scored = pool.score_models(named, lambda backend, p=processor: bench.score(backend, p, spec.eval))
                scores.update({key: scored[run_key(*key)] for key in keys})
        if _lm_eval_tasks(spec):  # lm-eval runs its own model classes: on each model loaded here
            for key, src in models.items():
                model, processor = driver_model(key, src, refs, spec)
                scores[key].metric_rows = _lm_eval_rows(key, model.to(device), processor or default, spec, device)
                del model
        for key in models:
            keep(key)
        return scores
    scores = {}
    for key, src in models.items():
        log(f"scoring {run_key(*key)}")
        model, processor = driver_model(key, src, refs, spec)
        model = model.to(device)
        scores[key] = score_model(bench, model, processor or default, spec, device)
        scores[key].metric_rows = _lm_eval_rows(key, model, processor or default, spec, device)
        keep(key)
        del model
    return scores


def driver_model(key: ModelKey, src: ScoredModel, refs: dict[int, References],
                  spec: JobSpec) -> tuple[torch.nn.Module, Any]:
    """A model to score loaded in this process, and its processor (None: the references')."""
    name, seed = key
    if src.load is not None:
        return src.load()
    ref = refs[reference_seed_for(spec, seed)] if name not in REFERENCE_METHODS else refs[seed]
    if name in REFERENCE_METHODS or src.source == ref.target_source:
        return _in_memory_model(name, ref, src.adapter), src.processor

    model, processor = load_with_adapter(src.source, src.adapter, dtype=torch_dtype(spec.model.dtype),
                                         trust_remote_code=spec.model.trust_remote_code)
    return model.eval(), src.processor or processor


def _lm_eval_tasks(spec: JobSpec) -> bool:
    return spec.eval.lm_eval_tasks is not None and bool(spec.eval.lm_eval_tasks.tasks)


def _lm_eval_rows(key: ModelKey, model: torch.nn.Module, processor: Any, spec: JobSpec,
                  device: torch.device) -> list[dict[str, Any]]:
    """`eval.lm_eval_tasks` on one in-memory model: lm-evaluation-harness's metric rows (none when unset)."""
    if not _lm_eval_tasks(spec):
        return []

    log(f"lm-evaluation-harness tasks {spec.eval.lm_eval_tasks.tasks} on {run_key(*key)}")
    return run_lm_eval_tasks(model, processor, spec.eval.lm_eval_tasks, device=str(device))
