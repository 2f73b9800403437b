"""The demo run shared by the end-to-end modules that read a finished, really trained run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _demo_args(tmp: Path, out: str) -> list[str]:
    """`harness run jobs/quickstart.yaml` into `tmp/out`, with caches and data under `tmp`: two of its seeds and
    half its steps, to keep the suite short."""
    return ["run", str(ROOT / "jobs/quickstart.yaml"), "--out", str(tmp / out),
            "--set", f"reference.cache_dir={tmp / 'cache'}", "--set", f"benchmark.data_dir={tmp / 'data'}",
            "--set", "seeds=[0, 1]", "--set", "train.max_steps=50"]


@pytest.fixture(scope="session")
def demo_args() -> Callable[[Path, str], list[str]]:
    """The demo's command line (see `_demo_args`)."""
    return _demo_args


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo run, `run1` under the returned directory (read-only: copy it to change it).

    Trained once per test session: under pytest-xdist the first worker that needs it trains it in the
    workers' shared temporary root while the others wait on a file lock, then all read the same run."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # each worker's basetemp is a child of the session's
    tmp = base / "demo"
    with FileLock(str(base / "demo.lock")):
        if not (tmp / "trained").exists():
            shutil.rmtree(tmp, ignore_errors=True)  # a failed attempt's leftovers
            tmp.mkdir()
            assert main(_demo_args(tmp, "run1")) == 0
            (tmp / "trained").touch()
    return tmp
