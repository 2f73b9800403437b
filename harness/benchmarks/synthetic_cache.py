"""The on-disk cache of generated synthetic sets: one directory per (benchmark, sizes, seed, version)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

T = TypeVar("T")


def synth_dir(data_dir: str | Path, benchmark: str, sizes: BaseModel, seed: int, version: int) -> Path:
    """Where a synthetic set is cached: `{data_dir}/{benchmark}-synth-<hash of sizes, seed, version>`."""
    key = json.dumps({"spec": sizes.model_dump(mode="json"), "seed": seed, "version": version}, sort_keys=True)
    return Path(data_dir).expanduser() / f"{benchmark}-synth-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_cached(target: Path, files: Iterable[str], generate: Callable[[], T],
                  write: Callable[[T, Path], object]) -> Path:
    """Generate and write a set into `target` unless every one of `files` is already there.

    Written into a temporary sibling and renamed into place, so a reader never sees half a set.
    """
    names = list(files)

    def complete() -> bool:
        return all((target / name).is_file() for name in names)

    if complete():
        return target
    data = generate()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only
    try:
        write(data, tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first, or a partial copy is in the way
            if not complete():
                write(data, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
