"""Results on disk: atomic writes (temp file + rename) and the provenance beside every number."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.core.errors import DataError, OutputError

if TYPE_CHECKING:  # pandas is imported where a table is read, so the adapters load without it
    import pandas as pd


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
        import pandas as pd

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


