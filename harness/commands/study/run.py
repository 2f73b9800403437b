"""`harness study` read top to bottom: references, one equal search per method, selection, confirmation, results.

The study writes in place under its out dir, recording `status.json` (`running`, then `finished`, `failed` or
`interrupted` with the signal); `--resume` continues an unfinished study: searches that finished are read back,
an interrupted one is restored by Ray Tune (`Tuner.restore`, finished trials kept), and the confirmation job
resumes like `harness run --resume` (finished trainings kept).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from harness.commands.study.confirm import compare_with_baselines, confirm_job, run_confirmation, seed_values
from harness.commands.study.search import search_method
from harness.commands.study.select import select_trials
from harness.commands.study.space import baselines
from harness.commands.study.spec import StudySpec
from harness.commands.study.write import write_study
from harness.core.errors import OutputError
from harness.core.io import atomic_write_json, atomic_write_text, read_json_file
from harness.core.signals import cleaning_up, signal_name
from harness.spec import JobSpec, dump_spec

STATUS = "status.json"


def _record(state: str, **extra: object) -> dict[str, object]:
    return {"state": state, "pid": os.getpid(), "host": socket.gethostname(),
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **extra}


def check_study_out(out: Path, resume: bool) -> None:
    """OutputError unless `out` can take this study: new or empty, or (with `resume`) an unfinished study."""
    status = read_json_file(out / STATUS, "study status") if (out / STATUS).is_file() else None
    if status is not None and status.get("state") == "finished":
        raise OutputError(f"{out} holds a finished study; choose another --out")
    if not resume and out.is_dir() and any(out.iterdir()):
        raise OutputError(f"{out} is not empty" + (f" (an unfinished study: {status.get('state')}); pass --resume "
                                                   "to continue it" if status else "") + "; choose another --out")


@contextmanager
def study_status(out: Path) -> Iterator[None]:
    """status.json `running` while the block runs; `interrupted` (with the signal) or `failed` when it raises."""
    atomic_write_json(out / STATUS, _record("running"))
    try:
        yield
    except KeyboardInterrupt as err:
        with cleaning_up():
            atomic_write_json(out / STATUS, _record("interrupted", signal=signal_name(err), resume=str(out)))
        raise
    except BaseException as err:
        atomic_write_json(out / STATUS, _record("failed", reason=f"{type(err).__name__}: {err}"))
        raise


def run_study(study: StudySpec, job: JobSpec, out: Path, resume: bool = False) -> Path:
    """Run (or resume) the study and write study.md, study.parquet and plots/ under `out`; returns `out`."""
    from harness.benchmarks import load_benchmark
    from harness.core.ray_env import ensure_ray
    from harness.pipeline.context import job_device as resolve_device
    from harness.pipeline.context import log
    from harness.pipeline.score import score_model
    from harness.train.reference import prepare_references

    out = out.expanduser().absolute()
    check_study_out(out, resume)
    out.mkdir(parents=True, exist_ok=True)
    with study_status(out):
        atomic_write_text(out / "study.yaml", _yaml(study))
        atomic_write_text(out / "job.yaml", dump_spec(job))
        bench = load_benchmark(job.benchmark)
        matched = type(bench).matched_utility_for(job.benchmark)
        search_job = job
        if study.search_eval_examples is not None:
            search_job = job.model_copy(update={"eval": job.eval.model_copy(
                update={"max_examples": study.search_eval_examples})})
        device = resolve_device(job.resources.device)
        refs = prepare_references(job, bench, device)
        if refs.retain is None:
            from harness.core.errors import SpecError

            raise SpecError("a study needs a retain reference model (reference.retain) for the forget score")
        log("study: scoring the target and retain models once for every trial")
        target_scores = score_model(bench, refs.target, refs.processor, search_job, device)
        retain_scores = score_model(bench, refs.retain, refs.processor, search_job, device)
        rows = bench.aggregate({"target": target_scores, "retain": retain_scores}, search_job.eval)
        target_utility = next(float(r["value"]) for r in rows if r["method"] == "target"
                              and (r["split"], r["metric"]) == matched.utility)
        # Trials running at once each hold a trainer's CPUs: a local Ray gets logical CPUs for all of them, so
        # one trainer's start-up (process spawn, imports, rendezvous) overlaps another's steps.
        per_trial = job.resources.num_workers * job.resources.cpus_per_worker
        ensure_ray(job.resources.address, num_cpus=max(os.cpu_count() or 1, study.max_concurrent * per_trial + 1)
                   if study.max_concurrent > 1 else None)
        trials = pd.concat([search_method(study, search_job, m, matched, bench, refs, retain_scores, out, resume)
                            for m in job.methods], ignore_index=True)
        trials = select_trials(trials, target_utility, study.delta, matched.mode)
        confirm = confirm_job(study, job, trials[trials["selected"]], out)
        confirm_dir = run_confirmation(confirm, resume)
        metrics = pd.read_parquet(confirm_dir / "metrics.parquet")
        names = [m.name for m in confirm.methods]
        per_seed = seed_values(metrics, matched, names)
        table = compare_with_baselines(per_seed, baselines(confirm.methods, study.baseline), matched)
        target_rows = metrics[(metrics["method"] == "target") & (metrics["split"] == matched.utility[0])
                              & (metrics["metric"] == matched.utility[1])]
        confirm_target = float(target_rows["value"].mean())
        text = write_study(out, study, job.name, matched, trials, per_seed, table, target_utility, confirm_target)
        if job.tracking is not None:
            _track(study, job, out, trials, table)
        atomic_write_json(out / STATUS, _record("finished"))
    log(f"study: results in {out}")
    print(text)
    return out


def _yaml(study: StudySpec) -> str:
    import yaml

    return yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)


def _track(study: StudySpec, job: JobSpec, out: Path, trials: pd.DataFrame, table: pd.DataFrame) -> None:
    """One MLflow parent run for the study, a nested run per trial (harness.tracking); a failure is a warning."""
    from harness.pipeline.context import log
    from harness.tracking import log_study, resolve_uri, warn_failed

    try:
        ids = log_study(job.tracking, out, study.name, study.model_dump(mode="json"), trials, table)
    except Exception as err:  # noqa: BLE001 - tracking must not fail a finished study
        warn_failed(f"study {study.name}", err)
        return
    log(f"MLflow: study run {ids[0]} with {len(ids) - 1} nested trial run(s) at {resolve_uri(job.tracking, out)}")
