"""harness.core.io: the one atomic-write helper (temp file, fsync, rename, mode 0644) and its wrappers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.core import io
from harness.core.io import atomic_write_bytes, atomic_write_json, atomic_write_parquet, atomic_write_text


def test_writes_are_whole_world_readable_and_leave_no_temp_files(tmp_path: Path) -> None:
    frame = pd.DataFrame({"method": ["a", "b"], "value": [0.5, float("nan")]})
    paths = [atomic_write_bytes(tmp_path / "d" / "x.bin", b"\x00\x01"),
             atomic_write_text(tmp_path / "d" / "x.txt", "héllo\n"),
             atomic_write_json(tmp_path / "d" / "x.json", {"b": 1, "a": [1, 2]}),
             atomic_write_json(tmp_path / "d" / "sorted.json", {"b": 1, "a": 2}, sort_keys=True),
             atomic_write_parquet(tmp_path / "d" / "x.parquet", frame)]
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(p.name for p in paths)
    assert {p.stat().st_mode & 0o777 for p in paths} == {0o644}
    assert paths[0].read_bytes() == b"\x00\x01" and paths[1].read_text(encoding="utf-8") == "héllo\n"
    assert paths[2].read_text() == json.dumps({"b": 1, "a": [1, 2]}, indent=2) + "\n"
    assert paths[3].read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    pd.testing.assert_frame_equal(pd.read_parquet(paths[4]), frame)


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = atomic_write_text(tmp_path / "r.txt", "old")
    synced: list[int] = []

    def failing_fsync(fd: int) -> None:
        synced.append(fd)
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert synced and path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]
