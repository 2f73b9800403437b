"""`harness report DIR [DIR ...]`: two hand-made run directories compared side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from harness.cli import main
from harness.commands.report import compare_runs, summary_columns_for


def _fake_run(path: Path, scale: float, diverge: bool = False, benchmark: str = "tofu") -> Path:
    """A minimal results directory: metrics.parquet, train_log.parquet, spec.yaml, env.json."""
    path.mkdir(parents=True)
    rows = []
    for method, prob in (("target", 0.99), ("retain", 0.02), ("gd_lora", 0.5 * scale), ("gd_sine", 0.1 * scale)):
        if method == "gd_lora" and diverge:
            continue
        rows += [{"method": method, "benchmark": benchmark, "split": "forget10", "metric": "prob", "value": prob,
                  "ci_low": prob - 0.01, "ci_high": prob + 0.01},
                 {"method": method, "benchmark": benchmark, "split": "forget10", "metric": "forget_quality",
                  "value": 0.3 * scale},
                 {"method": method, "benchmark": benchmark, "split": "all", "metric": "model_utility",
                  "value": 0.6}]
    rows += [{"method": "gd_lora", "benchmark": benchmark, "split": "train", "metric": "diverged",
              "value": float(diverge)},
             {"method": "gd_sine", "benchmark": benchmark, "split": "train", "metric": "diverged", "value": 0.0}]
    pd.DataFrame(rows).to_parquet(path / "metrics.parquet")
    log = pd.DataFrame([{"method": m, "step": s, "loss": -s * scale, "loss_forget": -s, "loss_retain": 0.1,
                         "grad_norm": 1.0 + s, "adapter_norm": 0.1 * (s + 1), "logit_norm": 50.0, "lr": 1e-3,
                         "tokens_per_s": 100.0} for m in ("gd_lora", "gd_sine") for s in range(4)])
    log.to_parquet(path / "train_log.parquet")
    spec = {"name": path.name, "seeds": [0], "benchmark": {"name": benchmark, "forget_split": "forget10"},
            "methods": [{"name": "gd_lora"}, {"name": "gd_sine"}]}
    (path / "spec.yaml").write_text(yaml.safe_dump(spec))
    (path / "env.json").write_text(json.dumps({"git_commit": "deadbeef", "seed": 0, "started": "2026-01-01T00:00:00",
                                               "duration_s": 12.5}))
    return path


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    return _fake_run(tmp_path / "runs" / "base", 1.0), _fake_run(tmp_path / "runs" / "lr_high", 2.0, diverge=True)


def test_report_writes_markdown_and_html_with_both_runs(two_runs: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    md = (out / "report.md").read_text()
    for needle in ("| base | gd_sine |", "| lr_high | gd_sine |", "| base | target |", "| lr_high | gd_lora |",
                   "forget quality", "model utility", "forget prob", "max grad norm", "deadbeef"):
        assert needle in md, needle
    html = (out / "report.html").read_text()
    assert "lr_high" in html and html.count("data:image/png;base64,") == 2
    assert (out / "plots" / "compare_metrics.png").stat().st_size > 1000
    assert (out / "plots" / "compare_training.png").stat().st_size > 1000
    assert not list(out.rglob("*.tmp"))


def test_compare_table_has_one_row_per_run_and_method(two_runs: tuple[Path, Path]) -> None:
    table, figures = compare_runs(two_runs)
    assert list(zip(table["run"], table["method"], strict=True)) == [
        ("base", "target"), ("base", "retain"), ("base", "gd_lora"), ("base", "gd_sine"),
        ("lr_high", "target"), ("lr_high", "retain"), ("lr_high", "gd_lora"), ("lr_high", "gd_sine")]
    t = table.set_index(["run", "method"])
    assert t.loc[("base", "gd_sine"), "forget prob"] == pytest.approx(0.1)
    assert t.loc[("lr_high", "gd_sine"), "forget prob"] == pytest.approx(0.2)
    assert pd.isna(t.loc[("lr_high", "gd_lora"), "forget prob"])           # diverged: not scored
    assert t.loc[("lr_high", "gd_lora"), "diverged"] == "1/1" and t.loc[("base", "gd_lora"), "diverged"] == "0/1"
    assert t.loc[("base", "gd_sine"), "max grad norm"] == 4.0
    assert set(figures) == {"metrics", "training"}


def test_report_default_out_and_duplicate_names(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "x" / "run", 1.0)
    b = _fake_run(tmp_path / "y" / "run", 1.5, benchmark="other")
    assert main(["report", str(a), str(b)]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| x/run | gd_sine |" in md and "| y/run | gd_sine |" in md
    # An unknown benchmark gets one column per (split, metric).
    cols = summary_columns_for({"benchmark": {"name": "other"}}, pd.read_parquet(b / "metrics.parquet"))
    assert {c.label for c in cols} == {"forget10 prob", "forget10 forget_quality", "all model_utility"}


def test_report_on_a_directory_without_results_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "metrics.parquet" in capsys.readouterr().err


def test_html_table_formats_like_markdown_escapes_and_classes_rows() -> None:
    from harness.commands.report import html_table
    from harness.render.tables import to_markdown

    table = pd.DataFrame({"method": ["a<b", "gd_sine"], "forget <prob>": [0.123456, float("nan")],
                          "steps": [3, 40000], "norm": [12345.0, 0.0]}, index=[7, 3])
    page = html_table(table, "t1", ["regression", ""])
    cells = [c.split(">", 1)[1] for c in page.split("<td ")[1:]]
    cells = [c[:c.index("</td>")] for c in cells]
    # The same strings as the markdown table, HTML-escaped.
    md_cells = [c.strip() for line in to_markdown(table).splitlines()[2:] for c in line.strip("|").split("|")]
    assert cells == [c.replace("<", "&lt;").replace(">", "&gt;") for c in md_cells]
    assert cells == ["a&lt;b", "0.1235", "3", "1.23e+04", "gd_sine", "—", "40000", "0"]
    assert "forget &lt;prob&gt;" in page and 'id="T_t1"' in page
    assert page.count("regression") == 4 and 'class="data row1 col0" ' in page
