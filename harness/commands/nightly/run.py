"""Running a nightly suite: every job, the history appended, the comparison judged and reported."""

from __future__ import annotations

import argparse
import datetime as dt
import secrets
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.commands.nightly.history import append_history, baseline_frame, read_history, run_order
from harness.commands.nightly.judge import compare, is_flagged
from harness.commands.nightly.report import write_nightly_report
from harness.commands.nightly.spec import JOB_METHOD, SuiteSpec, load_suite, resolve_jobs
from harness.core.errors import HarnessError
from harness.core.io import (
    ensure_writable_dir,
)
from harness.core.stats import metrics_across_seeds
from harness.pipeline.context import log
from harness.pipeline.job import run_job
from harness.pipeline.resume import check_resumable
from harness.results.run_dir import has_results
from harness.results.run_record import read_run_env, read_run_metrics
from harness.tracking import log_nightly, resolve_uri, warn_failed, with_store


@dataclass
class SuiteResult:
    """A finished suite run: where it wrote, the comparison, and whether anything regressed."""

    run_id: str
    out_dir: Path
    report: Path
    comparison: pd.DataFrame
    baseline: str
    jobs: dict[str, Path] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def regressions(self) -> pd.DataFrame:
        """The flagged rows (regressions and missing metrics)."""
        return self.comparison[self.comparison["status"].map(is_flagged)]

    @property
    def regressed(self) -> bool:
        """Whether anything regressed."""
        return bool(len(self.regressions))


def new_run_id(now: dt.datetime) -> str:
    """A sortable, unique run id: UTC time plus a short random suffix."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def job_rows(job: str, out_dir: Path) -> tuple[pd.DataFrame, str | None]:
    """The metric rows of a finished job directory, reduced over its seeds, and its git commit (env.json).

    A multi-seed job is compared on its across-seed statistics (harness.core.stats): `value` is the mean over
    seeds and `ci_low`/`ci_high` the across-seed 95% interval; a one-seed job keeps its bootstrap interval.
    A damaged file is a DataError naming it.
    """

    metrics = read_run_metrics(out_dir, f"metrics of job {job!r}")
    if "seed" in metrics.columns:
        metrics = metrics_across_seeds(metrics)
    commit = read_run_env(out_dir, f"environment of job {job!r}").get("git_commit")
    metrics = metrics.assign(job=job)
    return metrics, commit


def run_suite(suite: SuiteSpec | str | Path, history_path: str | Path | None = None, baseline: str | None = None,
              overrides: Sequence[str] = (), out: str | Path | None = None, progress: bool = True,
              resume: bool = False) -> SuiteResult:
    """Run every job of the suite, append to the history, compare with the baseline, write the report.

    `baseline` (a run id, or `latest` for the previous run) pins the baseline, overriding the suite's.
    `overrides` are `--set` assignments applied to every job after its own. `resume` continues the latest
    nightly run without a report: its finished jobs are kept, the others resume (`harness run --resume`).
    """

    if not isinstance(suite, SuiteSpec):
        suite = load_suite(suite)
    history_path = Path(history_path or suite.history).expanduser()
    started = dt.datetime.now(dt.UTC)
    run_id = new_run_id(started)
    suite_out = Path(out or suite.out).expanduser()
    unfinished = sorted(p.name for p in suite_out.glob("*T*Z-*") if not (p / "nightly_report.md").exists())
    if resume and unfinished:
        run_id = unfinished[-1]
        log(f"nightly {suite.name}: resuming the unfinished run {run_id}")
    run_dir = suite_out / run_id
    jobs = resolve_jobs(suite, run_dir, overrides)
    if suite.tracking is not None:
        store = resolve_uri(suite.tracking, suite_out)
        jobs = [(name, with_store(spec, store)) for name, spec in jobs]
    ensure_writable_dir(history_path.parent, "nightly history directory")
    ensure_writable_dir(run_dir, "nightly run directory")

    history = read_history(history_path)
    mode, pinned = suite.baseline.mode, suite.baseline.run_id
    if baseline:
        mode = "pinned"
        order = run_order(history)
        pinned = (order[-1] if order else None) if baseline == "latest" else baseline
    if mode == "pinned" and pinned and pinned not in set(history["run_id"]):
        raise HarnessError(f"baseline run {pinned!r} is not in the history {history_path}")

    for _, spec in jobs if resume else []:  # a changed spec is refused before anything runs
        check_resumable(spec.out_dir().expanduser().absolute(), spec.model_dump(mode="json"))
    frames, outs, failures = [], {}, {}
    for name, spec in jobs:
        if progress:
            log(f"nightly {suite.name} {run_id}: job {name}")
        failed = 0.0
        try:
            if resume and has_results(spec.out_dir()):
                log(f"job {name} finished before the interruption: kept, not rerun")
                job_out = spec.out_dir()
            else:
                job_out = (run_job(spec, progress=progress, resume=True) if resume else
                           run_job(spec, progress=progress)).out_dir
            metrics, commit = job_rows(name, job_out)
            outs[name] = job_out
        except Exception as err:  # noqa: BLE001 - a failed job is a regression, the suite goes on
            failures[name] = f"{type(err).__name__}: {err}"
            if progress:
                log(f"job {name} failed: {failures[name]}\n{traceback.format_exc()}")
            metrics, commit, failed = pd.DataFrame(), None, 1.0
        flag = pd.DataFrame([{"method": JOB_METHOD, "benchmark": "", "split": "run", "metric": "job_failed",
                              "value": failed}])
        rows = pd.concat([df for df in (metrics, flag) if len(df)], ignore_index=True).assign(
            job=name, git_commit=commit, out_dir=str(spec.out_dir()))
        frames.append(rows)
    current = pd.concat(frames, ignore_index=True)
    current = current.assign(run_id=run_id, timestamp=started, suite=suite.name)

    base, description = baseline_frame(history, mode, pinned, suite.baseline.window)
    comparison = compare(current, base, suite.all_rules())
    full = append_history(history_path, current)
    report = write_nightly_report(run_dir, suite, run_id, description, comparison, full, failures)
    result = SuiteResult(run_id, run_dir, report, comparison, description, outs, failures)
    if suite.tracking is not None:
        try:
            log_nightly(suite.tracking, suite_out, suite.name, run_id, description, comparison, run_dir, failures)
        except Exception as err:  # noqa: BLE001 - tracking must not fail a finished suite
            warn_failed(f"nightly run {run_id}", err)
    if progress:
        log(f"nightly {suite.name}: {len(result.regressions)} regression(s); report {report}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness nightly`'s arguments."""
    parser.add_argument("suite", help="suite spec (YAML), e.g. jobs/nightly.yaml")
    parser.add_argument("--history", help="history parquet (overrides the suite's `history`)")
    parser.add_argument("--baseline", metavar="RUN_ID",
                        help="pin the baseline to this run id ('latest': the last)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a field of every job spec (repeatable)")
    parser.add_argument("--out", help="output directory (overrides the suite's `out`)")
    parser.add_argument("--resume", action="store_true", help="continue the latest unfinished nightly run (no "
                        "report yet) instead of starting a new one: finished jobs are kept, the interrupted resumes")


def main(args: argparse.Namespace) -> int:
    """Run the suite; exit 1 when anything regressed."""
    result = run_suite(args.suite, history_path=args.history, baseline=args.baseline, overrides=args.set,
                       out=args.out, resume=args.resume)
    n = len(result.regressions)
    print(f"nightly run {result.run_id}: {n} regression(s) against {result.baseline}")
    print(f"report: {result.report}")
    return 1 if result.regressed else 0
