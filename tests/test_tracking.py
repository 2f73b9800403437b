"""MLflow tracking settings (store resolution, `tracking: null`), key sanitising, and a nightly run logged to
the default local store. A job logged to a real `mlflow server`: tests/e2e/test_tracking.py."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.config import TrackingSpec
from harness.spec import load_spec, validate_spec
from harness.tracking import (
    flatten,
    local_store_uri,
    log_job,
    log_nightly,
    metric_entries,
    mlflow_key,
    resolve_uri,
    step_entries,
    with_store,
)

JOB = {"name": "tiny", "methods": [{"name": "gd_sine"}]}


def test_default_is_a_local_store_under_the_out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = validate_spec({**JOB, "out": str(tmp_path / "out")})
    assert spec.tracking == TrackingSpec()
    assert resolve_uri(spec.tracking, spec.out_dir()) == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert local_store_uri(tmp_path / "out").startswith("sqlite:////")  # absolute
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_uri(spec.tracking, spec.out_dir()) == "http://127.0.0.1:5999"
    own = validate_spec({**JOB, "tracking": {"mlflow_uri": "http://tracker:5000", "experiment": "exp"}})
    assert resolve_uri(own.tracking, own.out_dir()) == "http://tracker:5000"  # the spec's URI beats the env


def test_tracking_null_turns_it_off(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**JOB, "tracking": None, "out": str(tmp_path / "out")}))
    spec = load_spec(path)
    assert spec.tracking is None
    assert load_spec(tmp_path / "job.yaml", ["tracking=null"]).tracking is None
    assert load_spec(path, ["tracking.mlflow_uri=http://x:1"]).tracking.mlflow_uri == "http://x:1"
    assert log_job(spec, tmp_path / "out", pd.DataFrame(), pd.DataFrame()) == {}
    assert not (tmp_path / "out").exists()
    assert with_store(spec, "sqlite:///elsewhere.db") is spec


def test_shared_store_keeps_a_job_s_own_uri() -> None:
    spec = validate_spec(JOB)
    shared = with_store(spec, "sqlite:////suite/mlflow.db", "sweep-x")
    assert shared.tracking == TrackingSpec(mlflow_uri="sqlite:////suite/mlflow.db", experiment="sweep-x")
    own = validate_spec({**JOB, "tracking": {"mlflow_uri": "http://mine:1", "experiment": "mine"}})
    assert with_store(own, "sqlite:////suite/mlflow.db", "sweep-x").tracking == own.tracking


def test_unknown_tracking_fields_are_spec_errors() -> None:
    from harness.core.errors import SpecError

    with pytest.raises(SpecError, match="tracking.uri"):
        validate_spec({**JOB, "tracking": {"uri": "http://x"}})


@pytest.mark.parametrize(("name", "key"), [
    ("forget10/prob", "forget10/prob"),
    ("all/model_utility", "all/model_utility"),
    ("forget@5%/el_10", "forget_5_/el_10"),
    ("/leading//double/", "leading/double"),
    ("../up", "__/up"),
    ("a:b", "a_b"),
])
def test_mlflow_keys(name: str, key: str) -> None:
    from mlflow.utils.validation import _validate_metric_name

    assert mlflow_key(name) == key
    _validate_metric_name(key)


def test_entries_from_the_results_frames() -> None:
    metrics = pd.DataFrame([{"split": "forget10", "metric": "prob", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6},
                            {"split": "all", "metric": "model_utility", "value": 0.7, "ci_low": None,
                             "ci_high": None}])
    assert metric_entries(metrics) == [("forget10/prob", 0.5, 0), ("forget10/prob_ci_low", 0.4, 0),
                                       ("forget10/prob_ci_high", 0.6, 0), ("all/model_utility", 0.7, 0)]
    log = pd.DataFrame({"method": ["m", "m"], "seed": [0, 0], "step": [0, 1], "loss": [1.0, 0.5],
                        "grad_norm": [2.0, float("nan")]})
    assert step_entries(log) == [("loss", 1.0, 0), ("grad_norm", 2.0, 0), ("loss", 0.5, 1)]
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None",
                                                                         "e": "{}"}


def test_a_nightly_run_is_one_mlflow_run_in_the_suite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "nightly" / "20260101T000000Z-abc"
    run_dir.mkdir(parents=True)
    (run_dir / "nightly_report.md").write_text("# report\n")
    comparison = pd.DataFrame([
        {"job": "tiny", "method": "gd_sine", "split": "forget10", "metric": "prob", "new": 0.2, "delta": 0.1,
         "status": "regression"},
        {"job": "tiny", "method": "gd_sine", "split": "all", "metric": "model_utility", "new": 0.6, "delta": 0.0,
         "status": "ok"},
        {"job": "tiny", "method": "(job)", "split": "run", "metric": "job_failed", "new": 0.0, "delta": float("nan"),
         "status": "new"}])
    run_id = log_nightly(TrackingSpec(), tmp_path / "nightly", "t", "20260101T000000Z-abc", "rolling median",
                         comparison, run_dir, {})
    client = MlflowClient(local_store_uri(tmp_path / "nightly"))
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "nightly-t"
    assert run.info.run_name == "20260101T000000Z-abc" and run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["tiny/gd_sine/forget10/prob"] == 0.2 and m["tiny/gd_sine/forget10/prob_delta"] == 0.1
    assert m["tiny/_job_/run/job_failed"] == 0.0 and "tiny/_job_/run/job_failed_delta" not in m
    assert m["status/regression"] == 1 and m["status/ok"] == 1 and m["status/new"] == 1
    assert run.data.tags["harness.regressions"] == "1"
    assert [a.path for a in client.list_artifacts(run_id)] == ["nightly_report.md"]
    assert Path(client.download_artifacts(run_id, "nightly_report.md", str(tmp_path))).read_text() == "# report\n"
    assert str(tmp_path / "nightly" / "mlartifacts") in run.info.artifact_uri


def test_a_search_leaves_no_tracking_uri_behind_for_later_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's `set_tracking_uri` (called by Ray's MLflowLoggerCallback in `harness tune`) writes
    MLFLOW_TRACKING_URI into os.environ; a later job in the same process would log to that store."""
    import mlflow

    from harness.tracking import tracking_env_kept

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with tracking_env_kept():
        mlflow.set_tracking_uri("sqlite:////tmp/search-store.db")
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/search-store.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")  # a user's own setting stays
    with tracking_env_kept():
        mlflow.set_tracking_uri("sqlite:////tmp/search-store.db")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://team-server:5000"
