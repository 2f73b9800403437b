"""The demo as a user runs it, `harness run jobs/quickstart.yaml` (two of its seeds, half its steps to keep the
suite short; the `demo` fixture of tests/e2e/conftest.py), and again: the second run reuses the cached references."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.results.contract import unattacked

pytestmark = pytest.mark.e2e


def test_table_compares_both_methods_and_references(demo: Path) -> None:
    summary = (demo / "run1" / "summary.md").read_text()
    for needle in ("| target |", "| retain |", "| gd_lora | 2 |", "| gd_sine | 2 |", "| gd_clip | 2 |",
                   "forget quality", "model utility", "forget ROUGE-L", "forget truth ratio", "max grad norm",
                   "diverged", "95% percentile bootstrap"):
        assert needle in summary, needle


def test_target_memorised_and_retain_model_did_not(demo: Path) -> None:
    m = unattacked(pd.read_parquet(demo / "run1" / "metrics.parquet")).set_index(["method", "split", "metric"])["value"]
    assert m[("target", "forget10", "rouge_l_recall")] > 0.9
    assert m[("retain", "forget10", "prob")] < 0.2 < m[("target", "forget10", "prob")]
    assert m[("target", "forget10", "forget_quality")] < 0.05  # the target is distinguishable from retain


def test_the_bounds_hold_and_lora_grows_past_them(demo: Path) -> None:
    log = pd.read_parquet(demo / "run1" / "train_log.parquet")
    peak = log.groupby(["method", "seed"])["adapter_norm"].max()
    # tiny-llama: 4 layers x (gate, up: 384x128; down: 128x384), alpha/r = 2, g = sqrt(d_in); clip: |dW| <= 2c
    cap = math.sqrt(4 * (2 * (2 / math.sqrt(128)) ** 2 * 384 * 128 + (2 / math.sqrt(384)) ** 2 * 128 * 384))
    clip_cap = 2 * 0.01 * math.sqrt(4 * 3 * 384 * 128)
    for seed in (0, 1):
        assert peak[("gd_sine", seed)] <= cap + 1e-6 and peak[("gd_clip", seed)] <= clip_cap + 1e-6
        assert peak[("gd_lora", seed)] > cap  # in every seed


def test_second_run_skips_reference_training_and_matches(demo: Path,
                                                          demo_args: Callable[[Path, str], list[str]]) -> None:
    args = demo_args(demo, "run2")
    # The references are the same whatever the methods: one method, one seed and two steps suffice.
    assert main([*args, "--set", "train.max_steps=2", "--set", "seeds=[0]",
                 "--set", "methods=[{name: gd_sine, adapter: {bound: sine, rank: 8, alpha: 16, omega: 100}}]"]) == 0
    first = json.loads((demo / "run1" / "env.json").read_text())["timings_s"]["references_s"]
    second = json.loads((demo / "run2" / "env.json").read_text())["timings_s"]["references_s"]
    assert second < first / 5
    a = pd.read_parquet(demo / "run1" / "metrics.parquet")
    b = pd.read_parquet(demo / "run2" / "metrics.parquet")
    ref_a, ref_b = (df[df["method"].isin(["target", "retain"])].reset_index(drop=True) for df in (a, b))
    pd.testing.assert_frame_equal(ref_a[["method", "split", "metric"]], ref_b[["method", "split", "metric"]])
    assert ref_a["value"].to_numpy() == pytest.approx(ref_b["value"].to_numpy(), rel=1e-6)


def test_the_light_default_attack_quantizes_every_model_after_the_main_table(demo: Path) -> None:
    m = pd.read_parquet(demo / "run1" / "metrics.parquet")
    q = m[m["attack"] == "quantize"]
    assert set(q["attack_variant"]) == {"int4"} and set(q["method"]) == {"target", "retain", "gd_lora", "gd_sine",
                                                                         "gd_clip"}
    assert set(q[q["method"] == "gd_sine"]["seed"]) == {0, 1}
    rec = q[(q["metric"] == "recovery") & (q["method"] == "gd_sine")]["value"]
    assert len(rec) == 2 and rec.notna().all()
    summary = (demo / "run1" / "summary.md").read_text()
    assert summary.index("| gd_clip | 2 |") < summary.index("## After attack") < summary.index("quantize int4")
