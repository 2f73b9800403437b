"""Cached synthetic sets: a truncated, edited or deleted file is detected and the set regenerated as it was."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.benchmarks.muse.data import load_muse
from harness.benchmarks.muse.synth import SyntheticMuseSpec
from harness.benchmarks.tdec.data import load_tdec
from harness.benchmarks.tdec.synth import SyntheticTdecSpec
from harness.benchmarks.tofu.data import load_tofu
from harness.benchmarks.tofu.synth import SyntheticTofuSpec
from harness.core.cache import MANIFEST_NAME, CacheWarning, entry_problem

TOFU = SyntheticTofuSpec(n_authors=10, qa_per_author=4, n_real_authors=4, n_world_facts=4)


def _keep_lines(path: Path, n: int) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:n]), encoding="utf-8")


def _edit_same_size(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    i = text.index("a")
    path.write_text(text[:i] + "b" + text[i + 1:], encoding="utf-8")


_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "first 8 lines kept": (lambda p: _keep_lines(p, 8), "has .* bytes, its manifest records"),
    "one letter edited": (_edit_same_size, "does not match the sha256"),
    "deleted": (lambda p: p.unlink(), "is missing"),
}


@pytest.mark.parametrize("damage", list(_DAMAGE))
def test_damaged_tofu_file_is_regenerated_equal_to_a_clean_set(tmp_path: Path, damage: str) -> None:
    clean = load_tofu("synthetic", str(tmp_path / "clean"), TOFU, 0, "forget10")
    first = load_tofu("synthetic", str(tmp_path / "data"), TOFU, 0, "forget10")
    entry = Path(first.source)
    harm, reason = _DAMAGE[damage]
    harm(entry / "retain90.json")  # 36 records
    with pytest.warns(CacheWarning, match=f"synthetic data set {re.escape(str(entry))} is damaged: "
                                          f"retain90.json {reason}"):
        again = load_tofu("synthetic", str(tmp_path / "data"), TOFU, 0, "forget10")
    assert again.source == first.source and entry_problem(entry) is None
    assert (again.forget, again.retain, again.eval_splits, again.knowledge) == \
        (clean.forget, clean.retain, clean.eval_splits, clean.knowledge)
    assert (entry / "retain90.json").read_bytes() == (Path(clean.source) / "retain90.json").read_bytes()
    assert sorted(p.name for p in entry.parent.iterdir() if p.name.startswith(".") and "lock" not in p.name) == []


def _muse(data_dir: Path) -> Any:
    return load_muse("synthetic", str(data_dir), SyntheticMuseSpec(), 0)


def _tdec(data_dir: Path) -> Any:
    return load_tdec("synthetic", str(data_dir), SyntheticTdecSpec(), 0, "forget")


@pytest.mark.parametrize(("load", "name"), [(_muse, "verbmem/forget.json"), (_tdec, "forget.csv")])
def test_truncated_muse_and_tdec_files_are_regenerated(tmp_path: Path, load: Callable[[Path], Any],
                                                       name: str) -> None:
    clean = load(tmp_path / "clean")
    entry = Path(load(tmp_path / "data").source)
    os.truncate(entry / name, (entry / name).stat().st_size // 3)
    with pytest.warns(CacheWarning, match=re.escape(f"{entry} is damaged: {name} has")):
        again = load(tmp_path / "data")
    assert (entry / name).read_bytes() == (Path(clean.source) / name).read_bytes()
    assert dataclasses.replace(again, source=clean.source, files=clean.files) == clean


def test_a_set_cached_by_an_older_harness_is_regenerated(tmp_path: Path) -> None:
    entry = Path(load_tofu("synthetic", str(tmp_path), TOFU, 0, "forget10").source)
    (entry / MANIFEST_NAME).unlink()
    _keep_lines(entry / "retain90.json", 3)  # the old cache trusted any complete set of file names
    with pytest.warns(CacheWarning, match="has no manifest.json"):
        again = load_tofu("synthetic", str(tmp_path), TOFU, 0, "forget10")
    assert len(again.retain) > 3 and entry_problem(entry) is None
