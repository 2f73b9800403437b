"""`harness submit` against a real local Ray head with token authentication, as a user runs it.

The head is started with `ray start --head --block` in its own temporary directory and process group, on
free ports (GCS, dashboard, Ray Client server, dashboard agent), with `RAY_AUTH_MODE=token` and a fresh
`RAY_AUTH_TOKEN` in its environment only, so neither `~/.ray/auth_token` nor other local Ray instances are
touched. It is stopped by its own process ids (SIGTERM to `ray start --block`, which stops what it started,
then SIGKILL to anything left in its process group): `ray stop` would stop every Ray process on the machine.

One real job runs end to end: jobs/quickstart.yaml shrunk with `--set` (one method, one training step,
10 synthetic authors, one reference epoch, 4 new tokens, no bootstrap), results written to a temporary
directory, followed with `--wait`. A `--dry-run` job would not show that results come back, and a second
job would double the time on a 2-core machine, so bad input is checked locally instead (it fails before
anything is uploaded).
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e

TINY = ["methods=[{name: gd_sine, adapter: {bound: sine}}]", "train.max_steps=1", "reference.train.epochs=1",
        "benchmark.synthetic.n_authors=10", "benchmark.synthetic.qa_per_author=1",
        "benchmark.synthetic.n_real_authors=2", "benchmark.synthetic.n_world_facts=2",
        "eval.max_new_tokens=4", "eval.max_examples=4", "eval.bootstrap=0", "seeds=[0]",
        "attacks.quantize.enabled=false"]
JOB_TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) of every process, read from /proc."""
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return procs


def _head_pids(root: int) -> set[int]:
    """The live processes of the head: its process group and every descendant (Ray workers set their own group)."""
    procs = _processes()
    found = {pid for pid, (_, pgid, state) in procs.items() if pgid == root and state != "Z"}
    frontier = {root} | found
    while frontier:
        children = {pid for pid, (ppid, _, state) in procs.items() if ppid in frontier and state != "Z"}
        frontier = children - found
        found |= children
    return found - {root}


def _alive(pids: set[int]) -> set[int]:
    procs = _processes()
    return {p for p in pids if p in procs and procs[p][2] != "Z"}


def _stop_head(proc: subprocess.Popen) -> None:
    """Stop the head by its own process ids: `ray start --block` first, then whatever of it is left."""
    pids = _head_pids(proc.pid)  # before the tree is orphaned
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    pids = _alive(pids | _head_pids(proc.pid))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while (pids := _alive(pids)) and time.monotonic() < deadline:
            time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def head() -> Iterator[dict[str, str]]:
    """A local Ray head with token auth: its Jobs API address, its token and a scratch directory."""
    ray_exe = Path(sys.executable).parent / "ray"
    if not ray_exe.exists():
        ray_exe = Path(shutil.which("ray") or "")
    if not ray_exe.is_file():
        pytest.skip("the `ray` CLI is not installed")
    tmp = Path(tempfile.mkdtemp(prefix="hsub", dir="/tmp"))  # short: Ray's socket paths live under it
    token = secrets.token_hex(32)
    dash = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               # the job's `python` is this interpreter (it has the harness's dependencies)
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(ray_exe), "start", "--head", "--block", "--port", str(_free_port()), "--num-cpus", "2",
           "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
           "--temp-dir", str(tmp / "ray"), "--include-dashboard", "true", "--disable-usage-stats"]
    log = open(tmp / "ray_start.log", "w")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail("ray start exited:\n" + (tmp / "ray_start.log").read_text()[-3000:])
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break  # no auth?  the token tests below would fail and say so
            except urllib.error.HTTPError as err:
                if err.code in (401, 403):
                    break  # up, and asking for the token
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("the Ray dashboard did not come up:\n" + (tmp / "ray_start.log").read_text()[-3000:])
            time.sleep(1)
        yield {"address": address, "token": token, "tmp": str(tmp)}
    finally:
        _stop_head(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def token_env(head: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("RAY_AUTH_TOKEN", head["token"])
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return head


@pytest.fixture(scope="module")
def finished(head: dict[str, str]) -> dict[str, str]:
    """Submit the tiny quickstart with --wait; the job id, its stdout and its results directory."""
    out_dir = Path(head["tmp"]) / "results"
    args = ["submit", str(ROOT / "jobs" / "quickstart.yaml"), "--address", head["address"], "--out", str(out_dir),
            "--wait"]
    for o in [*TINY, f"reference.cache_dir={head['tmp']}/cache", f"benchmark.data_dir={head['tmp']}/data"]:
        args += ["--set", o]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_TOKEN", head["token"])
        mp.delenv("RAY_AUTH_MODE", raising=False)
        job: dict[str, str] = {}
        # A hung job is stopped (so --wait returns and the test fails) instead of hanging the suite.
        def _stop_if_hung() -> None:
            from harness.commands.submit import stop_job
            if "id" in job:
                stop_job(head["address"], job["id"])
        timer = threading.Timer(JOB_TIMEOUT_S, _stop_if_hung)
        timer.start()
        started = time.monotonic()
        try:
            code, stdout, stderr = _cli(*args)
        finally:
            timer.cancel()
    first = next(line for line in stdout.splitlines() if line.startswith("submitted "))
    job.update(id=first.split()[1].rstrip(":"), stdout=stdout, out=str(out_dir), code=str(code),
               seconds=f"{time.monotonic() - started:.0f}")
    assert code == 0, f"exit {code}\n{stdout[-4000:]}\n{stderr}"
    return job


def test_submit_waits_and_results_come_back(finished: dict[str, str]) -> None:
    out = Path(finished["out"])
    assert "| gd_sine |" in (out / "summary.md").read_text()
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert {"target", "retain", "gd_sine"} <= set(metrics["method"])
    # --wait streamed the job's own output, then its final status.
    assert f"results: {out}" in finished["stdout"]
    assert finished["stdout"].splitlines()[-1].startswith(f"job {finished['id']}: SUCCEEDED")
    print(f"tiny quickstart job: {finished['seconds']} s from submit to SUCCEEDED")
    print(finished["stdout"])


def test_status_logs_and_stop(finished: dict[str, str], token_env: dict[str, str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    address = token_env["address"]
    code, out, _ = _cli("jobs", "status", finished["id"], "--address", address)
    assert code == 0 and out.startswith(f"{finished['id']}: SUCCEEDED")
    # The address may come from the environment, as for Ray's own CLI.
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", address)
    code, out, _ = _cli("jobs", "logs", finished["id"])
    assert code == 0 and "results:" in out and "gd_sine" in out
    code, out, _ = _cli("jobs", "stop", finished["id"])
    assert code == 0 and "already finished" in out
    code, _, err = _cli("jobs", "status", "harness-no-such-job")
    assert code == 2 and "no job 'harness-no-such-job'" in err


def test_wrong_token_is_a_clear_error(head: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    code, out, err = _cli("jobs", "status", "anything", "--address", head["address"])
    assert code == 2 and out == ""
    assert f"the Ray cluster at {head['address']} rejected the token from RAY_AUTH_TOKEN" in err
    assert "Traceback" not in err


def test_missing_token_is_a_clear_error(head: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    code, _, err = _cli("submit", str(ROOT / "jobs" / "quickstart.yaml"), "--address", head["address"])
    assert code == 2
    assert f"the Ray cluster at {head['address']} requires a token: set RAY_AUTH_TOKEN" in err
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    code, _, err = _cli("jobs", "logs", "anything", "--address", head["address"])
    assert code == 2 and "RAY_AUTH_TOKEN_PATH" in err and "cannot read the token file" in err


def test_bad_spec_fails_before_anything_is_sent(token_env: dict[str, str]) -> None:
    code, out, err = _cli("submit", str(ROOT / "jobs" / "quickstart.yaml"), "--address", token_env["address"],
                          "--set", "train.lr=-1")
    assert code == 2 and "train.lr" in err and "submitted" not in out
    code, _, err = _cli("submit", str(ROOT / "jobs" / "no_such_spec.yaml"), "--address", token_env["address"])
    assert code == 2 and "does not exist" in err
