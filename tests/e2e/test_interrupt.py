"""Ctrl-C as a user presses it: `harness run` in its own process, SIGINT while Ray Train trains and while it
scores. Either way it says it was interrupted, exits 130, marks its out dir interrupted and leaves no process
of its Ray instance behind (Ray Train's own SIGINT handler used to swallow the first and linger for the second).
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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness.run_dir import read_status

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@dataclass
class Interrupted:
    """One interrupted `harness run`: its exit code, stderr, out dir and Ray temp dir."""

    code: int
    err: str
    out: Path
    ray_tmp: Path


#: (method `slow`'s settings, the stderr line to interrupt at, SIGINT to the whole process group?)
PHASES = {
    # `quick` ends after one step; SIGINT to the whole group (as a terminal sends it) while `slow` trains.
    "train": ({"train": {"max_steps": 100000, "epochs": 100000}}, "trained quick/seed0", True),
    # Both train one step; SIGINT to the driver alone when scoring starts, after Ray Train's fit returned.
    "score": ({}, "scoring target/seed0", False),
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
        slow, line, group = PHASES[phase]
        out = shared / f"out-{phase}"
        code, err = _interrupt_at(shared, out, ray_tmps[phase], slow, line, group)
        results[phase] = Interrupted(code, err, out, ray_tmps[phase])

    threads = [threading.Thread(target=run, args=(phase,)) for phase in PHASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    yield results
    for path in ray_tmps.values():
        shutil.rmtree(path, ignore_errors=True)


def _job(shared: Path, out: Path, slow: dict) -> Path:
    data = {"name": "interrupt", "seeds": [0], "out": str(out),
            "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4,
                                        "n_world_facts": 4}, "data_dir": str(shared / "data")},
            "reference": {"cache_dir": str(shared / "cache"), "train": {"epochs": 2, "batch_size": 16}},
            "train": {"max_steps": 1, "batch_size": 4},
            "eval": {"max_new_tokens": 32, "bootstrap": 0},
            "methods": [{"name": "quick", "adapter": {"bound": "sine"}}, {"name": "slow", **slow}]}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(data))
    return path


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


def _interrupt_at(shared: Path, out: Path, ray_tmp: Path, slow: dict, line: str, group: bool) -> tuple[int, str]:
    """Start `harness run`, send SIGINT (to its process group when `group`, as a terminal does) once its
    stderr shows `line`; its exit code and stderr."""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(_job(shared, out, slow))], cwd=ROOT,
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
        (os.killpg if group else os.kill)(proc.pid, signal.SIGINT)
        code = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(10)
    return code, "".join(lines)


@pytest.mark.parametrize("phase", list(PHASES))
def test_ctrl_c_exits_130_marks_the_run_interrupted_and_stops_ray(interrupted: dict[str, Interrupted],
                                                                  phase: str) -> None:
    run = interrupted[phase]
    assert run.code == 130, run.err
    assert "run interrupted (Ctrl-C)" in run.err and "interrupted (Ctrl-C): harness run stopped" in run.err, run.err
    assert "Traceback" not in run.err, run.err
    assert read_status(run.out)["state"] == "interrupted"
    assert sorted(p.name for p in run.out.iterdir()) == ["status.json"]
    assert [p.name for p in run.out.parent.glob(f".{run.out.name}.staging-*")] == []
    deadline = time.monotonic() + 30
    while _ray_processes(run.ray_tmp) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _ray_processes(run.ray_tmp) == []
