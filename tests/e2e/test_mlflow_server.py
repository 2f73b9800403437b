"""MLflow tracking against a real tracking server: `mlflow server` started here on 127.0.0.1 (SQLite backend, a
free port) and stopped by its own process id. A short demo run logs to it; the values read back through the
MLflow client equal metrics.parquet and train_log.parquet, and the console shows progress, not library noise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
NOISE = ("Setting accelerator to CPU", "Token authentication is enabled", "Writing model shards")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server_log = open(tmp / "server.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp / "artifacts")],
                            stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: its workers too
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        server_log.close()


@pytest.fixture(scope="module")
def tracked(server: str, demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 5-step demo run (the demo's cached references, short generations) logged to the server, with its
    console output."""
    tmp = tmp_path_factory.mktemp("tracked")
    out = tmp / "run"
    log = tmp / "console.txt"
    args = ["run", str(ROOT / "jobs/quickstart.yaml"), "--out", str(out),
            "--set", f"reference.cache_dir={demo / 'cache'}", "--set", f"benchmark.data_dir={demo / 'data'}",
            "--set", "seeds=[0, 1]", "--set", "train.max_steps=5", "--set", "train.report_every=1",
            "--set", "eval.max_new_tokens=8", "--set", f"tracking.mlflow_uri={server}"]
    # A separate process, as a user runs it: its console is exactly what they would see.
    done = subprocess.run([str(Path(sys.executable).with_name("harness")), *args], capture_output=True, text=True,
                          timeout=900)
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, log.read_text()
    return {"url": server, "out": out, "console": log.read_text()}


def _runs(url: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("quickstart")
    assert experiment is not None
    return {"client": client, "runs": {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}}


def test_one_run_per_method_seed_and_reference(tracked: dict) -> None:
    runs = _runs(tracked["url"])["runs"]
    methods = [f"{m}/seed{s}" for m in ("gd_lora", "gd_sine", "gd_clip") for s in (0, 1)]
    assert set(runs) == {*methods, "target/seed0", "retain/seed0"}
    sine = runs["gd_sine/seed0"]
    assert sine.data.tags["harness.kind"] == "method" and sine.data.tags["harness.diverged"] == "False"
    assert runs["target/seed0"].data.tags["harness.kind"] == "reference"
    assert sine.data.params["method.adapter.bound"] == "sine" and sine.data.params["seed"] == "0"
    assert sine.info.status == "FINISHED"


def test_final_metrics_read_back_equal_metrics_parquet(tracked: dict) -> None:
    runs = _runs(tracked["url"])["runs"]
    metrics = pd.read_parquet(tracked["out"] / "metrics.parquet")
    checked = 0
    for row in metrics.to_dict("records"):
        logged = runs[f"{row['method']}/seed{row['seed']}"].data.metrics
        assert logged[f"{row['split']}/{row['metric']}"] == pytest.approx(row["value"], rel=1e-12, abs=1e-12)
        checked += 1
    assert checked == len(metrics) > 50


def test_per_step_telemetry_read_back_equals_train_log(tracked: dict) -> None:
    found = _runs(tracked["url"])
    log = pd.read_parquet(tracked["out"] / "train_log.parquet")
    assert len(log) == 6 * 5
    for (method, seed), steps in log.groupby(["method", "seed"]):
        run_id = found["runs"][f"{method}/seed{seed}"].info.run_id
        for column in ("grad_norm", "adapter_norm", "loss"):
            history = {m.step: m.value for m in found["client"].get_metric_history(run_id, column)}
            want = dict(zip(steps["step"].astype(int), steps[column].astype(float), strict=True))
            assert history.keys() == want.keys()
            assert all(history[k] == pytest.approx(v, rel=1e-12) for k, v in want.items())


def test_console_shows_progress_and_no_library_noise(tracked: dict) -> None:
    console = tracked["console"]
    for method in ("gd_lora", "gd_sine", "gd_clip"):
        assert f"trained {method}/seed0: 5/5 steps" in console, console
    assert "scoring" in console and f"MLflow: 8 run(s) in experiment 'quickstart' at {tracked['url']}" in console
    for noise in NOISE:
        assert noise not in console, noise
