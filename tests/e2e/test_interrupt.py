"""Ctrl-C as a user presses it and SIGTERM as a scheduler sends it: `harness run` in its own process, the signal
while Ray Train trains and while it scores. Either way it says it was interrupted, exits 130 (SIGINT) or 143
(SIGTERM), marks its out dir interrupted with the signal, keeps its staging directory for `--resume` and leaves
no process behind: neither a child of its own nor one of its Ray instance (Ray Train's own SIGINT handler used
to swallow the first Ctrl-C and linger for the second; Ray's SIGTERM handler exited without clean-up).

Then `--resume`: the job stopped by SIGTERM after its first training (the `train-sigterm` run above) continues from its
staging directory, refuses a changed learning rate, reuses the finished training and ends with the table of an
uninterrupted run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.pipeline.resume import registered_checkpoints as resume_states
from harness.results.run_dir import read_status

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@dataclass
class Interrupted:
    """One interrupted `harness run`: its exit code, stderr, job spec, out dir, Ray temp dir and the pids of its
    descendants when the signal was sent; and its out dir as the run left it (status, files, staging directories,
    whether they hold Ray Train checkpoints), since the resume test continues one of them."""

    code: int
    err: str
    job: Path
    out: Path
    ray_tmp: Path
    children: list[int]
    status: dict
    files: list[str]
    staged: list[str]
    checkpoints: bool


#: `quick` trains 3 steps; `slow` 40, with a checkpoint every 5 steps: SIGTERM once `quick` finished and `slow`
#: wrote its first checkpoint stops `slow` part-way (a resume continues it from its last checkpoint).
RESUME_QUICK = {"train": {"max_steps": 3}}
RESUME_SLOW = {"train": {"max_steps": 40, "epochs": 100, "checkpoint_every": 5}}
ENDLESS = {"train": {"max_steps": 100000, "epochs": 100000}}

#: (method `slow`'s settings, method `quick`'s, the stderr line to interrupt at, to the whole process group?, signal)
PHASES = {
    # `quick` ends after one step; SIGINT to the whole group (as a terminal sends it) while `slow` trains.
    "train": (ENDLESS, None, "trained quick/seed0", True, signal.SIGINT),
    # Both train one step; SIGINT to the driver alone when scoring starts, after Ray Train's fit returned.
    "score": ({}, None, "scoring target/seed0", False, signal.SIGINT),
    # SIGTERM to the driver alone, as SLURM, Kubernetes and Ray's autoscaler send it, while `slow` trains, once it
    # wrote a checkpoint: the run `--resume` continues below.
    "train-sigterm": (RESUME_SLOW, RESUME_QUICK, "trained quick/seed0", False, signal.SIGTERM),
    "score-sigterm": ({}, None, "scoring target/seed0", False, signal.SIGTERM),
}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Interrupted]]:
    """Both runs, side by side (each with a Ray instance of its own; they share data and reference cache).

    Each Ray instance gets a short temp dir of its own (Ray's socket paths must fit 107 bytes) that every
    process of that instance names on its command line.
    """
    shared = tmp_path_factory.mktemp("interrupt")
    ray_tmps = {phase: Path(tempfile.mkdtemp(prefix=f"hint-{phase}-", dir="/tmp")) for phase in PHASES}
    results: dict[str, Interrupted] = {}

    def run(phase: str) -> None:
        slow, quick, line, group, sig = PHASES[phase]
        out = shared / f"out-{phase}"
        job = _job(shared, out, slow, quick)
        when = _checkpointed(out, "slow/seed0") if quick else None
        code, err, children = _interrupt_at(shared, job, ray_tmps[phase], line, group, sig, when)
        staged = sorted(out.parent.glob(f".{out.name}.staging-*"))
        results[phase] = Interrupted(code, err, job, out, ray_tmps[phase], children, read_status(out),
                                     sorted(p.name for p in out.iterdir()), [str(p) for p in staged],
                                     bool(staged and list((staged[0] / "ray").glob("*/checkpoint_*"))))

    with ThreadPoolExecutor(2) as pool:  # two at a time: each is a Ray instance on this 2-core machine
        list(pool.map(run, PHASES))
    yield results
    for path in ray_tmps.values():
        shutil.rmtree(path, ignore_errors=True)


def _job(shared: Path, out: Path, slow: dict, quick: dict | None = None) -> Path:
    data = {"name": "interrupt", "seeds": [0], "out": str(out),
            "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4,
                                        "n_world_facts": 4}, "data_dir": str(shared / "data")},
            "reference": {"cache_dir": str(shared / "cache"), "train": {"epochs": 2, "batch_size": 16}},
            "train": {"max_steps": 1, "batch_size": 4},
            "eval": {"max_new_tokens": 32, "bootstrap": 0},
            "methods": [{"name": "quick", "adapter": {"bound": "sine"}, **(quick or {})}, {"name": "slow", **slow}]}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def _checkpointed(out: Path, key: str) -> Callable[[], bool]:
    """Whether the run staged for `out` has a checkpoint of training `key` that Ray Train registered (resume trusts
    only those: pipeline.resume)."""

    def check() -> bool:
        for staging in out.parent.glob(f".{out.name}.staging-*"):
            if any(state.get("key") == key for _, state in resume_states(staging)):
                return True
        return False

    return check


def _ray_processes(ray_tmp: Path) -> list[str]:
    """Command lines of the live processes that belong to the Ray instance under `ray_tmp`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next((line for line in (proc / "status").read_text().splitlines() if line.startswith("State:")),
                         "")
        except OSError:
            continue
        if str(ray_tmp) in cmdline and "zombie" not in state:
            found.append(f"{proc.name}: {cmdline[:150]}")
    return found


def _descendants(pid: int) -> list[int]:
    """The pids of every live process below `pid` (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1]) if proc.name.isdigit() else None
        except (OSError, IndexError, ValueError):
            continue
        if ppid is not None:
            parents.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return "zombie" not in state


def _interrupt_at(shared: Path, job: Path, ray_tmp: Path, line: str, group: bool, sig: int = signal.SIGINT,
                  when: Callable[[], bool] | None = None) -> tuple[int, str, list[int]]:
    """Start `harness run`, send `sig` (to its process group when `group`, as a terminal does) once its
    stderr shows `line` (and `when()` holds); its exit code, stderr and the pids of its descendants when the
    signal was sent."""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(job)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for text in proc.stderr:
            lines.append(text)
            if line in text:
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(240), f"never saw {line!r}:\n{''.join(lines)}"
        deadline = time.monotonic() + 120
        while when is not None and not when() and time.monotonic() < deadline:
            time.sleep(0.05)
        children = _descendants(proc.pid)
        (os.killpg if group else os.kill)(proc.pid, sig)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    return code, "".join(lines), children


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_stop_signal_exits_128_plus_it_marks_the_run_interrupted_and_stops_ray(
        interrupted: dict[str, Interrupted], phase: str) -> None:
    run, sig = interrupted[phase], PHASES[phase][4]
    name = "Ctrl-C" if sig == signal.SIGINT else "SIGTERM"
    assert run.code == 128 + sig, run.err
    assert f"run interrupted ({name})" in run.err and f"interrupted ({name}): harness run stopped" in run.err, run.err
    assert "Traceback" not in run.err, run.err
    status = run.status
    assert (status["state"], status["signal"]) == ("interrupted", signal.Signals(sig).name)
    assert run.files == ["status.json"]
    # The staging directory stays for `--resume`: the finished training's Ray Train checkpoints are in it.
    assert run.staged == [status["resume"]] and run.checkpoints
    assert "rerun with --resume to continue" in run.err
    deadline = time.monotonic() + 30
    while (_ray_processes(run.ray_tmp) or any(map(_alive, run.children))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes(run.ray_tmp) == []
    assert run.children and [pid for pid in run.children if _alive(pid)] == []


# ---- --resume ---------------------------------------------------------------------------------------------


def _table(out: Path) -> list[str]:
    return [line for line in (out / "summary.md").read_text().splitlines() if line.startswith("|")]


def test_a_job_stopped_after_a_training_resumes_and_ends_as_an_uninterrupted_one(
        interrupted: dict[str, Interrupted], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    stopped = interrupted["train-sigterm"]
    whole = tmp_path / "whole"
    assert main(["run", str(_job(stopped.out.parent, whole, RESUME_SLOW, RESUME_QUICK))]) == 0
    assert stopped.code == 143 and stopped.status["state"] == "interrupted", stopped.err
    capsys.readouterr()

    assert main(["run", str(stopped.job), "--resume", "--set", "train.lr=0.5"]) == 2
    refused = capsys.readouterr().err
    assert "--resume: the job spec differs" in refused and "train.lr" in refused and "Traceback" not in refused

    assert main(["run", str(stopped.job), "--resume", "--set", "resources.max_failures=3"]) == 0
    log = capsys.readouterr().err
    assert "resuming the interrupted run staged in" in log
    assert "not retrained: quick/seed0" in log, log
    assert "training slow/seed0 continues from its checkpoint at step" in log, log
    assert "trained quick/seed0" not in log  # no training of it this time
    assert _table(stopped.out) == _table(whole)
    steps = pd.read_parquet(stopped.out / "train_log.parquet")
    assert not steps.duplicated(["method", "seed", "step"]).any()
    assert steps.groupby("method")["step"].count().to_dict() == {"quick": 3, "slow": 40}
    whole_steps = pd.read_parquet(whole / "train_log.parquet")
    pd.testing.assert_series_equal(steps["loss"], whole_steps["loss"], rtol=1e-6)
    assert [p.name for p in stopped.out.parent.glob(f".{stopped.out.name}.staging-*")] == []
    assert read_status(stopped.out)["state"] == "finished"
