"""Where MLflow artifacts go: beside the SQLite store's database, never in the working directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.tracking import Tracker, local_store_uri


def test_a_shared_sqlite_store_keeps_artifacts_beside_its_database(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A sweep or nightly suite shares one store across job dirs: the artifacts follow the store.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite").mkdir()
    tracker = Tracker(local_store_uri(tmp_path / "suite"), "shared")
    location = tracker.client.get_experiment(tracker.experiment_id).artifact_location
    assert location == (tmp_path / "suite" / "mlartifacts").resolve().as_uri()
    run = tracker.log_run("job1/seed0", {}, {"a": "1"}, [("m", 1.0, 0)], [])
    assert run and not (tmp_path / "mlruns").exists()
