"""MLflow tracking of finished work: each (method, seed) run of a job, each reference model, each nightly run,
and (through Ray's MLflow integration) each Tune trial.

Where: `tracking.mlflow_uri`, else `MLFLOW_TRACKING_URI`, else a local store beside the results
(`<out>/mlflow.db`, SQLite, with artifacts in `<out>/mlartifacts`; browse it with
`mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db`). `tracking: null` turns tracking off.
MLflow 3 refuses its plain-file store (`file:./mlruns`) by default, so the local store is an SQLite file.

A job is logged from the frames the pipeline wrote (metrics.parquet, train_log.parquet) after they are on
disk, so the files stay the record and MLflow a view of them: per-step telemetry with the optimizer step
as MLflow's step, final metrics as `<split>/<metric>`, the resolved spec and env.json as params and
artifacts. A tracking failure (an unreachable server) is a warning: the results on disk are complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from harness.config import REFERENCE_METHODS, TrackingSpec
from harness.core.console import is_verbose
from harness.results.contract import run_key
from harness.spec import JobSpec

LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
#: Files of a job's out dir attached to each of its MLflow runs (those present).
JOB_ARTIFACTS = ("spec.yaml", "env.json", "summary.md")
_MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
_BATCH_METRICS = 1000  # MAX_METRICS_PER_BATCH
_BATCH_PARAMS = 100  # MAX_PARAMS_TAGS_PER_BATCH


def local_store_uri(out: str | Path) -> str:
    """The default store of an out dir: `sqlite:///<out>/mlflow.db` (absolute)."""
    return f"sqlite:///{(Path(out).expanduser() / LOCAL_STORE).resolve()}"


def _sqlite_artifacts(uri: str) -> str | None:
    """The artifact location beside a `sqlite:///PATH` store's database file (None for any other URI)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix):]).expanduser().resolve().parent / LOCAL_ARTIFACTS).as_uri()


def resolve_uri(tracking: TrackingSpec, out: str | Path) -> str:
    """`tracking.mlflow_uri`, else `MLFLOW_TRACKING_URI`, else the local store of `out`."""
    return tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_store_uri(out)


def with_store(spec: JobSpec, uri: str, experiment: str | None = None) -> JobSpec:
    """The spec logging to `uri` (and `experiment`) unless it names its own or tracking is off: the jobs of a
    nightly suite or a sweep share one store instead of one per job directory."""
    if spec.tracking is None:
        return spec
    tracking = spec.tracking.model_copy(update={"mlflow_uri": spec.tracking.mlflow_uri or uri,
                                                "experiment": spec.tracking.experiment or experiment})
    return spec.model_copy(update={"tracking": tracking})


def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts: characters outside `[A-Za-z0-9_./ -]` become `_`, and no
    empty, `.`/`..` or leading-slash path parts."""
    key = re.sub(r"[^\w./\- ]", "_", str(name))
    parts = [p if p not in (".", "..") else p.replace(".", "_") for p in key.split("/") if p]
    key = "/".join(parts) or "_"
    return key if posixpath.normpath(key) == key else re.sub(r"[./]", "_", key)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec/env data as MLflow params: dotted keys, scalars as text, lists as JSON (capped in length)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        out[mlflow_key(name)] = text[:_MAX_PARAM_LEN]
    return out


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (creating the database tables, ...) only with `--verbose`."""

    if not is_verbose():
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class Tracker:
    """One MLflow experiment through `MlflowClient`: create runs and log metrics, params, tags, artifacts."""

    def __init__(self, uri: str, experiment: str) -> None:
        _quiet_mlflow()
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            # A SQLite store (the local default, or one a sweep or suite shares) keeps its artifacts beside
            # its database file, not in the working directory; a server decides for itself.
            location = _sqlite_artifacts(uri)
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def log_run(self, name: str, tags: Mapping[str, str], params: Mapping[str, str],
                metrics: Sequence[tuple[str, float, int]], artifacts: Sequence[Path] = ()) -> str:
        """A finished run: `metrics` as (key, value, step); returns its run id."""
        from mlflow.entities import Metric, Param

        run = self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags))
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, int(s)) for k, v, s in metrics]
        for batch in _chunks(entries, _BATCH_METRICS):
            self.client.log_batch(run_id, metrics=list(batch))
        for batch in _chunks([Param(k, v) for k, v in params.items()], _BATCH_PARAMS):
            self.client.log_batch(run_id, params=list(batch))
        for path in artifacts:
            self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id


def _finite(value: Any) -> bool:
    return value is not None and not pd.isna(value) and math.isfinite(float(value))


def metric_entries(metrics: pd.DataFrame) -> list[tuple[str, float, int]]:
    """Final metrics rows as MLflow metrics `<split>/<metric>` (with `_ci_low`/`_ci_high` when known), step 0."""
    entries = []
    for row in metrics.itertuples(index=False):
        key = mlflow_key(f"{row.split}/{row.metric}")
        entries.append((key, float(row.value), 0))
        for bound in ("ci_low", "ci_high"):
            value = getattr(row, bound, None)
            if _finite(value):
                entries.append((f"{key}_{bound}", float(value), 0))
    return entries


def step_entries(log: pd.DataFrame) -> list[tuple[str, float, int]]:
    """Per-step telemetry rows (loss, grad norm, adapter norm, ...) as MLflow metrics at their step."""
    columns = [c for c in log.columns if c not in ("method", "seed", "step") and pd.api.types.is_numeric_dtype(log[c])]
    return [(mlflow_key(c), float(row[c]), int(row["step"])) for row in log.to_dict("records") for c in columns
            if row[c] is not None and not pd.isna(row[c])]


def _job_params(spec: JobSpec) -> dict[str, Any]:
    """The job-level sections every run of a job shares (each method carries its own adapter/objective/train)."""
    data = spec.model_dump(mode="json")
    return {k: v for k, v in data.items() if k not in ("adapter", "objective", "train", "methods", "tracking")}


def log_job(spec: JobSpec, out: Path, metrics: pd.DataFrame, train_log: pd.DataFrame) -> dict[str, str]:
    """Log a finished job: one MLflow run per (method, seed) and per reference model and seed.

    Returns run ids by `<method>/seed<seed>`; {} when tracking is off.
    """
    if spec.tracking is None:
        return {}

    tracker = Tracker(resolve_uri(spec.tracking, out), spec.tracking.experiment or spec.name)
    env = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
    shared = {**flatten(_job_params(spec)), **flatten(env, "env.")}
    artifacts = [out / name for name in JOB_ARTIFACTS if (out / name).is_file()]
    methods = {m.name: m for m in spec.methods}
    ids = {}
    for (method, seed), rows in metrics.groupby(["method", "seed"], sort=False):
        key = run_key(str(method), int(seed))
        kind = "reference" if method in REFERENCE_METHODS else "method"
        tags = {"harness.job": spec.name, "harness.kind": kind, "harness.method": str(method),
                "harness.seed": str(seed), "harness.out_dir": str(out.resolve())}
        params = {**shared, "seed": str(seed)}
        entries = metric_entries(rows)
        if method in methods:
            params.update(flatten(methods[method].model_dump(mode="json"), "method."))
            steps = train_log[(train_log["method"] == method) & (train_log["seed"] == seed)]
            entries += step_entries(steps)
            diverged = rows[(rows["split"] == "train") & (rows["metric"] == "diverged")]["value"]
            tags["harness.diverged"] = str(bool(len(diverged) and diverged.iloc[0] > 0))
        ids[key] = tracker.log_run(key, tags, params, entries, artifacts)
    return ids


def log_nightly(tracking: TrackingSpec, out: Path, suite: str, run_id: str, baseline: str,
                comparison: pd.DataFrame, run_dir: Path, failures: Mapping[str, str]) -> str:
    """One MLflow run for a nightly run: each compared metric's new value and delta, the status counts,
    and the report as artifacts. `out` is the suite's out dir (the local store lives there)."""
    tracker = Tracker(resolve_uri(tracking, out), tracking.experiment or f"nightly-{suite}")
    counts = comparison["status"].value_counts().to_dict()
    entries = [(f"status/{s}", float(counts.get(s, 0)), 0)
               for s in ("regression", "missing", "improvement", "new", "ok", "unchecked")]
    entries.append(("jobs_failed", float(len(failures)), 0))
    for row in comparison.to_dict("records"):
        key = mlflow_key(f"{row['job']}/{row['method']}/{row['split']}/{row['metric']}")
        for column, suffix in (("new", ""), ("delta", "_delta")):
            if _finite(row[column]):
                entries.append((key + suffix, float(row[column]), 0))
    flagged = comparison[comparison["status"].isin(["regression", "missing"])]
    tags = {"harness.kind": "nightly", "harness.suite": suite, "harness.nightly_run": run_id,
            "harness.baseline": baseline, "harness.regressions": str(len(flagged)),
            "harness.out_dir": str(run_dir.resolve())}
    artifacts = [run_dir / n for n in ("nightly_report.md", "nightly_report.html", "comparison.parquet")
                 if (run_dir / n).is_file()]
    return tracker.log_run(run_id, tags, {"suite": suite, "baseline": baseline[:_MAX_PARAM_LEN]}, entries,
                           artifacts)


def log_study(tracking: TrackingSpec, out: Path, study: str, settings: Mapping[str, Any], trials: pd.DataFrame,
              table: pd.DataFrame) -> list[str]:
    """Log a finished `harness study`: one parent run (the study's settings; per method the confirmed forget score,
    utility and difference to its baseline; study.md and study.parquet attached) and one nested run per trial (its
    settings and scores). Returns the parent's id, then the trials'."""
    tracker = Tracker(resolve_uri(tracking, out), tracking.experiment or f"study-{study}")
    entries = [(mlflow_key(f"{row['method']}/{key}"), float(row[key]), 0) for _, row in table.iterrows()
               for key in ("forget_mean", "utility_mean", "diff", "p_holm") if key in row and _finite(row[key])]
    artifacts = [out / name for name in ("study.md", "study.parquet") if (out / name).is_file()]
    parent = tracker.log_run(f"study-{study}", {"harness.kind": "study", "harness.study": study,
                                                "harness.out_dir": str(out.resolve())},
                             flatten(settings), entries, artifacts)
    ids = [parent]
    for _, row in trials.iterrows():
        params = {c.removeprefix("config/"): str(row[c]) for c in trials.columns
                  if c.startswith("config/") and not pd.isna(row[c])}
        scores = [(k, float(row[k]), 0) for k in ("forget_score", "utility") if _finite(row[k])]
        tags = {"mlflow.parentRunId": parent, "harness.kind": "trial", "harness.study": study,
                "harness.method": str(row["method"]), "harness.trial": str(row["trial_id"]),
                "harness.selected": str(bool(row.get("selected", False))),
                "harness.diverged": str(bool(row["diverged"]))}
        ids.append(tracker.log_run(f"{row['method']}/{row['trial_id']}", tags, params, scores))
    return ids


def tune_callback(spec: JobSpec, out: Path, method: str) -> Any:
    """Ray's `MLflowLoggerCallback` for `harness tune` (one MLflow run per trial, its config as params and
    every report as metrics), or None when tracking is off. The experiment is created here first so the
    local store keeps its artifacts under `out`."""
    if spec.tracking is None:
        return None
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    uri = resolve_uri(spec.tracking, out)
    experiment = spec.tracking.experiment or f"tune-{spec.name}"
    Tracker(uri, experiment)
    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=experiment,
                                tags={"harness.job": spec.name, "harness.kind": "trial", "harness.method": method})


@contextmanager
def tracking_env_kept() -> Iterator[None]:
    """Undo what MLflow's `set_tracking_uri` leaves in `os.environ` (Ray's `MLflowLoggerCallback` calls it in
    this process): without this, every later job in the process would log to that search's store."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")
    before = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def warn_failed(what: str, err: Exception) -> None:
    """A visible warning that tracking failed (the results on disk stand)."""
    import sys

    print(f"warning: MLflow tracking of {what} failed ({type(err).__name__}: {err}); the results on disk are "
          "complete", file=sys.stderr, flush=True)
