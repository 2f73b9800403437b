"""Finite-time Lyapunov exponents from twin distances (harness.render.sensitivity) and the seed-distribution test of
`harness report` (harness.core.stats.two_sample, harness.commands.report.seed_distribution_tests)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness.commands.report import seed_distribution_tests
from harness.core.stats import smallest_p, two_sample
from harness.render.sensitivity import COLUMNS, growth_window, lyapunov, metric_rows, summary_columns, threshold_step
from harness.render.tables import summary_stats
from harness.results.run_record import FinishedRun

STEPS = np.arange(100, dtype=float)


def test_exponential_distance_gives_its_rate() -> None:
    d = 1e-7 * np.exp(0.3 * STEPS)
    fit = lyapunov(STEPS, d, np.full_like(d, 1e30))  # never decorrelates: the window is the whole run
    assert fit.exponent == pytest.approx(0.3, rel=1e-9)
    assert fit.low == pytest.approx(0.3, rel=1e-9) and fit.high == pytest.approx(0.3, rel=1e-9)
    assert (fit.start, fit.end) == (0.0, 99.0)


def test_the_window_ends_where_the_distance_reaches_one_percent_of_the_signal() -> None:
    signal = np.full(100, 1.0)
    # exponential growth at 0.3 up to 1% of the signal, then slower (0.1) up to saturation above the signal
    d = 1e-7 * np.exp(0.3 * STEPS)
    at_1pct = int(np.ceil(np.log(1e5) / 0.3))  # 1e-7 e^{0.3 t} >= 0.01
    d[at_1pct + 1:] = d[at_1pct] * np.exp(0.1 * (STEPS[at_1pct + 1:] - at_1pct))
    d = np.minimum(d, 1.5)
    assert growth_window(d, signal) == (0, at_1pct)
    fit = lyapunov(STEPS, d, signal)
    assert fit.exponent == pytest.approx(0.3, rel=1e-6)
    assert fit.end == at_1pct
    assert threshold_step(STEPS, d, signal, 0.01) == at_1pct
    assert threshold_step(STEPS, d, signal, 1.0) == at_1pct + int(np.ceil(np.log(1 / d[at_1pct]) / 0.1))


def test_outlying_steps_do_not_move_the_robust_slope() -> None:
    d = 1e-7 * np.exp(0.2 * STEPS)
    d[[10, 40, 70]] *= 1e3  # three spikes
    assert lyapunov(STEPS, d, np.full_like(d, 1e30)).exponent == pytest.approx(0.2, rel=1e-9)


def test_linear_distance_gives_the_theil_sen_slope_of_its_log() -> None:
    d = 1e-7 * (1 + 2 * STEPS)  # linear growth: sub-exponential, the log's slope falls over the run
    fit = lyapunov(STEPS, d, np.full_like(d, 1e30))
    expected = stats.theilslopes(np.log(d), STEPS).slope
    assert fit.exponent == pytest.approx(expected, rel=1e-12)
    assert 0 < fit.exponent < 0.05  # far below an exponential's
    # its linear slope in distance is 2e-7 per step, and its log grows by ln(1 + 2t): at t = 99 by ln(199)
    assert np.log(d[-1] / d[0]) == pytest.approx(math.log(199))


def test_converging_twins_get_a_negative_exponent_over_the_whole_run() -> None:
    d = 1e-7 * np.exp(-0.1 * STEPS)  # largest at step 0: the window widens to the whole run
    assert growth_window(d, np.ones(100)) == (0, 99)
    assert lyapunov(STEPS, d, np.ones(100)).exponent == pytest.approx(-0.1, rel=1e-9)


def test_no_distance_gives_no_exponent_and_no_step() -> None:
    zeros = np.zeros(100)
    assert math.isnan(lyapunov(STEPS, zeros, np.ones(100)).exponent)
    assert math.isnan(threshold_step(STEPS, zeros, np.ones(100), 0.01))


def _log(method: str, seed: int, rate: float) -> pd.DataFrame:
    d = np.minimum(1e-7 * np.exp(rate * STEPS), 2.0)
    return pd.DataFrame({"method": method, "seed": seed, "step": STEPS.astype(int), "sens_adapter": d,
                         "sens_adapter_signal": 1.0, "sens_logits": d * 3, "sens_logits_signal": 10.0})


def test_metric_rows_per_run_and_their_summary_columns() -> None:
    log = pd.concat([_log("a", s, r) for s, r in ((0, 0.2), (1, 0.3), (2, 0.4))], ignore_index=True)
    rows = metric_rows(log)
    df = pd.DataFrame(rows)
    lam = df[df["metric"] == "lyapunov_exponent"].sort_values("seed")["value"].to_numpy()
    np.testing.assert_allclose(lam, [0.2, 0.3, 0.4], rtol=1e-6)
    lam_logits = df[df["metric"] == "lyapunov_exponent_logits"].sort_values("seed")["value"].to_numpy()
    np.testing.assert_allclose(lam_logits, [0.2, 0.3, 0.4], rtol=1e-6)
    assert set(df["split"]) == {"sensitivity"}
    assert [c.metric for c in summary_columns(df)] == [c.metric for c in COLUMNS]
    assert summary_columns(pd.DataFrame({"split": ["forget10"], "metric": ["x"]})) == []
    stats_df = summary_stats(df, pd.DataFrame(), COLUMNS[:1], ["a"])
    row = stats_df[stats_df["column"] == COLUMNS[0].label].iloc[0]
    assert row["mean"] == pytest.approx(0.3, rel=1e-6) and row["n"] == 3
    ci = stats.bootstrap((lam,), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                         rng=np.random.default_rng(0)).confidence_interval
    assert row["ci_low"] == pytest.approx(ci.low) and row["ci_high"] == pytest.approx(ci.high)


def test_no_twin_gives_no_rows() -> None:
    assert metric_rows(pd.DataFrame({"method": ["a"], "seed": [0], "step": [0], "loss": [1.0]})) == []


@pytest.mark.parametrize(("a", "b"), [([0.1, 0.35, 0.2], [0.4, 0.5, 0.45]),
                                      ([0.1, 0.5, 0.2], [0.4, 0.15, 0.45]),
                                      ([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0])])
def test_two_sample_is_scipys_mann_whitney(a: list[float], b: list[float]) -> None:
    direct = stats.mannwhitneyu(a, b, alternative="two-sided")
    got = two_sample(a, b)
    assert got.u == direct.statistic and got.p == direct.pvalue
    assert got.min_p == smallest_p(len(a), len(b))


def test_two_sample_verdicts_and_the_power_limit_of_three_seeds() -> None:
    assert smallest_p(3, 3) == pytest.approx(0.1)
    separated = two_sample([0.1, 0.35, 0.2], [0.4, 0.5, 0.45])
    assert separated.p == pytest.approx(0.1) and separated.verdict == "separated"
    assert two_sample([0.1, 0.5, 0.2], [0.4, 0.15, 0.45]).verdict == "no evidence"
    assert two_sample([1.0, 2, 3, 4, 5], [6.0, 7, 8, 9, 10]).verdict == "differ"
    same = two_sample([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert same.p == 1.0 and same.verdict == "no evidence"
    assert two_sample([1.0], [2.0, 3.0]).verdict == "too few seeds"
    assert two_sample([1.0, float("nan"), 2.0], [3.0, 4.0]).n_a == 2


def _run(label: str, values: dict[str, list[float]]) -> FinishedRun:
    rows = [{"method": m, "seed": s, "benchmark": "x", "split": "forget", "metric": "quality", "value": v,
             "ci_low": float("nan"), "ci_high": float("nan")} for m, vs in values.items() for s, v in enumerate(vs)]
    return FinishedRun(Path(label), {"benchmark": {"name": "no-such-benchmark"}}, {}, pd.DataFrame(rows),
                       pd.DataFrame(columns=["method", "seed", "step"]), label=label)


def test_report_tests_each_run_against_the_first() -> None:
    a = _run("w1", {"gd": [0.1, 0.35, 0.2], "gd_sine": [0.1, 0.5, 0.2]})
    b = _run("w2", {"gd": [0.4, 0.5, 0.45], "gd_sine": [0.4, 0.15, 0.45]})
    tests = seed_distribution_tests([a, b]).set_index(["method", "column"])
    row = tests.loc[("gd", "forget quality")]
    direct = stats.mannwhitneyu([0.1, 0.35, 0.2], [0.4, 0.5, 0.45], alternative="two-sided")
    assert row["p"] == direct.pvalue and row["U"] == direct.statistic
    assert (row["run A"], row["run B"], row["n A"], row["n B"]) == ("w1", "w2", 3, 3)
    assert row["mean A"] == pytest.approx(np.mean([0.1, 0.35, 0.2]))
    assert row["verdict"] == "separated" and row["smallest p"] == pytest.approx(0.1)
    assert tests.loc[("gd_sine", "forget quality"), "verdict"] == "no evidence"
    assert seed_distribution_tests([a]).empty


def test_sensitivity_is_off_by_default_and_validated() -> None:
    from harness.config import TrainSpec
    from harness.core.errors import SpecError
    from harness.spec import validate_spec

    assert TrainSpec().sensitivity is None
    spec = validate_spec({"train": {"sensitivity": {"epsilon": 0}}, "methods": [{"name": "a"}]})
    assert spec.methods[0].train.sensitivity is not None and spec.methods[0].train.sensitivity.epsilon == 0
    assert spec.methods[0].train.sensitivity.probe_batch == 8
    for bad, field in (({"epsilon": -1}, "epsilon"), ({"probe_batch": -1}, "probe_batch"),
                       ({"perturb": "layout"}, "perturb")):
        with pytest.raises(SpecError, match=field):
            validate_spec({"train": {"sensitivity": bad}, "methods": [{"name": "a"}]})
    for train, cause in (({"zero_stage": 3}, "zero_stage 0-2"), ({"checkpoint_every": 5}, "checkpoint_every")):
        with pytest.raises(SpecError, match=cause):
            validate_spec({"train": {"sensitivity": {}, **train}, "methods": [{"name": "a"}]})


def test_the_plot_draws_identical_twins_and_growing_ones(tmp_path: Path) -> None:
    from harness.render.sensitivity import plot_sensitivity

    grown = _log("a", 0, 0.3)
    zero = grown.assign(method="b", sens_adapter=0.0, sens_logits=0.0)  # epsilon 0: identical twins
    assert plot_sensitivity(zero, tmp_path / "zero.png") is not None and (tmp_path / "zero.png").stat().st_size
    assert plot_sensitivity(pd.concat([grown, zero]), tmp_path / "both.png") is not None
    assert plot_sensitivity(pd.DataFrame({"method": ["a"], "seed": [0], "step": [0]}), tmp_path / "none.png") is None
