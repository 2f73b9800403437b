"""The attacks on a tiny job in this process: relearning with 0 steps is no attack and never scores what it trains
on; every attack's rows carry the attack columns; the after-attack report."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from harness.attacks.relearn import forget_split
from harness.attacks.runner import attack_section
from harness.pipeline.attacks import attack_job, write_attack_report
from harness.pipeline.score import score_all
from harness.results.contract import unattacked

pytestmark = pytest.mark.usefixtures("one_thread")


def _examples(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows).set_index(["split", "example_id", "metric"])["value"].sort_index()


def test_relearn_split_is_disjoint_and_checked(tiny_job: Any) -> None:
    job = tiny_job({})
    bench = job.bench
    train, scored = forget_split(bench, 0.5, seed=3)
    assert set(train).isdisjoint(scored) and sorted(train + scored) == list(range(len(bench.forget_keys())))
    view = bench.restrict_forget(scored, forget_only=True)
    keys = bench.forget_keys()
    assert view.scored_forget_keys() == [keys[i] for i in scored]
    assert set(view.data.eval_splits) == {bench.spec.forget_split}

    class Leaky(type(bench)):  # a benchmark whose view keeps every forget example
        def restrict_forget(self, keep: Any, forget_only: bool = False) -> Any:
            return self

    leaky = bench.__class__.__new__(Leaky)
    leaky.__dict__.update(bench.__dict__)
    with pytest.raises(RuntimeError, match="also fine-tuned on"):
        forget_split(leaky, 0.5, seed=3)


def test_relearn_with_zero_steps_equals_no_attack(tiny_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.pipeline.attacks as pipeline_side

    seen: list[Any] = []

    def spy(model: Any, processor: Any, examples: Any, **kw: Any) -> Any:
        seen.extend(examples)
        return finetune(model, processor, examples, **kw)

    finetune = pipeline_side.finetune
    monkeypatch.setattr(pipeline_side, "finetune", spy)
    job = tiny_job({"relearn": {"enabled": True, "steps": 0, "benign": False, "fraction": 0.5}})
    out = attack_job(job.ctx, job.sources, job.scores, job.rows)
    train, scored = forget_split(job.bench, 0.5, seed=0)
    view = job.bench.restrict_forget(scored, forget_only=True)
    # what it fine-tunes on (3 models x the same forget examples) is never among the questions it scores
    questions = view.scored_forget_keys()
    assert len(seen) == 3 * len(train) and not any(q in prompt for prompt, _ in seen for q in questions)
    plain = score_all(view, job.refs, {("gd_sine", 0): job.sources[("gd_sine", 0)]}, job.ctx.spec, job.ctx.device)
    mine = [r for r in out.example_rows if r["method"] == "gd_sine" and r["attack_variant"] == "step@0"]
    assert len(mine) == 3 * len(scored)  # prob, truth_ratio, rouge per held-back example, nothing else
    pd.testing.assert_series_equal(_examples(mine), _examples(plain[("gd_sine", 0)].examples), check_exact=True)
    # the relearned model's own recovery is 0 at step 0, and its metric rows are the view's
    rec = [r for r in out.metric_rows if r["method"] == "gd_sine" and r["metric"] == "recovery"]
    assert [r["value"] for r in rec] == [0.0]
    assert not (job.ctx.out / ".attacks").exists()  # scratch models removed once scored


def test_every_attack_adds_tagged_rows_and_a_report(tiny_job: Any) -> None:
    job = tiny_job({"relearn": {"enabled": True, "steps": 2}, "quantize": {"enabled": True},
                    "rephrase": {"enabled": True, "shots": 2}, "mia": {"enabled": True}})
    out = attack_job(job.ctx, job.sources, job.scores, job.rows)
    df = pd.DataFrame(out.metric_rows)
    assert set(df["attack"]) == {"relearn", "quantize", "rephrase", "mia"}
    assert df[["attack_variant", "attack_params", "benchmark"]].notna().all().all()
    variants = df.groupby("attack")["attack_variant"].apply(set).to_dict()
    assert variants["relearn"] == {"step@0", "forget@1", "forget@2", "benign@1", "benign@2"}
    assert variants["quantize"] == {"int8", "int4", "nf4"}
    assert variants["rephrase"] == {"paraphrased", "template", "few_shot"}
    mia = df[df["attack"] == "mia"]
    assert set(mia["metric"]) == {f"mia_{s}" for s in ("loss", "zlib", "min_k", "min_k_plus_plus", "reference",
                                                        "gradnorm")}
    assert mia["value"].between(0, 1).all()
    assert (mia[(mia["method"] == "retain") & (mia["metric"] == "mia_reference")]["value"] == 0.5).all()
    # recovery: defined for the unlearned model and retain, never for target
    rec = df[df["metric"] == "recovery"]
    assert set(rec["method"]) == {"gd_sine", "retain"}
    # quantized models are scored on every split, with forget quality against the retain model
    q = df[(df["attack"] == "quantize") & (df["method"] == "gd_sine")]
    assert {"forget_quality", "model_utility", "prob"} <= set(q["metric"])
    metrics = pd.concat([pd.DataFrame(job.rows), df])
    metrics["benchmark"] = "tofu"
    assert len(unattacked(metrics)) == len(job.rows)
    text = attack_section(metrics, job.bench, ["target", "retain", "gd_sine"])
    assert "## After attack" in text and "quantize int4" in text and "relearn forget@2" in text
    assert "relearn forget@1" not in text  # intermediate points are in the plot and the parquet only
    assert "## Membership inference" in text
    summary = write_attack_report(job.ctx.out, "# title\n", metrics, job.bench, ["target", "retain", "gd_sine"])
    assert summary.startswith("# title\n\n## After attack") and "![recovery curves](plots/recovery.png)" in summary
    assert (job.ctx.out / "summary.md").read_text() == summary
    assert (job.ctx.out / "plots" / "recovery.png").stat().st_size > 1000


def test_relearn_with_a_fresh_lora_starts_at_the_model_and_moves_it(tiny_job: Any) -> None:
    full = tiny_job({"relearn": {"enabled": True, "steps": 0, "benign": False}})
    lora = tiny_job({"relearn": {"enabled": True, "steps": 2, "benign": False, "params": "lora", "lr": 0.05}})
    a = attack_job(full.ctx, full.sources, full.scores, full.rows)
    b = attack_job(lora.ctx, lora.sources, lora.scores, lora.rows)

    def rows(out: Any, variant: str) -> pd.Series:
        return _examples([r for r in out.example_rows if r["method"] == "gd_sine" and r["attack_variant"] == variant])

    pd.testing.assert_series_equal(rows(b, "step@0"), rows(a, "step@0"), check_exact=True)  # B = 0: no change
    assert not rows(b, "forget@2").equals(rows(b, "step@0"))
    assert '"params":"lora"' in next(r["attack_params"] for r in b.metric_rows if r["attack"] == "relearn")
