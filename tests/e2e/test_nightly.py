"""`harness nightly` end to end on a suite of one tiny real job: baseline, unchanged rerun, injected regression."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.commands.nightly import read_history

pytestmark = pytest.mark.e2e


def tiny_job(tmp: Path) -> dict:
    """One method, two seeds, two training steps, short generations: about a minute on 2 CPU cores."""
    return {
        "name": "tiny",
        "seeds": [0, 1],
        "benchmark": {"synthetic": {"n_authors": 10, "qa_per_author": 2, "n_real_authors": 4, "n_world_facts": 4},
                      "data_dir": str(tmp / "data")},
        "reference": {"cache_dir": str(tmp / "cache"), "train": {"epochs": 2, "batch_size": 16}},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3},
        "eval": {"max_new_tokens": 8, "bootstrap": 50},
        "methods": [{"name": "gd_sine", "adapter": {"bound": "sine"}}],
    }


@pytest.fixture(scope="module")
def nightly(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("nightly")
    (tmp / "tiny.yaml").write_text(yaml.safe_dump(tiny_job(tmp)))
    # The job is seeded, so an unchanged rerun reproduces its numbers; the built-in rules' tolerances
    # (bootstrap CI +- 0.02, 5% relative, 0.05 absolute on forget quality) leave room for float noise.
    suite = {"name": "e2e", "out": str(tmp / "runs"), "history": str(tmp / "history.parquet"),
             "baseline": {"mode": "pinned"}, "jobs": [{"spec": "tiny.yaml"}]}
    (tmp / "suite.yaml").write_text(yaml.safe_dump(suite))
    args = ["nightly", str(tmp / "suite.yaml")]
    codes = [main(args), main(args), main([*args, "--set", "methods.0.train.lr=1e30"])]
    runs = sorted((tmp / "runs").iterdir())
    return {"tmp": tmp, "codes": codes, "runs": runs}


def _comparison(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "comparison.parquet")


def test_first_run_becomes_the_baseline(nightly: dict) -> None:
    assert nightly["codes"][0] == 0
    first = _comparison(nightly["runs"][0])
    report = (nightly["runs"][0] / "nightly_report.md").read_text()
    assert set(first["status"]) == {"new"}, report[:1500]  # a failed job shows its error in the report head
    assert {"prob", "forget_quality", "model_utility", "diverged"} <= set(first["metric"])
    assert "no regressions" in report


def test_unchanged_rerun_is_not_flagged(nightly: dict) -> None:
    assert nightly["codes"][1] == 0
    second = _comparison(nightly["runs"][1])
    assert set(second["status"]) == {"ok"}
    assert second["delta"].abs().max() < 0.02  # seeded: the rerun reproduces the numbers


def test_injected_divergence_is_flagged_and_exits_1(nightly: dict) -> None:
    assert nightly["codes"][2] == 1
    third = _comparison(nightly["runs"][2]).set_index(["method", "metric", "split"])
    assert third.loc[("gd_sine", "diverged", "train"), "status"] == "regression"
    assert third.loc[("gd_sine", "model_utility", "all"), "status"] == "missing"
    assert (third.xs("target", level="method")["status"] == "ok").all()   # references unchanged
    md = (nightly["runs"][2] / "nightly_report.md").read_text()
    assert md.index("| tiny | gd_sine | tofu | train | diverged |") < md.index("## All metrics")
    assert "data:image/png;base64," in (nightly["runs"][2] / "nightly_report.html").read_text()


def test_history_holds_every_run_with_its_commit(nightly: dict) -> None:
    hist = read_history(nightly["tmp"] / "history.parquet")
    assert hist["run_id"].nunique() == 3
    assert set(hist["job"]) == {"tiny"}
    assert hist["git_commit"].notna().all()
