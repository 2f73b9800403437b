"""A tiny job to attack in this process: synthetic TOFU (10 authors), the hand-made run's models."""

from __future__ import annotations

import datetime as dt
import types
from pathlib import Path
from typing import Any

import pytest
import torch


def attack_spec(tmp: Path, attacks: dict[str, Any], workers: int = 1) -> Any:
    """A job spec over the hand-made models with `attacks` (spec data) and `eval.workers`."""
    from harness.spec import JobSpec

    return JobSpec.model_validate({
        "name": "attacked", "out": str(tmp / "out"), "methods": [{"name": "gd_sine"}],
        "benchmark": {"name": "tofu", "data_dir": str(tmp / "data"),
                      "synthetic": {"n_authors": 10, "n_real_authors": 2, "n_world_facts": 2}},
        "eval": {"batch_size": 8, "max_new_tokens": 4, "bootstrap": 0, "workers": workers},
        "resources": {"device": "cpu"}, "tracking": None, "attacks": attacks})


def attack_context(spec: Any, hand_made_run: Any, out: Path) -> Any:
    """(JobContext, sources, scores, metric rows) of the hand-made target, retain and gd_sine, scored unattacked."""
    from harness.benchmarks import load_benchmark
    from harness.models.text import load_pretrained
    from harness.pipeline.context import JobContext, ScoredModel
    from harness.pipeline.score import score_all
    from harness.pipeline.write import aggregate_all
    from harness.train.reference import References

    bench = load_benchmark(spec.benchmark)
    target, _ = load_pretrained(str(hand_made_run.target_dir))
    retain, _ = load_pretrained(str(hand_made_run.retain_dir))
    refs = {0: References(hand_made_run.tokenizer, target.eval(), retain.eval(), str(hand_made_run.target_dir),
                          str(hand_made_run.retain_dir))}
    out.mkdir(parents=True, exist_ok=True)
    ctx = JobContext(spec, out, torch.device("cpu"), bench, refs, dt.datetime.now(dt.UTC))
    sources = {("target", 0): ScoredModel(str(hand_made_run.target_dir)),
               ("retain", 0): ScoredModel(str(hand_made_run.retain_dir)),
               ("gd_sine", 0): ScoredModel(str(hand_made_run.target_dir),
                                           hand_made_run.run_dir / "checkpoints" / "gd_sine")}
    one = spec.model_copy(update={"eval": spec.eval.model_copy(update={"workers": 1})})
    scores = score_all(bench, refs, sources, one, ctx.device)
    rows = aggregate_all(bench, scores, spec, [0], ["gd_sine"], [0])
    return types.SimpleNamespace(ctx=ctx, sources=sources, scores=scores, rows=rows, bench=bench, refs=refs)


@pytest.fixture
def tiny_job(tmp_path: Path, hand_made_run: Any) -> Any:
    """Builds the tiny job for an `attacks` section: `tiny_job(attacks, workers=1)`."""
    def build(attacks: dict[str, Any], workers: int = 1) -> Any:
        spec = attack_spec(tmp_path, attacks, workers)
        return attack_context(spec, hand_made_run, tmp_path / "out")
    return build
