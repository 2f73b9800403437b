"""Reference-model cache entries: concurrent cold runs share one build; damaged weights are retrained."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import harness
from harness.benchmarks import load_benchmark
from harness.core.cache import MANIFEST_NAME, CacheWarning, entry_problem, read_manifest
from harness.models.text import load_pretrained
from harness.spec import JobSpec, validate_spec
from harness.train.reference import prepare_references

ROOT = Path(harness.__file__).resolve().parent.parent


def _spec_data(tmp: Path) -> dict[str, Any]:
    """A tiny builtin job whose reference models train for a few steps."""
    return {
        "name": "refcache", "out": str(tmp / "out"),
        "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 2, "n_world_facts": 2},
                      "data_dir": str(tmp / "data")},
        "reference": {"cache_dir": str(tmp / "cache"), "train": {"epochs": 1, "batch_size": 8}},
        "methods": [{"name": "gd"}],
    }


def _digest(model: torch.nn.Module) -> str:
    """sha256 over the model's state dict (names and raw bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _scratch_left(cache_root: Path) -> list[str]:
    return sorted(p.name for p in cache_root.rglob(".*") if not p.name.endswith(".lock"))


_WORKER = """
import hashlib, json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
import harness.train.reference as reference
from harness.benchmarks import load_benchmark
from harness.spec import validate_spec

spec, go, me = validate_spec(json.loads(sys.argv[1])), Path(sys.argv[2]), sys.argv[3]
trained = []
real_finetune = reference.finetune

def counted_finetune(*args, **kwargs):  # the real training, counted
    trained.append(kwargs["desc"])
    return real_finetune(*args, **kwargs)

reference.finetune = counted_finetune

def digest(model):
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

(go.parent / f"ready-{me}").touch()
while not go.exists():
    time.sleep(0.005)
bench = load_benchmark(spec.benchmark)  # the synthetic set and the tokenizer are cache entries too
refs = reference.prepare_references(spec, bench, torch.device("cpu"), progress=False)
print(json.dumps({"target": digest(refs.target), "retain": digest(refs.retain), "trained": trained,
                  "sources": [refs.target_source, refs.retain_source]}))
"""


def test_two_concurrent_cold_runs_share_one_build_of_each_entry(tmp_path: Path) -> None:
    go = tmp_path / "go"
    data = json.dumps(_spec_data(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, data, str(go), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both runs start on the same cold cache at the same moment
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in results]
    a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in results)
    assert (a["target"], a["retain"], a["sources"]) == (b["target"], b["retain"], b["sources"])
    # one writer each
    assert sorted(a["trained"] + b["trained"]) == ["train retain model (seed 0)", "train target model (seed 0)"]
    for source, digest in zip(a["sources"], (a["target"], a["retain"]), strict=True):
        entry = Path(source)
        assert entry_problem(entry, ["config.json", "model.safetensors"]) is None
        assert _digest(load_pretrained(source)[0]) == digest
    assert _scratch_left(tmp_path / "cache") == [] and _scratch_left(tmp_path / "data") == []


@pytest.fixture
def cold(tmp_path: Path, one_thread: None) -> tuple[JobSpec, Any, Any]:
    spec = validate_spec(_spec_data(tmp_path))
    bench = load_benchmark(spec.benchmark)
    return spec, bench, prepare_references(spec, bench, torch.device("cpu"), progress=False)


@pytest.mark.parametrize("damage", ["truncated weights", "deleted config"])
def test_damaged_cached_weights_are_retrained_equal_to_a_clean_build(cold: tuple[JobSpec, Any, Any],
                                                                     damage: str) -> None:
    spec, bench, clean = cold
    entry = Path(clean.target_source)
    weights_sha = read_manifest(entry)["files"]["model.safetensors"].sha256
    if damage == "truncated weights":
        os.truncate(entry / "model.safetensors", (entry / "model.safetensors").stat().st_size // 2)
        reason = "model.safetensors has"
    else:
        (entry / "config.json").unlink()
        reason = "config.json is missing"
    what = re.escape(f"target reference model (seed 0) {entry} is damaged: ")
    with pytest.warns(CacheWarning, match=what + reason):
        again = prepare_references(spec, bench, torch.device("cpu"), progress=False)
    assert again.target_source == str(entry) and entry_problem(entry) is None
    assert _digest(again.target) == _digest(clean.target) == _digest(load_pretrained(str(entry))[0])
    assert read_manifest(entry)["files"]["model.safetensors"].sha256 == weights_sha  # byte-identical file
    assert _digest(again.retain) == _digest(clean.retain)  # the sound retain entry is reused as is
    assert _scratch_left(entry.parent) == []


def test_an_entry_of_an_older_harness_is_rebuilt(cold: tuple[JobSpec, Any, Any]) -> None:
    spec, bench, clean = cold
    entry = Path(clean.retain_source)
    (entry / MANIFEST_NAME).unlink()
    (entry / "done.json").write_text("{}")  # what the previous layout marked a finished entry with
    with pytest.warns(CacheWarning, match="has no manifest.json"):
        again = prepare_references(spec, bench, torch.device("cpu"), progress=False)
    assert _digest(again.retain) == _digest(clean.retain) and not (entry / "done.json").exists()
