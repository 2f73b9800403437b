"""One job read top to bottom: load data and models, unlearn with every method and seed, score, write results."""

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
from harness.benchmarks import load_benchmark
from harness.benchmarks.base import Benchmark, ModelScores
from harness.eval.backend import make_backend
from harness.objectives import make_objective, original_targets
from harness.reference import References, prepare_references, reference_seed_for, reference_seeds
from harness.report import (
    pareto_table,
    plot_metrics,
    plot_pareto,
    plot_training,
    summary_stats,
    summary_table,
    write_summary,
)
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
from harness.run_record import record_models
from harness.spec import JobSpec, dump_spec
from harness.train.ray_run import TrainRequest, TrainRun, run_key, run_unlearning_many

REFERENCE_METHODS = ("target", "retain")

#: A model to score: (method name, seed) -> (model directory, adapter directory or None).
ModelKey = tuple[str, int]


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


def score_model(bench: Benchmark, model: torch.nn.Module, processor: Any, spec: JobSpec,
                device: torch.device) -> ModelScores:
    """Score one in-memory model in this process with the spec's backend."""
    backend = make_backend(spec.eval.backend, model, processor, spec.eval.batch_size, device)
    return bench.score(backend, processor, spec.eval)


def _in_memory_model(name: str, refs: References, adapter_dir: Path | None) -> torch.nn.Module:
    if name == "target":
        return refs.target
    if name == "retain":
        assert refs.retain is not None
        return refs.retain
    model = copy.deepcopy(refs.target)
    load_adapter(model, adapter_dir)
    return model.eval()


def score_all(bench: Benchmark, refs: dict[int, References], sources: dict[ModelKey, tuple[str, Path | None]],
              spec: JobSpec, device: torch.device) -> dict[ModelKey, ModelScores]:
    """Score every model ((name, seed) -> (model dir, adapter dir or None)).

    With `eval.workers` > 1 the models are scored together on Ray: each gets a group of long-lived
    scoring workers that load it once (harness.eval.parallel); otherwise one after another here.
    """
    processor = next(iter(refs.values())).processor
    if spec.eval.workers > 1:
        from harness.eval.parallel import ScoringPool

        named = {run_key(*key): src for key, src in sources.items()}
        with ScoringPool.from_spec(spec, device) as pool:
            scored = pool.score_models(named, lambda backend: bench.score(backend, processor, spec.eval))
        return {key: scored[run_key(*key)] for key in sources}
    scores = {}
    for (name, seed), (_, adapter_dir) in sources.items():
        log(f"scoring {run_key(name, seed)}")
        ref = refs[reference_seed_for(spec, seed)] if name not in REFERENCE_METHODS else refs[seed]
        model = _in_memory_model(name, ref, adapter_dir).to(device)
        scores[(name, seed)] = score_model(bench, model, processor, spec, device)
    return scores


def train_requests(spec: JobSpec, bench: Benchmark, refs: dict[int, References]) -> list[TrainRequest]:
    """Every (method, seed) run of the job, seed-major, each on the targets of its reference seed."""
    requests = []
    for seed in spec.seeds:
        ref = refs[reference_seed_for(spec, seed)]
        for method in spec.methods:
            objective = make_objective(method.objective)
            retain = bench.retain_examples(ref.processor) if method.objective.uses_retain else []
            forget = bench.forget_examples(ref.processor, objective, seed)
            # A preparation pass reads the forget set with its own targets (SalUn's mask: the true labels);
            # when they are the objective's targets too, the trainer sends the set once (by content hash).
            original = (bench.forget_examples(ref.processor, original_targets(), seed) if objective.has_prepare
                        else [])
            requests.append(TrainRequest(method, seed, forget, retain, target=ref.target_source,
                                         forget_original=original))
    return requests


def aggregate_all(bench: Benchmark, scores: dict[ModelKey, ModelScores], spec: JobSpec,
                  ref_seeds: list[int]) -> list[dict[str, Any]]:
    """Metric rows with their seed: the references once per reference seed, then each method per job seed,
    each compared with the references of its own reference seed."""
    rows: list[dict[str, Any]] = []

    def refs_of(seed: int) -> dict[str, ModelScores]:
        return {name: scores[(name, seed)] for name in REFERENCE_METHODS if (name, seed) in scores}

    for seed in ref_seeds:
        rows += [{**r, "seed": seed} for r in bench.aggregate(refs_of(seed), spec.eval)]
    for seed in spec.seeds:
        group = {**refs_of(reference_seed_for(spec, seed)),
                 **{m.name: scores[(m.name, seed)] for m in spec.methods if (m.name, seed) in scores}}
        rows += [{**r, "seed": seed} for r in bench.aggregate(group, spec.eval) if r["method"] not in REFERENCE_METHODS]
    return rows


def _bound_notes(spec: JobSpec, target: torch.nn.Module) -> list[str]:
    notes = []
    for method in spec.methods:
        bound = adapter_norm_bound(target, method.adapter)
        if bound < float("inf"):
            if make_objective(method.objective).moves_start:
                notes.append(f"{method.name}: bound {method.adapter.bound} caps the adapter norm at {2 * bound:.4g} "
                             "(twice the bound: FILA's start subtracts delta(B0 A0)).")
            else:
                notes.append(f"{method.name}: bound {method.adapter.bound} caps the adapter norm at {bound:.4g} "
                             "by construction.")
    return notes


def run_job(spec: JobSpec, progress: bool = True) -> JobResult:
    """Run a whole job and write the results contract (DESIGN.md section 4) under its out dir."""
    from harness.plan import preflight

    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    preflight(spec)
    out = spec.out_dir()
    device = resolve_device(spec.resources.device)
    if spec.resources.threads:
        torch.set_num_threads(spec.resources.threads)
    log(f"job {spec.name}: loading benchmark {spec.benchmark.name} ({spec.benchmark.source})")
    bench = load_benchmark(spec.benchmark)  # bad data fails here, before anything is written
    atomic_write_text(out / "spec.yaml", dump_spec(spec))
    atomic_write_json(out / "env.json", environment(spec.seeds, str(device), started))
    timings: dict[str, float] = {}
    ref_seeds = reference_seeds(spec)
    refs = {seed: prepare_references(spec, bench, device, progress, seed) for seed in ref_seeds}
    timings["references_s"] = time.perf_counter() - t0
    log(f"reference models ready in {timings['references_s']:.1f}s (seeds {ref_seeds})")

    t0 = time.perf_counter()
    requests = train_requests(spec, bench, refs)
    log(f"training {len(requests)} run(s) ({len(spec.methods)} method(s) x {len(spec.seeds)} seed(s)) "
        f"on {spec.resources.num_workers} worker(s)")
    runs: dict[str, TrainRun] = run_unlearning_many(requests, spec, out, modality=bench.modality, progress=progress)
    timings["train_s"] = time.perf_counter() - t0

    notes: list[str] = []
    sources: dict[ModelKey, tuple[str, Path | None]] = {}
    for seed in ref_seeds:
        sources[("target", seed)] = (refs[seed].target_source, None)
        if refs[seed].retain is not None and refs[seed].retain_source is not None:
            sources[("retain", seed)] = (refs[seed].retain_source, None)
    for req in requests:
        run = runs[req.key]
        if run.diverged:
            notes.append(f"{req.key} diverged ({run.reason}); it is not scored.")
            log(f"{req.key} diverged: {run.reason}")
        else:
            sources[(req.method.name, req.seed)] = (req.target, run.adapter_dir)

    record_models(out, sources)
    t0 = time.perf_counter()
    scores = score_all(bench, refs, sources, spec, device)
    timings["score_s"] = time.perf_counter() - t0

    metric_rows = aggregate_all(bench, scores, spec, ref_seeds)
    for req in requests:
        metric_rows.append({"method": req.method.name, "seed": req.seed, "split": "train", "metric": "diverged",
                            "value": float(runs[req.key].diverged)})
    for row in metric_rows:
        row.setdefault("benchmark", bench.name)
    examples = [{"method": m, "seed": s, "benchmark": bench.name, **r} for (m, s), sc in scores.items()
                for r in sc.examples]
    generations = [{"method": m, "seed": s, "benchmark": bench.name, **r} for (m, s), sc in scores.items()
                   for r in sc.generations]
    train_rows = [row for req in requests for row in runs[req.key].log]

    metrics_df = frame(metric_rows, METRIC_COLUMNS)
    train_df = frame(train_rows, TRAIN_LOG_COLUMNS)
    atomic_write_parquet(out / "metrics.parquet", metrics_df)
    atomic_write_parquet(out / "train_log.parquet", train_df)
    examples_df = frame(examples, EXAMPLE_COLUMNS)
    atomic_write_parquet(out / "examples.parquet", examples_df)
    atomic_write_parquet(out / "generations.parquet", frame(generations, GENERATION_COLUMNS))

    methods = [m for m in REFERENCE_METHODS if any(k[0] == m for k in scores)] + [m.name for m in spec.methods]
    stats = summary_stats(metrics_df, train_df, bench.summary_columns, methods)
    atomic_write_parquet(out / "summary.parquet", stats)
    diverged = {m.name: (sum(runs[run_key(m.name, s)].diverged for s in spec.seeds), len(spec.seeds))
                for m in spec.methods}
    table = summary_table(stats, methods, diverged)
    notes += _bound_notes(spec, next(iter(refs.values())).target)
    notes.append(_seeds_note(spec, ref_seeds))
    notes.append("reference models: " + "; ".join(f"seed {s}: target = {r.target_source}, retain = {r.retain_source}"
                                                  for s, r in refs.items()))
    if len(spec.methods) > 1:
        pareto = pareto_table(stats, methods, REFERENCE_METHODS)
        if plot_pareto(pareto, out / "plots" / "pareto.png") is not None:
            atomic_write_parquet(out / "pareto.parquet", pareto)
            notes.append("Pareto front of (forget quality, model utility), seed means, among the methods: "
                         + ", ".join(pareto.loc[pareto["pareto"], "method"]) + " (plots/pareto.png).")
    summary = write_summary(out / "summary.md", f"{spec.name}: {bench.describe()}", table, notes)
    plot_training(train_df, out / "plots" / "training.png")
    plot_metrics(stats, bench.summary_columns, out / "plots" / "metrics.png")
    bench.plots(examples_df, methods, out / "plots")

    finished = dt.datetime.now(dt.UTC)
    env = environment(spec.seeds, str(device), started, finished)
    env["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    env["run_seconds"] = {key: round(run.seconds, 2) for key, run in runs.items()}
    atomic_write_json(out / "env.json", env)
    _track(spec, out, metrics_df, train_df)
    log(f"done in {env['duration_s']:.1f}s; results in {out}")
    any_diverged = {name: k > 0 for name, (k, _) in diverged.items()}
    return JobResult(out, summary, any_diverged)


def _track(spec: JobSpec, out: Path, metrics: pd.DataFrame, train_log: pd.DataFrame) -> None:
    """Log the written results to MLflow (harness.tracking); a failure is a warning, the files stand."""
    if spec.tracking is None:
        return
    from harness.tracking import log_job, resolve_uri, warn_failed

    try:
        ids = log_job(spec, out, metrics, train_log)
    except Exception as err:  # noqa: BLE001 - tracking must not fail a finished run
        warn_failed(f"job {spec.name}", err)
        return
    log(f"MLflow: {len(ids)} run(s) in experiment {spec.tracking.experiment or spec.name!r} at "
        f"{resolve_uri(spec.tracking, out)}")


def _seeds_note(spec: JobSpec, ref_seeds: list[int]) -> str:
    n = len(spec.seeds)
    refs = "one pair per seed" if spec.reference.per_seed else f"one shared pair (seed {ref_seeds[0]})"
    if n == 1:
        return f"one seed ({spec.seeds[0]}): no interval; one seed of a chaotic optimisation supports no conclusion. " \
               f"Reference models: {refs}."
    return (f"{n} seeds ({', '.join(map(str, spec.seeds))}): each cell is the mean [95% Student-t interval] over the "
            f"seeds (diverged seeds left out of the metrics). Reference models: {refs}.")


def read_metrics(out_dir: str | Path) -> pd.DataFrame:
    """The metrics.parquet of a finished run."""
    return pd.read_parquet(Path(out_dir) / "metrics.parquet")
