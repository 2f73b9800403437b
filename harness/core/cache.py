"""Cache entries that concurrent runs can share: one builder per entry, atomic publication, verified reads.

An entry is a directory `<parent>/<name>` that `ensure_entry` builds once and every later caller reuses:

- **One writer.** The builder holds a file lock `<parent>/.<name>.lock` (`filelock`, an `flock` that the
  kernel releases when its holder dies, so a killed builder never leaves a stale lock). Other processes
  wait on the lock, then find the finished entry and reuse it.
- **Atomic publication.** The builder writes into a fresh `<parent>/.<name>.<random hex>.tmp` and renames
  it to `<name>` only when complete, so nobody ever reads half an entry. Temporary directories that a
  killed builder left behind are removed by the next lock holder.
- **Verified reads.** The last file written is `manifest.json`: every file of the entry with its size and
  sha256 (plus the builder's `info`). An entry without a readable manifest (unfinished, or written by an
  older harness), with a file missing, or with a file whose size or hash differs is damaged: it is
  rebuilt with a `CacheWarning` that names it and says what was wrong, never used, and never left behind.

What a load verifies (the cost of a check matters: a verified 8B checkpoint is 16 GB):

- always: the manifest, and each file's presence and size (one `stat` per file; this catches truncation
  and deletion, the usual damage from a killed copy, a full disk or a hand edit that shortened a file);
- sha256 of every file up to `HASH_EVERY_LOAD_BYTES` (64 MiB) on every load: data sets, tokenizers,
  configs and tiny models cost milliseconds;
- sha256 of larger files on their first load in a process only, remembered by (path, inode, size,
  mtime): one extra read per run (sha256 runs at about 1 GB/s on one core here, so ~16 s for an 8B
  bf16 checkpoint, which the load itself then reads from the page cache), never again in that process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.core.errors import CacheError
from harness.core.io import ensure_writable_dir

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
#: Files up to this size are hashed on every load; larger ones on their first load in a process.
HASH_EVERY_LOAD_BYTES = 64 * 2**20

#: Large files whose hash this process has checked: (path, inode, size, mtime_ns) -> sha256.
_hashed_here: dict[tuple[str, int, int, int], str] = {}


class CacheWarning(UserWarning):
    """A cache entry was damaged (or written by an older harness) and is being rebuilt."""


@dataclass(frozen=True)
class FileRecord:
    """What the manifest records of one file: its size in bytes and its sha256 (hex)."""

    size: int
    sha256: str


Builder = Callable[[Path], Mapping[str, Any] | None]


def sha256_file(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _files_of(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(directory: str | Path, info: Mapping[str, Any] | None = None) -> dict[str, FileRecord]:
    """Hash every file under `directory` into its `manifest.json` (written last); returns the records."""
    directory = Path(directory)
    records = {p.relative_to(directory).as_posix(): FileRecord(p.stat().st_size, sha256_file(p))
               for p in _files_of(directory)}
    manifest = {"format": MANIFEST_FORMAT, "info": dict(info or {}),
                "files": {name: {"size": r.size, "sha256": r.sha256} for name, r in records.items()}}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return records


def read_manifest(entry: str | Path) -> dict[str, Any]:
    """The parsed manifest of an entry (`format`, `info`, `files`); CacheError when missing or malformed."""
    path = Path(entry) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {str(k): FileRecord(int(v["size"]), str(v["sha256"])) for k, v in data["files"].items()}
    except FileNotFoundError:
        raise CacheError(f"{path} is missing") from None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:
        raise CacheError(f"{path} is malformed: {err!r}") from None
    return {"format": data.get("format"), "info": data.get("info") or {}, "files": files}


def _hash_checked(path: Path, record: FileRecord, st: os.stat_result) -> bool:
    if st.st_size <= HASH_EVERY_LOAD_BYTES:
        return sha256_file(path) == record.sha256
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _hashed_here:
        _hashed_here[key] = sha256_file(path)
    return _hashed_here[key] == record.sha256


def entry_problem(entry: str | Path, required: Iterable[str] = ()) -> str | None:
    """Why an existing entry cannot be used (no manifest, a file missing, resized or changed), or None if sound.

    `required` names files the entry must hold (relative paths) beyond those its manifest lists.
    """
    entry = Path(entry)
    if not (entry / MANIFEST_NAME).is_file():
        return f"it has no {MANIFEST_NAME} (unfinished, or written by an older harness)"
    try:
        files: dict[str, FileRecord] = read_manifest(entry)["files"]
    except CacheError as err:
        return str(err)
    absent = [name for name in required if name not in files]
    if absent:
        return f"its manifest lists no {', '.join(absent)}"
    stats = {}
    for name, record in files.items():  # every cheap check before any hashing
        try:
            stats[name] = (entry / name).stat()
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name} cannot be read: {err.strerror}"
        if stats[name].st_size != record.size:
            return f"{name} has {stats[name].st_size} bytes, its manifest records {record.size}"
    for name, record in files.items():
        try:
            if not _hash_checked(entry / name, record, stats[name]):
                return f"{name} does not match the sha256 in its manifest (changed since it was written)"
        except OSError as err:
            return f"{name} cannot be read: {err.strerror}"
    return None


def _scratch_pattern(name: str) -> re.Pattern[str]:
    """Scratch names of an entry: ours, and those of the harness before harness.core.cache (`<name>.tmp`, and
    `.<name>.<8 chars>` from tempfile.mkdtemp), so a killed old builder's leftovers go too."""
    n = re.escape(name)
    return re.compile(rf"\.{n}\.[0-9a-f]{{32}}\.tmp|{n}\.tmp|\.{n}\.[a-z0-9_]{{8}}")


def _scratch_dir(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.{uuid.uuid4().hex}.tmp")


def _discard(path: Path) -> None:
    """Move `path` out of the way (one rename), then delete it; CacheError naming it when that fails."""
    try:
        if path.is_dir() and not path.is_symlink():
            aside = _scratch_dir(path)
            path.rename(aside)
            shutil.rmtree(aside)
        else:
            path.unlink()
    except OSError as err:
        raise CacheError(f"cannot remove the damaged cache entry {path}: {err}") from None


def _remove_leftovers(entry: Path) -> None:
    """Delete scratch directories of `entry` that a killed builder left (only the lock holder calls this)."""
    pattern = _scratch_pattern(entry.name)
    for p in entry.parent.iterdir():
        if pattern.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)


def _lock_for(entry: Path, what: str, timeout_s: float) -> FileLock:
    """The acquired lock of `entry`, saying on stderr when it waits for another builder."""
    lock = FileLock(str(entry.with_name(f".{entry.name}.lock")))
    try:
        lock.acquire(blocking=False)
        return lock
    except Timeout:
        pass
    except OSError as err:
        raise CacheError(f"cannot lock {what} {entry} ({lock.lock_file}): {err}") from None
    print(f"waiting for another process to finish {what} {entry}", file=sys.stderr, flush=True)
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        raise CacheError(f"gave up after {timeout_s:g}s waiting for another process to finish {what} {entry} "
                         f"(lock {lock.lock_file})") from None
    return lock


def _build(entry: Path, build: Builder, required: list[str]) -> None:
    scratch = _scratch_dir(entry)
    try:
        scratch.mkdir(mode=0o755)
        info = build(scratch)
        records = write_manifest(scratch, info)
        absent = [name for name in required if name not in records]
        if absent:
            raise RuntimeError(f"building the cache entry {entry} wrote no {', '.join(absent)}")
        scratch.rename(entry)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    for name, record in records.items():  # this process just hashed them: no need to again on its next load
        st = (entry / name).stat()
        if st.st_size > HASH_EVERY_LOAD_BYTES:
            _hashed_here[(str((entry / name).resolve()), st.st_ino, st.st_size, st.st_mtime_ns)] = record.sha256


def ensure_entry(entry: str | Path, build: Builder, what: str = "cache entry", required: Iterable[str] = (),
                 timeout_s: float = -1) -> Path:
    """The verified cache directory `entry`, built by `build(scratch_dir)` when it is missing or damaged.

    `build` writes the entry's files into the empty directory it is given and may return a small
    JSON-able `info` record for the manifest. `required` names files (relative paths) the entry must
    hold. One process builds at a time; the others wait (up to `timeout_s`; negative: indefinitely)
    and reuse the result. A damaged entry is rebuilt with a `CacheWarning` naming it. If `build`
    raises, nothing is left behind and the error propagates.
    """
    entry = Path(entry).expanduser()
    required = list(required)
    if entry.is_dir() and entry_problem(entry, required) is None:
        return entry
    ensure_writable_dir(entry.parent, "cache directory")
    lock = _lock_for(entry, what, timeout_s)
    try:
        if entry.exists() or entry.is_symlink():
            problem = entry_problem(entry, required) if entry.is_dir() else "it is not a directory"
            if problem is None:
                return entry  # another process built it while this one waited
            warnings.warn(f"{what} {entry} is damaged: {problem}; rebuilding it", CacheWarning, stacklevel=2)
            _discard(entry)
        _remove_leftovers(entry)
        _build(entry, build, required)
    finally:
        lock.release()
    return entry
