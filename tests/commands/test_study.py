"""`harness study` without training: seed statistics against direct scipy calls, the matched-utility selection on
hand-made trial tables, equal budgets, fresh confirmation seeds, the study spec and its plan, and bad input."""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.cli import main
from harness.commands.study.confirm import compare_with_baselines, seed_values
from harness.commands.study.select import check_disjoint_seeds, check_equal_budgets, select_trials
from harness.commands.study.space import baselines, method_space
from harness.commands.study.spec import StudySpace, StudySpec, load_study
from harness.commands.study.write import study_frame, study_markdown, verdict
from harness.core.stats import bootstrap_interval, holm, paired_comparison

ROOT = Path(__file__).resolve().parents[2]
FORGET = [0.42, 0.11, 0.37, 0.29, 0.05]
BASE = [0.30, 0.02, 0.31, 0.10, 0.01]


# ---- statistics ---------------------------------------------------------------------------------------------


def test_bootstrap_interval_is_scipys_percentile_interval_clipped_to_the_range() -> None:
    ci = stats.bootstrap((np.array(FORGET),), np.mean, confidence_level=0.95, n_resamples=9999,
                         method="percentile", rng=np.random.default_rng(0)).confidence_interval
    s = bootstrap_interval(FORGET, 0.0, 1.0)
    assert (s.mean, s.low, s.high, s.n) == pytest.approx((np.mean(FORGET), ci.low, ci.high, 5))
    assert min(FORGET) <= s.low < s.mean < s.high <= max(FORGET)
    bca = stats.bootstrap((np.array(FORGET),), np.mean, confidence_level=0.95, n_resamples=9999, method="BCa",
                          rng=np.random.default_rng(0)).confidence_interval
    with_bca = bootstrap_interval(FORGET, method="BCa")
    assert (with_bca.low, with_bca.high) == pytest.approx((bca.low, bca.high))
    clipped = bootstrap_interval(FORGET, 0.0, 0.2)  # a range narrower than the values: the interval stays inside
    assert clipped.low == pytest.approx(ci.low) and clipped.high == pytest.approx(0.2)
    # A Student-t interval of the same values leaves [0, 1] (the reason for the bootstrap): mean - t sd/sqrt(n) < 0
    assert stats.t.interval(0.95, 2, loc=np.mean([0.01, 0.02, 0.6]), scale=stats.sem([0.01, 0.02, 0.6]))[0] < 0
    assert bootstrap_interval([0.01, 0.02, 0.6], 0.0, 1.0).low >= 0.01
    one, same, none = bootstrap_interval([0.3]), bootstrap_interval([0.2, 0.2]), bootstrap_interval([math.nan])
    assert one.n == 1 and math.isnan(one.low) and (same.low, same.high) == (0.2, 0.2) and none.n == 0


def test_paired_comparison_is_scipys_exact_sign_flip_test() -> None:
    a, b = np.array(FORGET), np.array(BASE)
    direct = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                    alternative="two-sided", n_resamples=9999, rng=np.random.default_rng(0),
                                    vectorized=True)
    c = paired_comparison(a, b)
    assert c.p == pytest.approx(direct.pvalue) and c.n == 5 and c.min_p == pytest.approx(2 / 32)
    # every difference positive: the smallest p 5 pairs allow, which is also the exact Wilcoxon signed-rank p
    assert c.p == pytest.approx(2 / 32) == pytest.approx(stats.wilcoxon(a, b, method="exact").pvalue)
    assert c.diff == pytest.approx(np.mean(a - b)) and c.low <= c.diff <= c.high
    mixed = paired_comparison([0.1, 0.5, 0.2, 0.4], [0.3, 0.1, 0.25, 0.2])
    direct = stats.permutation_test(([0.1, 0.5, 0.2, 0.4], [0.3, 0.1, 0.25, 0.2]),
                                    lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                                    alternative="two-sided", n_resamples=9999, rng=np.random.default_rng(0),
                                    vectorized=True)
    assert mixed.p == pytest.approx(direct.pvalue)
    assert paired_comparison([0.2, 0.3], [0.2, 0.3]).p == 1.0
    assert paired_comparison([0.2, math.nan, 0.4], [0.1, 0.5, 0.3]).n == 2  # a diverged seed leaves its pair out


def test_holm_adjustment() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, math.nan])[1])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


# ---- selection ----------------------------------------------------------------------------------------------


def _trials() -> pd.DataFrame:
    rows = [  # target utility 0.6, delta 0.1: the budget is utility >= 0.54
        ("a", "a1", 0.90, 0.30, False),  # best forget score but outside the budget
        ("a", "a2", 0.40, 0.55, False),  # inside, best inside
        ("a", "a3", 0.40, 0.50, False),  # same score, outside
        ("a", "a4", 0.20, 0.60, False),
        ("a", "a5", 0.95, 0.70, True),   # diverged: never inside
        ("b", "b1", 0.80, 0.20, False),  # no trial of b inside the budget
        ("b", "b2", 0.10, 0.40, False),
        ("c", "c1", math.nan, math.nan, True),
        ("d", "d1", 0.30, 0.58, False),  # tie on the score: the higher utility wins
        ("d", "d2", 0.30, 0.62, False),
    ]
    return pd.DataFrame(rows, columns=["method", "trial_id", "forget_score", "utility", "diverged"])


def test_selection_takes_the_best_forget_score_inside_the_utility_budget() -> None:
    out = select_trials(_trials(), target_utility=0.6, delta=0.1, mode="max").set_index("trial_id")
    assert out.loc[["a2", "a4", "d1", "d2"], "inside_budget"].all()
    assert not out.loc[["a1", "a3", "a5", "b1", "b2", "c1"], "inside_budget"].any()
    assert sorted(out.index[out["selected"]]) == ["a2", "b2", "d2"]
    # no trial of b inside: its highest-utility trial is kept for confirmation, flagged outside, not dropped
    assert not out.loc["b2", "inside_budget"]
    assert not out.loc[out.index.str.startswith("c"), "selected"].any()  # all diverged: none selected
    low = select_trials(_trials(), target_utility=0.6, delta=0.1, mode="min").set_index("trial_id")
    assert sorted(low.index[low["selected"]]) == ["a4", "b2", "d2"]
    loose = select_trials(_trials(), target_utility=0.6, delta=0.9, mode="max").set_index("trial_id")
    assert loose.loc["a1", "selected"] and loose.loc["b1", "selected"]
    with pytest.raises(ValueError, match="mode"):
        select_trials(_trials(), 0.6, 0.1, "up")


def _frame(n_a: int = 2, steps_b: int = 40) -> pd.DataFrame:
    trials = pd.DataFrame({"method": ["a"] * n_a + ["b"] * 2, "trial_id": [f"t{i}" for i in range(n_a + 2)],
                           "kind": "trial", "n_trials": 2, "steps_budget": [40] * n_a + [steps_b] * 2,
                           "search_seeds": "0"})
    return trials


def test_equal_budgets_are_checked() -> None:
    check_equal_budgets(_frame())
    with pytest.raises(ValueError, match="unequal"):
        check_equal_budgets(_frame(n_a=3))
    with pytest.raises(ValueError, match="unequal"):
        check_equal_budgets(_frame(steps_b=20))


def test_confirmation_seeds_are_disjoint_from_search_seeds(tmp_path: Path) -> None:
    check_disjoint_seeds([0], [100, 101])
    with pytest.raises(ValueError, match="fresh"):
        check_disjoint_seeds([0, 100], [100, 101])
    with pytest.raises(ValueError, match="disjoint"):
        StudySpec(job="x.yaml", search_seeds=[0, 1], confirm_seeds=[1, 2])
    spec = tmp_path / "s.yaml"
    spec.write_text(f"job: {ROOT / 'jobs/quickstart.yaml'}\nsearch_seeds: [3]\nconfirm_seeds: [3, 4]\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["study", str(spec), "--dry-run"]) == 2
    assert "confirm_seeds must be disjoint" in err.getvalue() and str(spec) in err.getvalue()


# ---- spec, spaces, plan ---------------------------------------------------------------------------------------


def test_default_study_gives_every_method_the_same_steps_and_its_own_space() -> None:
    study, job = load_study(ROOT / "jobs/study_quickstart.yaml")
    assert [m.name for m in job.methods] == ["gd_lora", "gd_sine", "gd_tanh", "gd_clip", "npo_lora", "npo_sine",
                                             "npo_tanh", "npo_clip"]
    assert {m.train.max_steps for m in job.methods} == {study.steps} and study.trials >= 8
    assert len(study.confirm_seeds) == 5 and not set(study.confirm_seeds) & set(study.search_seeds)
    spaces = {m.name: method_space(m, study.space) for m in job.methods}
    assert all(s["train.lr"] == {"loguniform": [1e-3, 3e-2]} for s in spaces.values())  # the study's override
    assert "adapter.omega" in spaces["gd_sine"] and "adapter.clip_value" in spaces["npo_clip"]
    assert set(spaces["gd_lora"]) == {"train.lr", "objective.w_retain"}
    assert "objective.beta" in spaces["npo_tanh"] and "objective.beta" not in spaces["gd_tanh"]
    assert baselines(job.methods, {}) == {"gd_lora": None, "gd_sine": "gd_lora", "gd_tanh": "gd_lora",
                                          "gd_clip": "gd_lora", "npo_lora": None, "npo_sine": "npo_lora",
                                          "npo_tanh": "npo_lora", "npo_clip": "npo_lora"}
    vision, vjob = load_study(ROOT / "jobs/study_vision.yaml")
    assert baselines(vjob.methods, vision.baseline)["salun_lora"] == "gd_lora"
    assert "objective.fraction" in method_space(vjob.methods[-1], vision.space)
    override = StudySpace(methods={"gd_sine": {"adapter.omega": {"choice": [10, 100]}}})
    assert method_space(job.methods[1], override)["adapter.omega"] == {"choice": [10, 100]}


def test_a_job_spec_is_a_study_with_defaults_and_plans_offline_at_8b() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["study", str(ROOT / "jobs/tofu_llama31_8b.yaml"), "--dry-run"]) == 0
    text = out.getvalue()
    assert "8 trials x 1 search seed(s)" in text and "5 confirmation seeds" in text
    hours = float(text.split("scoring not included): ~")[1].split()[0])
    assert hours > 1.0  # 8B parameters: GPU-hours, not seconds
    assert "memory per device in GiB" in text  # the job's memory plan (harness.plan)


def test_bad_study_yaml_and_fields_exit_2_naming_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: x.yaml\ntrials: [1,\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["study", str(bad)]) == 2
    assert str(bad) in err.getvalue() and "line" in err.getvalue()
    field = tmp_path / "field.yaml"
    field.write_text(f"job: {ROOT / 'jobs/quickstart.yaml'}\ntrials: 0\n")
    space = tmp_path / "space.yaml"
    space.write_text("params:\n  train.lr: {normal: [0, 1]}\n")
    for args, needle in ((["study", str(field)], "trials"),
                         (["study", str(ROOT / "jobs/study_quickstart.yaml"), "--space", str(space)], "train.lr")):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(args) == 2
        assert needle in err.getvalue()


def test_submit_sends_a_study_as_harness_study(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.commands.submit as submit

    sent: dict[str, object] = {}

    class Client:
        def submit_job(self, **kwargs: object) -> str:
            sent.update(kwargs)
            return str(kwargs["submission_id"])

    monkeypatch.setattr(submit, "_client", lambda address, job_id=None: contextlib.nullcontext(Client()))
    monkeypatch.chdir(ROOT)
    submit.submit_job("jobs/study_quickstart.yaml", "http://127.0.0.1:1", out="/shared/study", stream=io.StringIO())
    assert sent["entrypoint"] == "python -m harness.cli study jobs/study_quickstart.yaml --out /shared/study"


# ---- confirmation table and study.md ------------------------------------------------------------------------


def test_confirmation_comparison_and_verdict_come_from_the_numbers() -> None:
    from harness.benchmarks.base import MatchedUtility

    matched = MatchedUtility(utility=("all", "model_utility"), forget=(("forget10", "forget_quality"),), goal="max")
    metrics = pd.DataFrame([
        *({"method": m, "seed": s, "split": "forget10", "metric": "forget_quality", "value": v}
          for m, vals in (("lora", BASE), ("sine", FORGET)) for s, v in zip(range(100, 105), vals, strict=True)),
        *({"method": m, "seed": s, "split": "all", "metric": "model_utility", "value": 0.5}
          for m in ("lora", "sine") for s in range(100, 105)),
        {"method": "retain", "seed": 0, "split": "all", "metric": "model_utility", "value": 0.6}])
    per_seed = seed_values(metrics, matched, ["lora", "sine"])
    assert per_seed[per_seed["method"] == "sine"]["forget_score"].tolist() == pytest.approx(FORGET)
    table = compare_with_baselines(per_seed, {"lora": None, "sine": "lora"}, matched)
    sine = table.set_index("method").loc["sine"]
    assert sine["p"] == pytest.approx(paired_comparison(FORGET, BASE).p) and sine["p_holm"] == pytest.approx(sine["p"])
    assert sine["interval_favours"] == "method" and not sine["better"]  # 5 seeds: p >= 1/16 > 0.05
    text = verdict(table, matched, 0.1)
    assert "sine's" in text and "0 of 1" in text and "cannot go below p = 0.0625" in text and "favour for sine" in text
    trials = select_trials(pd.DataFrame({"method": ["lora", "sine"], "trial_id": ["t1", "t2"],
                                         "forget_score": [0.1, 0.2], "utility": [0.6, 0.6], "diverged": False,
                                         "config/train.lr": [1e-3, 2e-3]}), 0.6, 0.1, "max")
    study = StudySpec(job="x.yaml", name="toy", trials=1, steps=10, confirm_seeds=list(range(100, 105)))
    frame = study_frame(study, trials, per_seed, 0.6, 0.6)
    check_equal_budgets(frame)
    assert set(frame["kind"]) == {"trial", "confirm"} and (frame["steps_budget"] == 10).all()
    assert frame[frame["kind"] == "confirm"]["config/train.lr"].dropna().tolist() == [1e-3] * 5 + [2e-3] * 5
    md = study_markdown(study, "toy", matched, trials, table, 0.6, 0.6)
    assert "| sine | lr=0.002 | yes | 1/1 |" in md and "**Verdict.**" in md
