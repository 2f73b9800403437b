"""Nightly regression rules on hand-made history frames; the suite flow and its report with a stubbed job runner."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.commands.nightly import (
    Rule,
    SuiteSpec,
    append_history,
    baseline_frame,
    compare,
    default_rules,
    find_rule,
    judge,
    load_suite,
    read_history,
    resolve_jobs,
    run_suite,
    validate_suite,
)
from harness.core.errors import HarnessError, SpecError

ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")


def _rule(kind: str, tol: float, direction: str = "both", **globs: object) -> Rule:
    return Rule(kind=kind, tolerance=tol, direction=direction, **globs)


# ---- one metric under one rule ---------------------------------------------------------------------

@pytest.mark.parametrize(("new", "base", "kind", "tol", "direction", "expected"), [
    (0.55, 0.50, "absolute", 0.1, "both", "ok"),
    (0.65, 0.50, "absolute", 0.1, "both", "regression"),
    (0.35, 0.50, "absolute", 0.1, "higher_is_better", "regression"),
    (0.65, 0.50, "absolute", 0.1, "higher_is_better", "improvement"),
    (0.65, 0.50, "absolute", 0.1, "lower_is_better", "regression"),
    (0.35, 0.50, "absolute", 0.1, "lower_is_better", "improvement"),
    (10.4, 10.0, "relative", 0.05, "both", "ok"),           # 4% < 5%
    (10.6, 10.0, "relative", 0.05, "both", "regression"),   # 6% > 5%
    (-10.6, -10.0, "relative", 0.05, "higher_is_better", "regression"),  # |base| in the denominator
    (1e-9, 0.0, "relative", 0.05, "both", "regression"),    # any move away from a zero baseline
    (0.0, 0.0, "relative", 0.05, "both", "ok"),
    (1.0, 0.0, "absolute", 0.0, "lower_is_better", "regression"),  # diverged: any increase
    (0.0, 1.0, "absolute", 0.0, "lower_is_better", "improvement"),
    (NAN, 0.5, "absolute", 0.1, "both", "regression"),      # a value that became NaN
    (0.5, NAN, "absolute", 0.1, "both", "new"),
])
def test_judge_absolute_and_relative(new: float, base: float, kind: str, tol: float, direction: str,
                                     expected: str) -> None:
    assert judge(new, base, NAN, NAN, _rule(kind, tol, direction)) == expected


def test_judge_ci_uses_the_baseline_interval_widened_by_the_tolerance() -> None:
    rule = _rule("ci", 0.02, "higher_is_better")
    base, lo, hi = 0.50, 0.45, 0.55
    assert judge(0.44, base, lo, hi, rule) == "ok"           # outside the CI but inside the widening
    assert judge(0.56, base, lo, hi, rule) == "ok"
    assert judge(0.42, base, lo, hi, rule) == "regression"   # below 0.45 - 0.02
    assert judge(0.58, base, lo, hi, rule) == "improvement"
    assert judge(0.42, base, lo, hi, _rule("ci", 0.0, "lower_is_better")) == "improvement"
    assert judge(0.44, base, lo, hi, _rule("ci", 0.0, "both")) == "regression"
    # Without an interval, ci falls back to the absolute test with the same tolerance.
    assert judge(0.49, base, NAN, NAN, rule) == "ok"
    assert judge(0.47, base, NAN, NAN, rule) == "regression"


# ---- which rule applies ----------------------------------------------------------------------------

def test_globs_lists_and_first_match_wins() -> None:
    rules = [_rule("absolute", 0.0, metric="prob", split="forget*", method="gd_*"),
             _rule("relative", 0.1, metric=["prob", "rouge_*"]),
             _rule("absolute", 1.0)]
    assert find_rule(rules, "gd_sine", "forget10", "prob") is rules[0]
    assert find_rule(rules, "target", "forget10", "prob") is rules[1]       # method glob fails
    assert find_rule(rules, "gd_sine", "retain", "prob") is rules[1]        # split glob fails
    assert find_rule(rules, "gd_sine", "retain", "rouge_l_recall") is rules[1]
    assert find_rule(rules, "gd_sine", "retain", "truth_ratio") is rules[2]
    assert find_rule(rules[:2], "gd_sine", "retain", "truth_ratio") is None
    assert not _rule("absolute", 0, metric="Prob").matches("m", "s", "prob")  # case-sensitive


@pytest.mark.parametrize(("method", "split", "metric", "kind", "direction"), [
    ("gd_sine", "train", "diverged", "absolute", "lower_is_better"),
    ("gd_sine", "forget10", "forget_quality", "absolute", "higher_is_better"),
    ("gd_sine", "all", "model_utility", "relative", "higher_is_better"),
    ("gd_sine", "forget10", "prob", "ci", "lower_is_better"),
    ("gd_sine", "forget05", "rouge_l_recall", "ci", "lower_is_better"),
    ("gd_sine", "retain", "prob", "ci", "higher_is_better"),
    ("gd_sine", "world_facts", "rouge_l_recall", "ci", "higher_is_better"),
    ("gd_sine", "forget10", "truth_ratio", "ci", "higher_is_better"),
    ("target", "forget10", "prob", "ci", "both"),              # reference models: any move is flagged
    ("retain", "all", "model_utility", "relative", "both"),
    ("gd_lora", "forget", "verbmem_rouge", "ci", "lower_is_better"),
    ("gd_lora", "retain", "knowmem_rouge", "ci", "higher_is_better"),
    ("gd_lora", "forget", "privleak", "absolute", "both"),
    ("ga_sine", "forget", "ma", "ci", "lower_is_better"),
    ("ga_sine", "forget", "el_10", "ci", "lower_is_better"),
    ("ga_sine", "holdout", "ma_threshold", "absolute", "both"),
    ("ga_sine", "task", "some_new_metric", "relative", "both"),  # the catch-all
])
def test_default_rules_cover_the_benchmark_metrics(method: str, split: str, metric: str, kind: str,
                                                   direction: str) -> None:
    rule = find_rule(default_rules(), method, split, metric)
    assert rule is not None and (rule.kind, rule.direction) == (kind, direction)


def test_suite_rules_come_before_the_defaults() -> None:
    suite = SuiteSpec(jobs=[{"spec": "x.yaml"}], rules=[{"metric": "prob", "kind": "absolute", "tolerance": 0.5}])
    rule = find_rule(suite.all_rules(), "gd", "forget10", "prob")
    assert (rule.kind, rule.tolerance) == ("absolute", 0.5)
    assert find_rule(suite.all_rules(), "gd", "train", "diverged").direction == "lower_is_better"
    only = SuiteSpec(jobs=[{"spec": "x.yaml"}], rules=[{"metric": "prob"}], use_default_rules=False)
    assert find_rule(only.all_rules(), "gd", "train", "diverged") is None


# ---- baselines from history ----------------------------------------------------------------------------

def _history(values: dict[str, list[float]], ci: float = 0.05) -> pd.DataFrame:
    """One row per run: job j, method m, split s, metric name -> value per run (runs r0, r1, ...)."""
    rows = []
    for metric, series in values.items():
        for i, v in enumerate(series):
            rows.append({"run_id": f"r{i}", "timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(days=i),
                         "job": "j", "method": "m", "benchmark": "tofu", "split": "s", "metric": metric,
                         "value": v, "ci_low": v - ci, "ci_high": v + ci})
    return pd.DataFrame(rows)


def _current(**values: float) -> pd.DataFrame:
    return pd.DataFrame([{"job": "j", "method": "m", "benchmark": "tofu", "split": "s", "metric": k, "value": v,
                          "ci_low": v - 0.05, "ci_high": v + 0.05} for k, v in values.items()])


def test_rolling_median_takes_the_last_window_runs_per_metric() -> None:
    hist = _history({"a": [100.0, 1.0, 2.0, 3.0, 10.0], "b": [5.0, 7.0]})
    base, desc = baseline_frame(hist.sample(frac=1, random_state=0), "rolling_median", window=3)
    got = base.set_index("metric")["value"]
    assert got["a"] == 3.0            # median of 2, 3, 10 (run r0's 100 is out of the window)
    assert got["b"] == 6.0            # only two runs so far: median of both
    assert base.set_index("metric")["ci_low"]["a"] == pytest.approx(2.95)
    assert "rolling median" in desc and "3" in desc


def test_pinned_baseline_is_one_run_and_defaults_to_the_first() -> None:
    hist = _history({"a": [1.0, 2.0, 3.0]})
    assert baseline_frame(hist, "pinned", "r1")[0]["value"].tolist() == [2.0]
    base, desc = baseline_frame(hist, "pinned", None)
    assert base["value"].tolist() == [1.0] and "r0" in desc
    with pytest.raises(HarnessError, match="r9"):
        baseline_frame(hist, "pinned", "r9")


def test_pinned_and_rolling_median_can_disagree() -> None:
    hist = _history({"model_utility": [0.50, 0.40, 0.40, 0.40]})
    rules = default_rules()  # model_utility: relative 5%, higher is better
    new = _current(model_utility=0.41)
    pinned = compare(new, baseline_frame(hist, "pinned", "r0")[0], rules)
    rolling = compare(new, baseline_frame(hist, "rolling_median", window=3)[0], rules)
    assert pinned["status"].tolist() == ["regression"]
    assert rolling["status"].tolist() == ["ok"]


def test_no_history_means_nothing_is_flagged() -> None:
    base, desc = baseline_frame(read_history("/nonexistent/history.parquet"), "rolling_median")
    out = compare(_current(prob=0.5, diverged=1.0), base, default_rules())
    assert set(out["status"]) == {"new"} and "no history" in desc


def test_compare_flags_missing_metrics_and_divergence_first() -> None:
    hist = _history({"prob": [0.5, 0.5], "diverged": [0.0, 0.0], "old_metric": [1.0, 1.0]})
    base = baseline_frame(hist, "rolling_median")[0]
    hist_split = base.assign(split=lambda d: d["metric"].map({"prob": "retain", "diverged": "train"}).fillna("x"))
    new = _current(prob=0.5, diverged=1.0, brand_new=3.0).assign(split=["retain", "train", "x"])
    out = compare(new, hist_split, default_rules())
    status = out.set_index("metric")["status"]
    assert status["diverged"] == "regression"
    assert status["old_metric"] == "missing"
    assert status["brand_new"] == "new"
    assert status["prob"] == "ok"
    assert out["status"].iloc[0] == "regression"    # flagged rows come first
    row = out.set_index("metric").loc["diverged"]
    assert (row["baseline"], row["new"], row["delta"]) == (0.0, 1.0, 1.0)


def test_history_appends_atomically(tmp_path: Path) -> None:
    path = tmp_path / "h" / "history.parquet"
    first = _history({"a": [1.0]})
    append_history(path, first)
    append_history(path, _history({"a": [1.0, 2.0]}).iloc[[1]])
    hist = read_history(path)
    assert hist["run_id"].tolist() == ["r0", "r1"] and str(hist["timestamp"].dt.tz) == "UTC"
    assert not list(path.parent.glob("*.tmp"))


# ---- the suite spec ----------------------------------------------------------------------------------

def test_suite_spec_rejects_unknown_fields_naming_them() -> None:
    with pytest.raises(SpecError, match="baseline.mode"):
        validate_suite({"jobs": [{"spec": "a.yaml"}], "baseline": {"mode": "mean"}})
    with pytest.raises(SpecError, match="rules.0.speed"):
        validate_suite({"jobs": [{"spec": "a.yaml"}], "rules": [{"speed": 1}]})
    with pytest.raises(SpecError, match="jobs"):
        validate_suite({"name": "x"})


@pytest.mark.parametrize("name", ["nightly.yaml", "nightly_gpu.yaml"])
def test_shipped_suites_validate_with_every_job(name: str, tmp_path: Path) -> None:
    suite = load_suite(ROOT / "jobs" / name)
    jobs = resolve_jobs(suite, tmp_path)
    assert len({n for n, _ in jobs}) == len(jobs) >= 3
    assert all(Path(spec.out).parent == tmp_path for _, spec in jobs)


# ---- the whole flow, with the job runner stubbed (the real one: tests/e2e/test_nightly.py) ------------

def _fake_run_job(spec, progress: bool = True):  # noqa: ANN001, ANN202 - the pipeline.run_job signature
    """Writes the files nightly reads; a learning rate above 1 makes the method diverge."""
    from harness.core.io import atomic_write_json, atomic_write_parquet
    from harness.pipeline.context import JobResult

    out = spec.out_dir()
    rows = [{"method": "target", "seed": 0, "benchmark": "tofu", "split": "forget10", "metric": "prob", "value": 0.9,
             "ci_low": 0.85, "ci_high": 0.95}]
    for m in spec.methods:
        diverged = m.train.lr > 1
        for seed in spec.seeds:
            rows.append({"method": m.name, "seed": seed, "benchmark": "tofu", "split": "train", "metric": "diverged",
                         "value": float(diverged)})
            if not diverged:
                rows += [{"method": m.name, "seed": seed, "benchmark": "tofu", "split": "forget10", "metric": "prob",
                          "value": 0.1, "ci_low": 0.05, "ci_high": 0.15},
                         {"method": m.name, "seed": seed, "benchmark": "tofu", "split": "all",
                          "metric": "model_utility", "value": 0.6}]
    atomic_write_parquet(out / "metrics.parquet", pd.DataFrame(rows))
    atomic_write_json(out / "env.json", {"git_commit": "abc123", "seeds": spec.seeds})
    return JobResult(out, "summary", {m.name: m.train.lr > 1 for m in spec.methods})


@pytest.fixture
def suite_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import harness.commands.nightly.run

    monkeypatch.setattr(harness.commands.nightly.run, "run_job", _fake_run_job)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"name": "tiny", "methods": [{"name": "gd_sine"}]}))
    suite = {"name": "t", "out": str(tmp_path / "runs"), "history": str(tmp_path / "history.parquet"),
             "jobs": [{"spec": "tiny.yaml"}, {"spec": "tiny.yaml", "name": "tiny2", "set": ["seeds=[1,2]"]}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_suite_runs_append_history_and_flag_an_injected_regression(suite_file: Path) -> None:
    first = run_suite(suite_file, progress=False)
    assert not first.regressed and set(first.comparison["status"]) == {"new"}
    hist = read_history(suite_file.parent / "history.parquet")
    assert set(hist["job"]) == {"tiny", "tiny2"} and set(hist["git_commit"].dropna()) == {"abc123"}
    assert set(hist[hist["metric"] == "job_failed"]["value"]) == {0.0}

    second = run_suite(suite_file, progress=False)
    assert not second.regressed and set(second.comparison["status"]) == {"ok"}
    row = second.comparison.set_index(["job", "method", "metric"]).loc[("tiny", "gd_sine", "model_utility")]
    assert row["baseline"] == row["new"] == 0.6 and row["delta"] == 0.0 and math.isnan(row["baseline_ci_low"])
    assert json.loads((second.out_dir / "tiny" / "env.json").read_text())["git_commit"] == "abc123"

    third = run_suite(suite_file, overrides=["methods.0.train.lr=1e30"], progress=False)
    assert third.regressed
    flagged = third.regressions.set_index(["job", "metric"])["status"]
    assert flagged[("tiny", "diverged")] == "regression"
    assert flagged[("tiny", "prob")] == "missing"
    assert read_history(suite_file.parent / "history.parquet")["run_id"].nunique() == 3

    md = third.report.read_text()
    assert md.index("## Flagged regressions") < md.index("| tiny | gd_sine | tofu | train | diverged") \
        < md.index("## All metrics") < md.index("## Trends")
    html = third.report.with_suffix(".html").read_text()
    assert "data:image/png;base64," in html
    # The flagged table (the first on the page) classes every cell of a regressed row.
    flagged_html = html[html.index("<h2>Flagged regressions</h2>"):html.index("<h2>All metrics")]
    assert re.search(r'<td class="data row0 col0 regression" >tiny</td>', flagged_html)
    assert (third.out_dir / "plots" / "trend_tiny.png").is_file()
    assert pd.read_parquet(third.out_dir / "comparison.parquet")["status"].eq("regression").any()


def test_pinned_baseline_and_failed_jobs(suite_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = run_suite(suite_file, progress=False)
    run_suite(suite_file, overrides=["methods.0.train.lr=1e30"], progress=False)
    # Against the diverged run: divergence going away is an improvement, the metrics are new again.
    after = run_suite(suite_file, baseline="latest", progress=False)
    status = after.comparison.set_index(["job", "metric"])["status"]
    assert not after.regressed
    assert status[("tiny", "diverged")] == "improvement" and status[("tiny", "model_utility")] == "new"
    against_first = run_suite(suite_file, baseline=first.run_id, progress=False)
    assert not against_first.regressed and first.run_id in against_first.baseline
    assert set(against_first.comparison["status"]) == {"ok"}

    import harness.commands.nightly.run

    def boom(spec, progress=True):  # noqa: ANN001, ANN202
        raise RuntimeError("worker died")

    monkeypatch.setattr(harness.commands.nightly.run, "run_job", boom)
    failed = run_suite(suite_file, progress=False)
    assert failed.regressed and "worker died" in failed.failures["tiny"]
    assert failed.regressions.set_index(["job", "metric"])["status"][("tiny", "job_failed")] == "regression"
    assert "worker died" in failed.report.read_text()


def test_cli_exit_codes(suite_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["nightly", str(suite_file)]) == 0
    assert main(["nightly", str(suite_file), "--set", "methods.0.train.lr=1e30"]) == 1
    assert "regression" in capsys.readouterr().out
    assert main(["nightly", str(suite_file), "--baseline", "no-such-run"]) == 2
    assert "no-such-run" in capsys.readouterr().err
    bad = suite_file.parent / "bad.yaml"
    bad.write_text(yaml.safe_dump({"jobs": [{"spec": "tiny.yaml"}], "rules": [{"kind": "median"}]}))
    assert main(["nightly", str(bad)]) == 2
    assert "rules.0.kind" in capsys.readouterr().err
    other = suite_file.parent / "other.parquet"
    assert main(["nightly", str(suite_file), "--history", str(other)]) == 0
    assert read_history(other)["run_id"].nunique() == 1


def test_resume_continues_the_unfinished_run_keeping_its_finished_jobs(suite_file: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.commands.nightly.run
    from harness.core.signals import Interrupted

    calls: list[tuple[str, bool]] = []

    def stopped_at_the_second_job(spec, progress=True, resume=False):  # noqa: ANN001, ANN202
        calls.append((spec.out_dir().name, resume))
        if spec.out_dir().name == "tiny2":
            raise Interrupted(15)  # SIGTERM while the second job runs
        return _fake_run_job(spec, progress)

    monkeypatch.setattr(harness.commands.nightly.run, "run_job", stopped_at_the_second_job)
    with pytest.raises(Interrupted):
        run_suite(suite_file, progress=False)
    (unfinished,) = list((suite_file.parent / "runs").iterdir())
    assert not (suite_file.parent / "history.parquet").exists()

    calls.clear()
    monkeypatch.setattr(harness.commands.nightly.run, "run_job", lambda spec, progress=True, resume=False: (
        calls.append((spec.out_dir().name, resume)), _fake_run_job(spec, progress))[1])
    resumed = run_suite(suite_file, progress=False, resume=True)
    assert resumed.run_id == unfinished.name and calls == [("tiny2", True)]  # tiny is kept, not rerun
    assert set(read_history(suite_file.parent / "history.parquet")["job"]) == {"tiny", "tiny2"}
    fresh = run_suite(suite_file, progress=False, resume=True)  # nothing unfinished: a new run
    assert fresh.run_id != resumed.run_id
