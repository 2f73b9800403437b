"""One job read top to bottom: load data and models, unlearn with each method, score, write results."""

from __future__ import annotations

import copy
import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness.adapters import adapter_norm_bound, load_adapter
from harness.benchmarks import Benchmark, ModelScores, load_benchmark
from harness.eval.backend import make_backend
from harness.objectives import make_objective
from harness.reference import References, prepare_references
from harness.report import plot_metrics, plot_training, summary_table, write_summary
from harness.results import (
    EXAMPLE_COLUMNS,
    GENERATION_COLUMNS,
    METRIC_COLUMNS,
    TRAIN_LOG_COLUMNS,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    environment,
    frame,
)
from harness.spec import JobSpec, MethodSpec, dump_spec
from harness.train.ray_run import TrainRun, run_unlearning

REFERENCE_METHODS = ("target", "retain")


def log(message: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def resolve_device(kind: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU."""
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        from harness.errors import SpecError

        raise SpecError("resources.device is 'cuda' but no CUDA device is visible")
    return torch.device(kind)


@dataclass
class JobResult:
    """Where a job wrote its results, and the summary table it printed."""

    out_dir: Path
    summary: str
    diverged: dict[str, bool] = field(default_factory=dict)


def score_model(bench: Benchmark, model: torch.nn.Module, tokenizer: Any, spec: JobSpec,
                device: torch.device) -> ModelScores:
    """Score one in-memory model in this process with the spec's backend."""
    backend = make_backend(spec.eval.backend, model, tokenizer, spec.eval.batch_size, device)
    return bench.score(backend, tokenizer, spec.eval)


def _model_for(name: str, refs: References, adapter_dir: Path | None) -> torch.nn.Module:
    if name == "target":
        return refs.target
    if name == "retain":
        assert refs.retain is not None
        return refs.retain
    model = copy.deepcopy(refs.target)
    load_adapter(model, adapter_dir)
    return model.eval()


def score_all(bench: Benchmark, refs: References, sources: dict[str, tuple[str, Path | None]], spec: JobSpec,
              device: torch.device) -> dict[str, ModelScores]:
    """Score every model (name -> (model dir, adapter dir or None)).

    With `eval.workers` > 1 the models are scored together on Ray: each gets a group of long-lived
    scoring workers that load it once (harness.eval.parallel); otherwise one after another here.
    """
    if spec.eval.workers > 1:
        from harness.eval.parallel import ScoringPool

        with ScoringPool.from_spec(spec, device) as pool:
            return pool.score_models(sources, lambda backend: bench.score(backend, refs.tokenizer, spec.eval))
    scores = {}
    for name, (_, adapter_dir) in sources.items():
        log(f"scoring {name}")
        model = _model_for(name, refs, adapter_dir).to(device)
        scores[name] = score_model(bench, model, refs.tokenizer, spec, device)
    return scores


def _unlearn_method(method: MethodSpec, refs: References, bench: Benchmark, spec: JobSpec, out: Path) -> TrainRun:
    """Train one method on Ray Train; its adapter lands in `out/checkpoints/<method>`."""
    objective = make_objective(method.objective)
    uses_retain = method.objective.retain_loss != "none" and method.objective.w_retain > 0
    retain = bench.retain_pairs(refs.tokenizer) if uses_retain else []
    return run_unlearning(method, spec, refs.target_source,
                          bench.forget_pairs(refs.tokenizer, objective.forget_answer), retain, out)


def run_job(spec: JobSpec, progress: bool = True) -> JobResult:
    """Run a whole job and write the results contract (DESIGN.md section 4) under its out dir."""
    started = dt.datetime.now(dt.UTC)
    out = spec.out_dir()
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(spec.resources.device)
    if spec.resources.threads:
        torch.set_num_threads(spec.resources.threads)
    torch.manual_seed(spec.seed)
    atomic_write_text(out / "spec.yaml", dump_spec(spec))
    atomic_write_json(out / "env.json", environment(spec.seed, str(device), started))
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    log(f"job {spec.name}: loading benchmark {spec.benchmark.name} ({spec.benchmark.source})")
    bench = load_benchmark(spec.benchmark, spec.seed)
    refs = prepare_references(spec, bench, device, progress)
    timings["references_s"] = time.perf_counter() - t0
    log(f"reference models ready in {timings['references_s']:.1f}s (target: {refs.target_source})")

    train_rows: list[dict[str, Any]] = []
    diverged: dict[str, bool] = {}
    notes: list[str] = []
    sources: dict[str, tuple[str, Path | None]] = {"target": (refs.target_source, None)}
    if refs.retain is not None and refs.retain_source is not None:
        sources["retain"] = (refs.retain_source, None)
    for method in spec.methods:
        t0 = time.perf_counter()
        log(f"method {method.name}: objective {method.objective.name}, bound {method.adapter.bound}")
        result = _unlearn_method(method, refs, bench, spec, out)
        train_rows.extend(result.log)
        diverged[method.name] = result.diverged
        timings[f"train_{method.name}_s"] = time.perf_counter() - t0
        if result.diverged:
            notes.append(f"{method.name} diverged ({result.reason}); it is not scored.")
            log(f"method {method.name} diverged: {result.reason}")
        else:
            sources[method.name] = (refs.target_source, result.adapter_dir)

    t0 = time.perf_counter()
    scores = score_all(bench, refs, sources, spec, device)
    timings["score_s"] = time.perf_counter() - t0
    for method in spec.methods:
        if method.name in scores:
            bound = adapter_norm_bound(refs.target, method.adapter)
            if bound < float("inf"):
                notes.append(f"{method.name}: bound {method.adapter.bound} caps the adapter norm at {bound:.4g} "
                             "by construction.")

    metric_rows = bench.aggregate(scores, spec.eval)
    for name, flag in diverged.items():
        metric_rows.append({"method": name, "split": "train", "metric": "diverged", "value": float(flag)})
    for row in metric_rows:
        row.setdefault("benchmark", bench.name)
    examples = [{"method": m, "benchmark": bench.name, **r} for m, s in scores.items() for r in s.examples]
    generations = [{"method": m, "benchmark": bench.name, **r} for m, s in scores.items() for r in s.generations]

    metrics_df = frame(metric_rows, METRIC_COLUMNS)
    train_df = frame(train_rows, TRAIN_LOG_COLUMNS)
    atomic_write_parquet(out / "metrics.parquet", metrics_df)
    atomic_write_parquet(out / "train_log.parquet", train_df)
    atomic_write_parquet(out / "examples.parquet", frame(examples, EXAMPLE_COLUMNS))
    atomic_write_parquet(out / "generations.parquet", frame(generations, GENERATION_COLUMNS))

    methods = [m for m in REFERENCE_METHODS if m in scores] + [m.name for m in spec.methods]
    table = summary_table(metrics_df, train_df, bench.summary_columns, methods, diverged)
    notes.append(f"reference models: target = {refs.target_source}; retain = {refs.retain_source}")
    summary = write_summary(out / "summary.md", f"{spec.name}: {bench.name} {spec.benchmark.forget_split}",
                            table, notes)
    plot_training(train_df, out / "plots" / "training.png")
    plot_metrics(table, bench.summary_columns, out / "plots" / "metrics.png")

    finished = dt.datetime.now(dt.UTC)
    env = environment(spec.seed, str(device), started, finished)
    env["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    atomic_write_json(out / "env.json", env)
    log(f"done in {env['duration_s']:.1f}s; results in {out}")
    return JobResult(out, summary, diverged)


def read_metrics(out_dir: str | Path) -> pd.DataFrame:
    """The metrics.parquet of a finished run."""
    return pd.read_parquet(Path(out_dir) / "metrics.parquet")
