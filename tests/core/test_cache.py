"""harness.core.cache: one builder per entry across processes, atomic publication, damaged entries rebuilt."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness
from harness.core import cache
from harness.core.cache import MANIFEST_NAME, CacheWarning, ensure_entry, entry_problem, read_manifest, sha256_file

ROOT = Path(harness.__file__).resolve().parent.parent
FILES = {"a.txt": "alpha\n" * 50, "sub/b.bin": "b" * 1000}


def _builder(calls: list[Path], content: dict[str, str] = FILES):
    def build(scratch: Path) -> dict[str, int]:
        calls.append(scratch)
        for name, text in content.items():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).write_text(text)
        return {"n": len(content)}
    return build


def _read(entry: Path) -> dict[str, str]:
    return {name: (entry / name).read_text() for name in FILES}


def _hidden(parent: Path) -> list[str]:
    """Names of scratch directories left in `parent` (lock files are expected and kept)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock"))


def test_builds_once_then_reuses_and_records_sizes_and_hashes(tmp_path: Path) -> None:
    calls: list[Path] = []
    entry = ensure_entry(tmp_path / "e", _builder(calls))
    assert entry == tmp_path / "e" and _read(entry) == FILES and len(calls) == 1
    assert calls[0].parent == tmp_path and calls[0].name.startswith(".e.") and not calls[0].exists()
    manifest = read_manifest(entry)
    assert manifest["info"] == {"n": 2} and set(manifest["files"]) == set(FILES)
    for name, record in manifest["files"].items():
        assert record.size == (entry / name).stat().st_size and record.sha256 == sha256_file(entry / name)
    assert entry_problem(entry) is None
    assert ensure_entry(tmp_path / "e", _builder(calls)) == entry and len(calls) == 1
    assert _hidden(tmp_path) == []


_DAMAGE = {
    "truncated": (lambda e: os.truncate(e / "a.txt", 10), "a.txt has 10 bytes, its manifest records 300"),
    "same size, edited": (lambda e: (e / "a.txt").write_text("ALPHA\n" + "alpha\n" * 49), "a.txt does not match"),
    "missing file": (lambda e: (e / "sub" / "b.bin").unlink(), "sub/b.bin is missing"),
    "no manifest (older harness)": (lambda e: (e / MANIFEST_NAME).unlink(), "has no manifest.json"),
    "manifest cut short": (lambda e: os.truncate(e / MANIFEST_NAME, 20), "manifest.json is malformed"),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_damaged_entry_is_rebuilt_with_a_warning_naming_it(tmp_path: Path, damage: str) -> None:
    calls: list[Path] = []
    entry = ensure_entry(tmp_path / "e", _builder(calls))
    harm, reason = _DAMAGE[damage]
    harm(entry)
    assert reason in (entry_problem(entry) or "")
    with pytest.warns(CacheWarning, match=f"{re.escape(str(entry))}.*{re.escape(reason)}"):
        assert ensure_entry(tmp_path / "e", _builder(calls)) == entry
    assert len(calls) == 2 and _read(entry) == FILES and entry_problem(entry) is None
    assert _hidden(tmp_path) == []  # the damaged copy is not left behind


def test_an_entry_without_a_required_file_is_rebuilt(tmp_path: Path) -> None:
    calls: list[Path] = []
    ensure_entry(tmp_path / "e", _builder(calls, {"a.txt": "x"}))
    with pytest.warns(CacheWarning, match="lists no sub/b.bin"):
        ensure_entry(tmp_path / "e", _builder(calls), required=["a.txt", "sub/b.bin"])
    assert _read(tmp_path / "e") == FILES
    with pytest.raises(RuntimeError, match="wrote no c.txt"):  # a builder that forgets a file publishes nothing
        ensure_entry(tmp_path / "f", _builder(calls), required=["c.txt"])
    assert not (tmp_path / "f").exists() and _hidden(tmp_path) == []


def test_a_failed_build_leaves_nothing_and_a_killed_builders_scratch_is_cleared(tmp_path: Path) -> None:
    def broken(scratch: Path) -> None:
        (scratch / "half").write_text("x")
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        ensure_entry(tmp_path / "e", broken)
    assert not (tmp_path / "e").exists() and _hidden(tmp_path) == []
    # what a builder killed mid-write leaves: ours, and the older harness's `<name>.tmp` and mkdtemp names
    leftovers = [tmp_path / f".e.{'0' * 32}.tmp", tmp_path / "e.tmp", tmp_path / ".e.k3j_5g6q"]
    for leftover in leftovers:
        leftover.mkdir()
        (leftover / "a.txt").write_text("partial")
    unrelated = [tmp_path / ".e.keep.tmp", tmp_path / "e2.tmp", tmp_path / ".ex.k3j_5g6q"]
    for path in unrelated:
        path.mkdir()
    ensure_entry(tmp_path / "e", _builder([]))
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in unrelated)
    assert _read(tmp_path / "e") == FILES


def test_large_files_are_hashed_on_their_first_load_in_a_process(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "HASH_EVERY_LOAD_BYTES", 100)  # a.txt (300 B) and b.bin (1000 B) count as large
    monkeypatch.setattr(cache, "_hashed_here", {})
    entry = ensure_entry(tmp_path / "e", _builder([]))
    stat = (entry / "a.txt").stat()
    (entry / "a.txt").write_text("ALPHA\n" + "alpha\n" * 49)
    os.utime(entry / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: hash remembered
    assert entry_problem(entry) is None
    monkeypatch.setattr(cache, "_hashed_here", {})  # a new process hashes it again
    assert "a.txt does not match" in (entry_problem(entry) or "")
    os.truncate(entry / "a.txt", 5)  # sizes are checked on every load
    assert "a.txt has 5 bytes" in (entry_problem(entry) or "")


def test_a_file_in_the_way_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "e").write_text("not a directory")
    with pytest.warns(CacheWarning, match="not a directory"):
        ensure_entry(tmp_path / "e", _builder([]))
    assert _read(tmp_path / "e") == FILES


_WORKER = """
import json, sys, time
from pathlib import Path
from harness.core.cache import ensure_entry

entry, go, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def build(scratch):
    with open(log, "a") as fh:
        fh.write(sys.argv[4] + "\\n")
    for i in range(20):  # slow enough that every other process arrives while it builds
        (scratch / f"part{i}.txt").write_text(str(i) * 1000)
        time.sleep(0.02)
    return {"builder": sys.argv[4]}

(go.parent / ("ready-" + sys.argv[4])).touch()
while not go.exists():
    time.sleep(0.005)
path = ensure_entry(entry, build, what="test entry")
print(json.dumps({n.name: n.read_text() for n in sorted(path.glob("part*.txt"))}))
"""


def test_concurrent_processes_build_one_entry_once(tmp_path: Path) -> None:
    go, log, n = tmp_path / "go", tmp_path / "builds.log", 4
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path / "cache" / "e"), str(go), str(log), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(n)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # every process asks for the entry at the same moment
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err for _, err in results]
    outputs = [json.loads(out) for out, _ in results]
    assert all(o == outputs[0] for o in outputs) and len(outputs[0]) == 20
    assert len(log.read_text().split()) == 1  # one writer
    waiting = [err for _, err in results if "waiting for another process to finish test entry" in err]
    assert len(waiting) >= 1  # the others waited for it (or, arriving late, found it finished)
    assert entry_problem(tmp_path / "cache" / "e") is None and _hidden(tmp_path / "cache") == []
