"""All four attacks on a tiny job end to end: `harness run` scores them on two Ray scoring workers, `harness eval`
of the same model on one worker gives the same rows, and the report has its tables and plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]
TINY = ["seeds=[0]", "methods=[{name: gd_sine, adapter: {bound: sine}}]", "train.max_steps=2",
        "reference.train.epochs=2", "benchmark.synthetic.n_authors=10", "benchmark.synthetic.n_real_authors=2",
        "benchmark.synthetic.n_world_facts=2", "eval.max_new_tokens=4", "eval.bootstrap=0", "tracking=null",
        "attacks.relearn.enabled=true", "attacks.relearn.steps=2", "attacks.relearn.benign=false",
        "attacks.quantize.schemes=[int4, nf4]", "attacks.rephrase.enabled=true",
        "attacks.rephrase.forms=[paraphrased, few_shot]", "attacks.mia.enabled=true"]
KEY = ["attack", "attack_variant", "split", "metric"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("attacks")
    common = [str(ROOT / "jobs/quickstart.yaml")]
    for o in [*TINY, f"reference.cache_dir={tmp / 'cache'}", f"benchmark.data_dir={tmp / 'data'}"]:
        common += ["--set", o]
    assert main(["run", *common, "--out", str(tmp / "run"), "--set", "eval.workers=2"]) == 0
    assert main(["eval", *common, "--out", str(tmp / "ev"), "--workers", "1",
                 "--model", f"ours={tmp / 'run'},method=gd_sine"]) == 0
    return {"run": tmp / "run", "ev": tmp / "ev"}


def _attacked(out: Path, method: str) -> pd.Series:
    m = pd.read_parquet(out / "metrics.parquet")
    m = m[(m["method"] == method) & m["attack"].notna()]
    return m.set_index(KEY)["value"].sort_index()


def test_every_attack_scores_the_same_on_two_workers_and_on_one(runs: dict[str, Path]) -> None:
    two, one = _attacked(runs["run"], "gd_sine"), _attacked(runs["ev"], "ours")
    assert set(two.index.get_level_values("attack")) == {"relearn", "quantize", "rephrase", "mia"}
    assert list(two.index) == list(one.index)
    pd.testing.assert_series_equal(two, one, check_exact=False, rtol=0, atol=1e-9)
    for ref in ("target", "retain"):  # the references are attacked too, in both commands
        pd.testing.assert_series_equal(_attacked(runs["run"], ref), _attacked(runs["ev"], ref), rtol=0, atol=1e-9)


def test_report_and_examples(runs: dict[str, Path]) -> None:
    summary = (runs["run"] / "summary.md").read_text()
    for needle in ("## After attack", "relearn forget@2", "quantize nf4", "rephrase paraphrased",
                   "## Membership inference", "min_k_plus_plus", "gradnorm"):
        assert needle in summary, needle
    assert (runs["run"] / "plots" / "recovery.png").stat().st_size > 1000
    ex = pd.read_parquet(runs["run"] / "examples.parquet")
    relearned = ex[(ex["attack"] == "relearn") & (ex["method"] == "gd_sine")]
    assert relearned["example_id"].nunique() == 2  # 4 forget questions: 2 fine-tuned on, the other 2 scored
    assert not (runs["run"] / ".attacks").exists()
