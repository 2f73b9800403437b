"""`harness sweep` end to end: a 2x2 grid (bound x learning rate) over two seeds of a tiny job, one worker group."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    job = {
        "name": "tiny", "seeds": [0, 1],
        "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4},
                      "data_dir": str(tmp / "data")},
        "reference": {"cache_dir": str(tmp / "cache"), "train": {"epochs": 2, "batch_size": 16}},
        "train": {"max_steps": 2, "batch_size": 4},
        "eval": {"max_new_tokens": 8, "bootstrap": 0},
        "methods": [{"name": "gd", "adapter": {"bound": "none"}}],
    }
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    (tmp / "space.yaml").write_text(yaml.safe_dump({"grid": {"adapter.bound": ["none", "sine"],
                                                             "train.lr": [1e-3, 1e-2]}}))
    assert main(["sweep", str(tmp / "job.yaml"), "--space", str(tmp / "space.yaml"), "--out", str(tmp / "out")]) == 0
    return tmp / "out"


def test_one_row_per_configuration_and_seed(swept: Path) -> None:
    table = pd.read_parquet(swept / "sweep.parquet")
    assert len(table) == 4 * 2 and set(table["seed"]) == {0, 1}
    assert set(zip(table["adapter.bound"], table["train.lr"], strict=True)) == {
        ("none", 1e-3), ("none", 1e-2), ("sine", 1e-3), ("sine", 1e-2)}
    metrics = pd.read_parquet(swept / "tiny" / "metrics.parquet")
    for _, row in table.iterrows():
        fq = metrics[(metrics["method"] == row["method"]) & (metrics["seed"] == row["seed"])
                     & (metrics["metric"] == "forget_quality")]["value"].item()
        assert row["forget10/forget_quality"] == pytest.approx(fq)
    assert (table["max_grad_norm"] > 0).all()


def test_table_and_plots(swept: Path) -> None:
    md = (swept / "sweep.md").read_text()
    assert "4 configurations x 2 seeds" in md and md.count("| tiny |") == 4 and " [" in md
    for name in ("curves.png", "tradeoff.png"):
        assert (swept / "plots" / name).stat().st_size > 1000
