"""The vision quick job end to end on the embedded default (digits, tiny ViT), two seeds, short runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.results.contract import unattacked

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("vision")
    args = ["run", str(ROOT / "jobs/vision_quick.yaml"), "--out", str(tmp / "out"),
            "--set", f"reference.cache_dir={tmp / 'cache'}", "--set", f"benchmark.data_dir={tmp / 'data'}",
            "--set", "seeds=[0, 1]", "--set", "reference.train.epochs=8", "--set", "train.max_steps=6",
            "--set", "benchmark.max_test_per_class=20", "--set", "attacks.relearn.steps=2",
            "--set", "attacks.relearn.benign=false", "--set", "attacks.quantize.schemes=[int4]"]
    assert main(args) == 0
    return tmp / "out"


def test_every_model_is_scored_with_salun_metrics(run: Path) -> None:
    m = unattacked(pd.read_parquet(run / "metrics.parquet"))
    expected = {"ua", "ra", "ta", "accuracy", "mia_efficacy", "avg_gap", "forget_quality", "model_utility"}
    for method in ("target", "retain", "gd_lora", "gd_sine", "gd_tanh", "gd_clip"):
        assert expected <= set(m[m["method"] == method]["metric"]), method
    assert set(m[m["method"] == "gd_sine"]["seed"]) == {0, 1}
    target = m[m["method"] == "target"].set_index(["split", "metric"])["value"]
    assert target[("forget", "ua")] < 0.5 < target[("retain", "ra")]  # the target learned every class
    retain = m[m["method"] == "retain"].set_index(["split", "metric"])["value"]
    assert retain[("test_forget", "accuracy")] == 0.0  # the retrain model never saw class 0


def test_aggregates_recompute_from_the_per_image_rows(run: Path) -> None:
    ex = unattacked(pd.read_parquet(run / "examples.parquet"))
    m = unattacked(pd.read_parquet(run / "metrics.parquet"))
    for seed in (0, 1):
        rows = ex[(ex["method"] == "gd_sine") & (ex["seed"] == seed) & (ex["split"] == "forget")]
        correct = rows[rows["metric"] == "correct"]["value"]
        ua = m[(m["method"] == "gd_sine") & (m["seed"] == seed) & (m["metric"] == "ua")]["value"].item()
        assert ua == pytest.approx(1 - correct.mean())


def test_summary_and_plots(run: Path) -> None:
    summary = (run / "summary.md").read_text()
    for needle in ("| UA |", "| RA |", "| TA |", "MIA-efficacy", "avg gap to retrain", "| gd_sine | 2 |"):
        assert needle in summary, needle
    for plot in ("training.png", "metrics.png", "per_class.png"):
        assert (run / "plots" / plot).stat().st_size > 1000, plot
    assert (run / "checkpoints" / "gd_sine" / "seed1" / "adapter_model.safetensors").is_file()


def test_relearn_and_quantize_attack_every_model(run: Path) -> None:
    m = pd.read_parquet(run / "metrics.parquet")
    a = m[m["attack"].notna()]
    assert set(zip(a["attack"], a["attack_variant"], strict=True)) == {
        ("relearn", "step@0"), ("relearn", "forget@1"), ("relearn", "forget@2"), ("quantize", "int4")}
    assert {"target", "retain", "gd_sine", "salun_sine"} <= set(a["method"])
    relearned = a[(a["attack"] == "relearn") & (a["method"] == "gd_sine") & (a["metric"] == "ua")]
    assert len(relearned) == 3 * 2 and relearned["value"].between(0, 1).all()
    ex = pd.read_parquet(run / "examples.parquet")
    trained_on = set(ex[(ex["attack"].isna()) & (ex["split"] == "forget")]["example_id"])
    scored = set(ex[(ex["attack"] == "relearn") & (ex["split"] == "forget")]["example_id"])
    assert scored and len(scored) < len(trained_on) / 2 + 1  # only the held-back half of the forget images
    assert "## After attack" in (run / "summary.md").read_text()
