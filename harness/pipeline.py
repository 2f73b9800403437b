"""One job read top to bottom: load data and models, unlearn with every method and seed, score, write results."""

from __future__ import annotations

import copy
import datetime as dt
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from harness import sensitivity
from harness.adapters import adapter_norm_bound, load_adapter
from harness.benchmarks import load_benchmark
from harness.benchmarks.base import Benchmark, ModelScores
from harness.errors import SpecError
from harness.eval.backend import make_backend
from harness.objectives import make_objective, original_targets
from harness.reference import References, prepare_references, reference_seed_for, reference_seeds
from harness.report import (
    Column,
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
    read_parquet_file,
)
from harness.resume import SCORES_DIR, check_same_spec, earlier_runs, load_scores, next_train_run_name, save_scores
from harness.run_dir import RunDirectory, require_finished
from harness.run_record import record_models
from harness.signals import cleaning_up, describe
from harness.spec import JobSpec, dump_spec
from harness.train.ray_run import TrainRequest, run_key, run_unlearning_many, stop_ray

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


@dataclass
class ScoredModel:
    """A model to score: where it is (model dir or hub id + adapter dir: what Ray scoring workers load and
    models.json records), how this process loads it (`load`, default: the reference target with the adapter
    attached), and its processor (default: the references')."""

    source: str
    adapter: str | Path | None = None
    load: Callable[[], tuple[torch.nn.Module, Any]] | None = None
    processor: Any = None


def _in_memory_model(name: str, refs: References, adapter_dir: str | Path | None) -> torch.nn.Module:
    if name == "target":
        return refs.target
    if name == "retain":
        assert refs.retain is not None
        return refs.retain
    model = copy.deepcopy(refs.target)
    load_adapter(model, adapter_dir)
    return model.eval()


def score_all(bench: Benchmark, refs: dict[int, References],
              sources: Mapping[ModelKey, ScoredModel | tuple[str, str | Path | None]],
              spec: JobSpec, device: torch.device, cache: Path | None = None) -> dict[ModelKey, ModelScores]:
    """Score every model ((name, seed) -> ScoredModel, or (model dir, adapter dir or None)).

    With `eval.workers` > 1 the models are scored together on Ray: each gets a group of long-lived
    scoring workers that load it once (harness.eval.parallel); otherwise one after another here.
    With a `cache` directory, each model's scores are kept there as they are computed, and scores kept by
    an earlier attempt of the job for the same model are reused (harness.resume).
    """
    if _lm_eval_tasks(spec) and bench.modality != "text":
        raise SpecError(f"eval.lm_eval_tasks: lm-evaluation-harness tasks score language models; benchmark "
                        f"{bench.name!r} is {bench.modality}")
    every = {key: src if isinstance(src, ScoredModel) else ScoredModel(*src) for key, src in sources.items()}
    kept = load_scores(cache, {k: (m.source, m.adapter) for k, m in every.items()}) if cache else {}
    if kept:
        log(f"reusing the scores of {', '.join(run_key(*k) for k in kept)} from the interrupted run")
    models = {key: src for key, src in every.items() if key not in kept}
    scored = _score_models(bench, refs, models, spec, device, cache)
    return {key: kept[key] if key in kept else scored[key] for key in every}


def _score_models(bench: Benchmark, refs: dict[int, References], models: dict[ModelKey, ScoredModel],
                  spec: JobSpec, device: torch.device, cache: Path | None) -> dict[ModelKey, ModelScores]:
    """`score_all` on the models not scored yet, each one's scores kept in `cache` once computed."""
    def keep(key: ModelKey) -> None:
        if cache is not None:
            save_scores(cache, key, models[key].source, models[key].adapter, scores[key])

    if not models:
        return {}
    default = next(iter(refs.values())).processor
    if spec.eval.workers > 1:
        from harness.eval.parallel import ScoringPool

        scores: dict[ModelKey, ModelScores] = {}
        groups: dict[int, list[ModelKey]] = {}  # one pool call per processor (the score function takes one)
        for key, src in models.items():
            groups.setdefault(id(src.processor), []).append(key)
        with ScoringPool.from_spec(spec, device) as pool:
            for keys in groups.values():
                processor = models[keys[0]].processor or default
                named = {run_key(*key): (models[key].source, models[key].adapter) for key in keys}
                scored = pool.score_models(named, lambda backend, p=processor: bench.score(backend, p, spec.eval))
                scores.update({key: scored[run_key(*key)] for key in keys})
        if _lm_eval_tasks(spec):  # lm-eval runs its own model classes: on each model loaded here
            for key, src in models.items():
                model, processor = _driver_model(key, src, refs, spec)
                scores[key].metric_rows = _lm_eval_rows(key, model.to(device), processor or default, spec, device)
                del model
        for key in models:
            keep(key)
        return scores
    scores = {}
    for key, src in models.items():
        log(f"scoring {run_key(*key)}")
        model, processor = _driver_model(key, src, refs, spec)
        model = model.to(device)
        scores[key] = score_model(bench, model, processor or default, spec, device)
        scores[key].metric_rows = _lm_eval_rows(key, model, processor or default, spec, device)
        keep(key)
        del model
    return scores


def _driver_model(key: ModelKey, src: ScoredModel, refs: dict[int, References],
                  spec: JobSpec) -> tuple[torch.nn.Module, Any]:
    """A model to score loaded in this process, and its processor (None: the references')."""
    name, seed = key
    if src.load is not None:
        return src.load()
    ref = refs[reference_seed_for(spec, seed)] if name not in REFERENCE_METHODS else refs[seed]
    if name in REFERENCE_METHODS or src.source == ref.target_source:
        return _in_memory_model(name, ref, src.adapter), src.processor
    from harness.modalities import get_modality
    from harness.models import torch_dtype

    model, processor = get_modality("text").load(src.source, torch_dtype(spec.model.dtype),
                                                 spec.model.trust_remote_code)
    if src.adapter is not None:
        load_adapter(model, src.adapter)
    return model.eval(), src.processor or processor


def _lm_eval_tasks(spec: JobSpec) -> bool:
    return spec.eval.lm_eval_tasks is not None and bool(spec.eval.lm_eval_tasks.tasks)


def _lm_eval_rows(key: ModelKey, model: torch.nn.Module, processor: Any, spec: JobSpec,
                  device: torch.device) -> list[dict[str, Any]]:
    """`eval.lm_eval_tasks` on one in-memory model: lm-evaluation-harness's metric rows (none when unset)."""
    if not _lm_eval_tasks(spec):
        return []
    from harness.eval.lm_eval_tasks import run_lm_eval_tasks

    log(f"lm-evaluation-harness tasks {spec.eval.lm_eval_tasks.tasks} on {run_key(*key)}")
    return run_lm_eval_tasks(model, processor, spec.eval.lm_eval_tasks, device=str(device))


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


def aggregate_all(bench: Benchmark, scores: dict[ModelKey, ModelScores], spec: JobSpec, ref_seeds: list[int],
                  names: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Metric rows with their seed: the references once per reference seed, then each scored model per seed
    (default: the spec's methods and seeds), each compared with the references of its own reference seed."""
    names = [m.name for m in spec.methods] if names is None else list(names)
    seeds = spec.seeds if seeds is None else list(seeds)
    rows: list[dict[str, Any]] = []

    def refs_of(seed: int) -> dict[str, ModelScores]:
        return {name: scores[(name, seed)] for name in REFERENCE_METHODS if (name, seed) in scores}

    def extra(group: dict[str, ModelScores], seed: int) -> list[dict[str, Any]]:
        return [{**r, "method": name, "seed": seed} for name, sc in group.items() for r in sc.metric_rows]

    for seed in ref_seeds:
        rows += [{**r, "seed": seed} for r in bench.aggregate(refs_of(seed), spec.eval)] + extra(refs_of(seed), seed)
    for seed in seeds:
        mine = {n: scores[(n, seed)] for n in names if (n, seed) in scores}
        if not mine:
            continue
        group = {**refs_of(reference_seed_for(spec, seed)), **mine}
        rows += [{**r, "seed": seed} for r in bench.aggregate(group, spec.eval) if r["method"] not in REFERENCE_METHODS]
        rows += extra(mine, seed)
    return rows


def extra_columns(metric_rows: Sequence[dict[str, Any]], benchmark: str) -> list[Column]:
    """Summary columns for the metric rows of other benchmarks than the job's (lm-evaluation-harness tasks)."""
    seen = dict.fromkeys((r["benchmark"], r["split"], r["metric"]) for r in metric_rows
                         if r.get("benchmark", benchmark) != benchmark)
    return [Column(split, metric, f"{split} {metric}") for _, split, metric in seen]


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


@dataclass
class JobContext:
    """A started job: its spec, the directory it writes into (the staging directory), device, benchmark,
    reference models per reference seed, timings."""

    spec: JobSpec
    out: Path
    device: torch.device
    bench: Benchmark
    refs: dict[int, References]
    started: dt.datetime
    timings: dict[str, float] = field(default_factory=dict)
    #: whether it continues an interrupted or failed attempt (`--resume`) whose staging it writes into
    resumed: bool = False

    @property
    def ref_seeds(self) -> list[int]:
        """The reference seeds with their own pair of reference models."""
        return sorted(self.refs)


def staged_job(spec: JobSpec, work: Callable[[JobContext], JobResult], progress: bool = True,
               overwrite: bool = False, extra_ref_seeds: Sequence[int] = (), resume: bool = False) -> JobResult:
    """Start a job and run `work` on it (train and/or score, write the results contract), in a staging
    directory; shared by `harness run` and `harness eval`.

    Bad input (spec, model, data, an out dir that cannot take the results) fails before anything is
    written. The run stages its files beside the out dir and replaces the out dir only once it has
    finished (harness.run_dir); an out dir with a finished run's results is refused unless `overwrite`.
    Ctrl-C or SIGTERM stops the run's Ray workers, marks the out dir interrupted (its staging directory kept
    when it holds progress) and re-raises the KeyboardInterrupt. `resume` continues the staging directory an
    interrupted or failed attempt with the same spec left (harness.resume).
    """
    from harness.plan import preflight

    started = dt.datetime.now(dt.UTC)
    preflight(spec, overwrite)
    device = resolve_device(spec.resources.device)
    if spec.resources.threads:
        torch.set_num_threads(spec.resources.threads)
    log(f"job {spec.name}: loading benchmark {spec.benchmark.name} ({spec.benchmark.source})")
    bench = load_benchmark(spec.benchmark)  # bad data fails here, before anything is written
    dumped = spec.model_dump(mode="json")
    with RunDirectory(spec.out_dir(), overwrite, resume, lambda old: check_same_spec(old, dumped)) as run_dir:
        if resume:
            log(f"resuming the interrupted run staged in {run_dir.staging}" if run_dir.resumed else
                f"--resume: no interrupted run of {run_dir.out} to continue; starting from the beginning")
        try:
            ctx = start_job(spec, run_dir.staging, bench, device, started, progress, extra_ref_seeds)
            ctx.resumed = run_dir.resumed is not None
            result = work(ctx)
        except KeyboardInterrupt as err:
            kept = f"; the earlier results in {run_dir.out} are kept" if run_dir.keeps_results else \
                f"; {run_dir.out} is marked interrupted"
            log(f"run interrupted ({describe(err)}): stopping its Ray workers{kept}{_resume_hint(run_dir)}")
            with cleaning_up():
                stop_ray()
            raise
        except BaseException as err:
            if run_dir.keeps_results:
                log(f"run failed ({type(err).__name__}); the earlier results in {run_dir.out} are kept"
                    f"{_resume_hint(run_dir)}")
            elif run_dir.resumable():
                log(f"run failed ({type(err).__name__}){_resume_hint(run_dir)}")
            raise
        out = run_dir.commit()
    _track(spec, out)
    log(f"done in {(dt.datetime.now(dt.UTC) - started).total_seconds():.1f}s; results in {out}")
    return JobResult(out, result.summary, result.diverged)


def _resume_hint(run_dir: RunDirectory) -> str:
    return f"; its progress stays in {run_dir.staging}: rerun with --resume to continue" if run_dir.resumable() \
        else ""


def start_job(spec: JobSpec, out: Path, bench: Benchmark, device: torch.device, started: dt.datetime,
              progress: bool = True, extra_ref_seeds: Sequence[int] = ()) -> JobContext:
    """Write spec.yaml and a first env.json into `out`, prepare the reference models (trained and cached,
    or loaded) for `reference_seeds(spec)` plus `extra_ref_seeds`."""
    t0 = time.perf_counter()
    atomic_write_text(out / "spec.yaml", dump_spec(spec))
    atomic_write_json(out / "env.json", environment(spec.seeds, str(device), started))
    ref_seeds = sorted({*reference_seeds(spec), *extra_ref_seeds})
    refs = {seed: prepare_references(spec, bench, device, progress, seed) for seed in ref_seeds}
    ctx = JobContext(spec, out, device, bench, refs, started)
    ctx.timings["references_s"] = time.perf_counter() - t0
    log(f"reference models ready in {ctx.timings['references_s']:.1f}s (seeds {ref_seeds})")
    return ctx


def reference_sources(ctx: JobContext) -> dict[ModelKey, ScoredModel]:
    """The reference models to score: target (and retain, when there is one) per reference seed."""
    sources: dict[ModelKey, ScoredModel] = {}
    for seed, ref in ctx.refs.items():
        sources[("target", seed)] = ScoredModel(ref.target_source)
        if ref.retain is not None and ref.retain_source is not None:
            sources[("retain", seed)] = ScoredModel(ref.retain_source)
    return sources


@dataclass
class Training:
    """What training adds to a job's results: diverged rows, the training log, divergence counts, run times."""

    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    diverged: dict[str, tuple[int, int]] = field(default_factory=dict)
    run_seconds: dict[str, float] = field(default_factory=dict)


def score_and_write(ctx: JobContext, sources: dict[ModelKey, ScoredModel], names: Sequence[str],
                    seeds: Sequence[int], notes: list[str], training: Training | None = None,
                    copies: Mapping[ModelKey, ModelKey] | None = None) -> JobResult:
    """Score `sources` (the references and the models `names`), aggregate per seed and write the results
    contract (DESIGN.md section 4) under the job's out dir; shared by `harness run` and `harness eval`.

    `copies` maps extra (name, seed) keys to a scored key whose scores they reuse (one model reported under
    several seeds, each compared with its own seed's references).
    """
    spec, bench, out, refs = ctx.spec, ctx.bench, ctx.out, ctx.refs
    training = training or Training()
    record_models(out, {key: (src.source, src.adapter) for key, src in sources.items()})
    t0 = time.perf_counter()
    scores = score_all(bench, refs, sources, spec, ctx.device, cache=out / SCORES_DIR)
    scores.update({key: scores[of] for key, of in (copies or {}).items()})
    ctx.timings["score_s"] = time.perf_counter() - t0

    metric_rows = aggregate_all(bench, scores, spec, ctx.ref_seeds, names, seeds) + training.metric_rows
    for row in metric_rows:
        row.setdefault("benchmark", bench.name)
    examples = [{"method": m, "seed": s, "benchmark": bench.name, **r} for (m, s), sc in scores.items()
                for r in sc.examples]
    generations = [{"method": m, "seed": s, "benchmark": bench.name, **r} for (m, s), sc in scores.items()
                   for r in sc.generations]

    metrics_df = frame(metric_rows, METRIC_COLUMNS)
    train_df = frame(training.log_rows, TRAIN_LOG_COLUMNS)
    atomic_write_parquet(out / "metrics.parquet", metrics_df)
    atomic_write_parquet(out / "train_log.parquet", train_df)
    examples_df = frame(examples, EXAMPLE_COLUMNS)
    atomic_write_parquet(out / "examples.parquet", examples_df)
    atomic_write_parquet(out / "generations.parquet", frame(generations, GENERATION_COLUMNS))

    methods = [m for m in REFERENCE_METHODS if any(k[0] == m for k in scores)] + list(names)
    columns = bench.summary_columns + extra_columns(metric_rows, bench.name) + sensitivity.summary_columns(metrics_df)
    stats = summary_stats(metrics_df, train_df, columns, methods)
    atomic_write_parquet(out / "summary.parquet", stats)
    table = summary_table(stats, methods, training.diverged)
    notes = [*notes, _seeds_note(spec, ctx.ref_seeds),
             "reference models: " + "; ".join(f"seed {s}: target = {r.target_source}, retain = {r.retain_source}"
                                              for s, r in refs.items())]
    if len(names) > 1:
        pareto = pareto_table(stats, methods, REFERENCE_METHODS)
        if plot_pareto(pareto, out / "plots" / "pareto.png") is not None:
            atomic_write_parquet(out / "pareto.parquet", pareto)
            notes.append("Pareto front of (forget quality, model utility), seed means, among the methods: "
                         + ", ".join(pareto.loc[pareto["pareto"], "method"]) + " (plots/pareto.png).")
    summary = write_summary(out / "summary.md", f"{spec.name}: {bench.describe()}", table, notes)
    plot_training(train_df, out / "plots" / "training.png")
    sensitivity.plot_sensitivity(train_df, out / "plots" / "sensitivity.png")
    plot_metrics(stats, columns, out / "plots" / "metrics.png")
    bench.plots(examples_df, methods, out / "plots")

    finished = dt.datetime.now(dt.UTC)
    env = environment(spec.seeds, str(ctx.device), ctx.started, finished)
    env["timings_s"] = {k: round(v, 2) for k, v in ctx.timings.items()}
    env["run_seconds"] = {key: round(s, 2) for key, s in training.run_seconds.items()}
    atomic_write_json(out / "env.json", env)
    shutil.rmtree(out / SCORES_DIR, ignore_errors=True)  # kept for a resume only; the results are written
    any_diverged = {name: k > 0 for name, (k, _) in training.diverged.items()}
    return JobResult(out, summary, any_diverged)


def run_job(spec: JobSpec, progress: bool = True, overwrite: bool = False, resume: bool = False) -> JobResult:
    """Run a whole job (references, training, scoring) and write the results contract (DESIGN.md section 4)
    under its out dir; see `staged_job` for the out dir's life cycle and `resume`."""
    if not spec.methods:
        raise SpecError("methods: `harness run` trains at least one method; to score the spec's `models:` "
                        "without training, use `harness eval`")
    return staged_job(spec, lambda ctx: _train_and_score(ctx, progress), progress, overwrite, resume=resume)


def _train_and_score(ctx: JobContext, progress: bool) -> JobResult:
    """Train every (method, seed) run of the started job, then score and write everything."""
    spec = ctx.spec
    t0 = time.perf_counter()
    requests = train_requests(spec, ctx.bench, ctx.refs)
    runs, todo, partial = earlier_runs(ctx.out, requests, log) if ctx.resumed else ({}, requests, {})
    log(f"training {len(todo)} run(s) ({len(spec.methods)} method(s) x {len(spec.seeds)} seed(s)"
        + (f", {len(runs)} reused" if runs else "") + f") on {spec.resources.num_workers} worker(s)")
    if todo:
        runs.update(run_unlearning_many(todo, spec, ctx.out, modality=ctx.bench.modality, progress=progress,
                                        name=next_train_run_name(ctx.out), resume_from=partial))
    ctx.timings["train_s"] = time.perf_counter() - t0

    notes: list[str] = []
    sources = reference_sources(ctx)
    for req in requests:
        run = runs[req.key]
        if run.diverged:
            notes.append(f"{req.key} diverged ({run.reason}); it is not scored.")
            log(f"{req.key} diverged: {run.reason}")
        else:
            sources[(req.method.name, req.seed)] = ScoredModel(req.target, run.adapter_dir)
    log_rows = [row for req in requests for row in runs[req.key].log]
    sensitivity_rows = sensitivity.metric_rows(pd.DataFrame(log_rows))
    if sensitivity_rows:
        epsilons = sorted({m.train.sensitivity.epsilon for m in spec.methods if m.train.sensitivity is not None})
        twin_s = float(sum(row.get("sens_seconds", 0.0) or 0.0 for row in log_rows))
        notes += sensitivity.notes(sensitivity_rows, epsilons[0], [m.name for m in spec.methods], twin_s,
                                   sum(run.seconds for run in runs.values()))
    training = Training(
        metric_rows=[{"method": req.method.name, "seed": req.seed, "split": "train", "metric": "diverged",
                      "value": float(runs[req.key].diverged)} for req in requests] + sensitivity_rows,
        log_rows=log_rows,
        diverged={m.name: (sum(runs[run_key(m.name, s)].diverged for s in spec.seeds), len(spec.seeds))
                  for m in spec.methods},
        run_seconds={key: run.seconds for key, run in runs.items()})
    notes += _bound_notes(spec, next(iter(ctx.refs.values())).target)
    return score_and_write(ctx, sources, [m.name for m in spec.methods], spec.seeds, notes, training)


def _track(spec: JobSpec, out: Path) -> None:
    """Log a finished run's results (in its final out dir) to MLflow (harness.tracking); a failure is a
    warning, the files stand."""
    if spec.tracking is None:
        return
    from harness.tracking import log_job, resolve_uri, warn_failed

    try:
        ids = log_job(spec, out, pd.read_parquet(out / "metrics.parquet"), pd.read_parquet(out / "train_log.parquet"))
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
    return (f"{n} seeds ({', '.join(map(str, spec.seeds))}): each cell is the mean [95% percentile bootstrap "
            f"interval] over the seeds (diverged seeds left out of the metrics). Reference models: {refs}.")


def read_metrics(out_dir: str | Path) -> pd.DataFrame:
    """The metrics.parquet of a finished run (DataError naming the run when it did not finish)."""
    require_finished(out_dir)
    return read_parquet_file(Path(out_dir) / "metrics.parquet", "metrics file")
