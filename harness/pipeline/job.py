"""One job read top to bottom: load data and models, unlearn with every method and seed, score, write results."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch

from harness.adapters import adapter_norm_bound
from harness.benchmarks import load_benchmark
from harness.benchmarks.base import Benchmark
from harness.core.errors import SpecError
from harness.core.io import atomic_write_json, atomic_write_text
from harness.core.ray_env import stop_ray
from harness.core.signals import cleaning_up, describe
from harness.objectives import make_objective, original_targets
from harness.pipeline.context import JobContext, JobResult, ModelKey, ScoredModel, Training, job_device, log
from harness.pipeline.preflight import preflight
from harness.pipeline.resume import (
    check_same_spec,
    earlier_trainings,
    next_train_run_name,
)
from harness.pipeline.write import score_and_write
from harness.render import sensitivity
from harness.results.contract import (
    run_key,
    unattacked,
)
from harness.results.env import environment
from harness.results.run_dir import RunDirectory
from harness.spec import JobSpec, dump_spec
from harness.tracking import log_job, resolve_uri, warn_failed
from harness.train.ray_run import TrainingRequest, run_unlearning_many
from harness.train.reference import References, prepare_references, reference_seed_for, reference_seeds


def train_requests(spec: JobSpec, bench: Benchmark, refs: dict[int, References]) -> list[TrainingRequest]:
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
            requests.append(TrainingRequest(method, seed, forget, retain, target=ref.target_source,
                                         forget_original=original))
    return requests


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


def staged_job(spec: JobSpec, work: Callable[[JobContext], JobResult], progress: bool = True,
               overwrite: bool = False, extra_ref_seeds: Sequence[int] = (), resume: bool = False) -> JobResult:
    """Start a job and run `work` on it (train and/or score, write the results contract), in a staging
    directory; shared by `harness run` and `harness eval`.

    Bad input (spec, model, data, an out dir that cannot take the results) fails before anything is
    written. The run stages its files beside the out dir and replaces the out dir only once it has
    finished (harness.results.run_dir); an out dir with a finished run's results is refused unless `overwrite`.
    Ctrl-C or SIGTERM stops the run's Ray workers, marks the out dir interrupted (its staging directory kept
    when it holds progress) and re-raises the KeyboardInterrupt. `resume` continues the staging directory an
    interrupted or failed attempt with the same spec left (harness.pipeline.resume).
    """
    started = dt.datetime.now(dt.UTC)
    preflight(spec, overwrite)
    device = job_device(spec.resources.device)
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
    runs, todo, partial = earlier_trainings(ctx.out, requests, log) if ctx.resumed else ({}, requests, {})
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

    try:
        ids = log_job(spec, out, unattacked(pd.read_parquet(out / "metrics.parquet")),
                      pd.read_parquet(out / "train_log.parquet"))
    except Exception as err:  # noqa: BLE001 - tracking must not fail a finished run
        warn_failed(f"job {spec.name}", err)
        return
    log(f"MLflow: {len(ids)} run(s) in experiment {spec.tracking.experiment or spec.name!r} at "
        f"{resolve_uri(spec.tracking, out)}")


