"""The on-disk cache of generated synthetic sets: one directory per (benchmark, sizes, seed, version)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from harness.core.cache import ensure_entry

T = TypeVar("T")


def synth_dir(data_dir: str | Path, benchmark: str, sizes: BaseModel, seed: int, version: int) -> Path:
    """Where a synthetic set is cached: `{data_dir}/{benchmark}-synth-<hash of sizes, seed, version>`."""
    key = json.dumps({"spec": sizes.model_dump(mode="json"), "seed": seed, "version": version}, sort_keys=True)
    return Path(data_dir).expanduser() / f"{benchmark}-synth-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def ensure_cached(target: Path, files: Iterable[str], generate: Callable[[], T],
                  write: Callable[[T, Path], object]) -> Path:
    """The verified cached set in `target` (with every one of `files`), generated and written by one process.

    A harness.core.cache entry: written into a scratch directory and renamed into place with a manifest of sizes
    and hashes; an entry with a file missing, truncated or edited is rebuilt with a warning.
    """
    def build(scratch: Path) -> None:
        write(generate(), scratch)

    return ensure_entry(target, build, what="synthetic data set", required=files)
