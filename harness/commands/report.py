"""Side-by-side comparison of finished runs (`harness report DIR [DIR ...]`): one table, bar and curve plots."""

from __future__ import annotations

import argparse
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from harness.benchmarks import load_benchmark_class
from harness.config import REFERENCE_METHODS
from harness.core.errors import DataError, HarnessError
from harness.core.io import (
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable_dir,
)
from harness.core.stats import two_sample
from harness.render import sensitivity
from harness.render.comparison_plots import plot_metric_bars, plot_training_overlay
from harness.render.html import figure_png, html_image, html_page, html_table
from harness.render.tables import TELEMETRY, Column, summary_stats, summary_table, to_markdown
from harness.results.run_record import FinishedRun, load_finished_run
from harness.spec import benchmark_spec


def summary_columns_for(spec: dict[str, Any], metrics: pd.DataFrame) -> list[Column]:
    """The summary columns of a run's benchmark (as its summary.md shows them), from spec.yaml alone.

    A known benchmark gives its own columns (`Benchmark.summary_columns_for` its options, no data loaded);
    an unknown one, or a spec that no longer validates, one column per (split, metric) in metrics.parquet.
    """
    from pydantic import ValidationError

    bench = spec.get("benchmark") or {}
    try:
        options = benchmark_spec(**bench)
        return load_benchmark_class(options.name).summary_columns_for(options) + sensitivity.summary_columns(metrics)
    except (ValidationError, HarnessError, TypeError):
        pairs = metrics[metrics["metric"] != "diverged"][["split", "metric"]].drop_duplicates()
        return [Column(s, m, f"{s} {m}") for s, m in pairs.itertuples(index=False)]


def _unique_labels(paths: Sequence[Path]) -> list[str]:
    """Directory names; `parent/name` where names repeat, then `#2`, `#3` for what still repeats."""
    names = [p.name or str(p) for p in paths]
    labels = [f"{p.parent.name}/{n}" if names.count(n) > 1 and p.parent.name else n
              for p, n in zip(paths, names, strict=True)]
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab}#{seen[lab]}")
    return out


def _diverged_counts(metrics: pd.DataFrame) -> dict[str, tuple[int, int]]:
    div = metrics[metrics["metric"] == "diverged"]
    return {m: (int(g["value"].sum()), len(g)) for m, g in div.groupby("method", sort=False)}


def _with_seed(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs written before seeds existed count as seed 0."""
    if "seed" not in frame.columns:
        return frame.assign(seed=0)
    return frame.assign(seed=frame["seed"].fillna(0))


def comparison_stats(runs: Sequence[FinishedRun]) -> tuple[pd.DataFrame, list[Column], dict[str, pd.DataFrame]]:
    """Across-seed statistics (harness.render.tables.summary_stats) of every run's summary columns and telemetry,
    with a `run` column; the union of the columns; and each run's formatted summary table."""
    columns: list[Column] = []
    frames, tables = [], {}
    for run in runs:
        cols = summary_columns_for(run.spec, run.metrics)
        for c in cols:
            if c.label not in [k.label for k in columns]:
                columns.append(c)
        stats = summary_stats(_with_seed(run.metrics), _with_seed(run.train_log), cols, run.methods)
        tables[run.label] = summary_table(stats, run.methods, _diverged_counts(run.metrics))
        frames.append(stats.assign(run=run.label))
    stats = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return stats, columns, tables


def comparison_table(runs: Sequence[FinishedRun]) -> tuple[pd.DataFrame, list[Column]]:
    """One row per (run, method): the across-seed mean of every summary metric and telemetry maximum, the
    number of seeds, and how many seeds diverged (`k/n`)."""
    stats, columns, tables = comparison_stats(runs)
    labels = [c.label for c in columns]
    rows = []
    for run in runs:
        sub = stats[stats["run"] == run.label]
        diverged = tables[run.label].set_index("method")["diverged"]
        for method in run.methods:
            m = sub[sub["method"] == method].set_index("column")
            row: dict[str, Any] = {"run": run.label, "method": method,
                                   "seeds": int(m["n"].max()) if len(m) else 0}
            for label in [*labels, *(t for t, _ in TELEMETRY)]:
                row[label] = float(m.loc[label, "mean"]) if label in m.index else float("nan")
            row["diverged"] = diverged.get(method, "—")
            rows.append(row)
    return pd.DataFrame(rows, columns=["run", "method", "seeds", *labels, *(t for t, _ in TELEMETRY), "diverged"]), \
        columns


def formatted_comparison(runs: Sequence[FinishedRun]) -> pd.DataFrame:
    """The comparison as people read it: `mean [95% interval over seeds]` cells, one row per (run, method)."""
    _, columns, tables = comparison_stats(runs)
    frames = [t.assign(run=label) for label, t in tables.items()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "method"])
    order = ["run", "method", "seeds", *[c.label for c in columns], *(t for t, _ in TELEMETRY), "diverged"]
    for col in order:
        if col not in table.columns:
            table[col] = "—"
    return table[order].fillna("—")


SEED_TEST_COLUMNS = ["method", "column", "run A", "run B", "n A", "n B", "mean A", "mean B", "U", "p",
                     "smallest p", "verdict"]


def seed_distribution_tests(runs: Sequence[FinishedRun]) -> pd.DataFrame:
    """Every later run against the first, per method both ran and per summary column and telemetry maximum:
    whether their per-seed values differ, by a two-sided Mann-Whitney U test (harness.core.stats.two_sample), with
    the smallest p the seed counts allow."""

    if len(runs) < 2:
        return pd.DataFrame(columns=SEED_TEST_COLUMNS)
    stats, _, _ = comparison_stats(runs)
    first = runs[0]
    base = stats[stats["run"] == first.label]
    rows = []
    for run in runs[1:]:
        other = stats[stats["run"] == run.label]
        for method in [m for m in first.methods if m in run.methods and m not in REFERENCE_METHODS]:
            a = base[base["method"] == method].set_index("column")
            b = other[other["method"] == method].set_index("column")
            for column in [c for c in a.index if c in b.index]:
                va, vb = list(a.loc[column, "values"]), list(b.loc[column, "values"])
                if not va and not vb:
                    continue
                t = two_sample(va, vb)
                rows.append({"method": method, "column": column, "run A": first.label, "run B": run.label,
                             "n A": t.n_a, "n B": t.n_b, "mean A": float(a.loc[column, "mean"]),
                             "mean B": float(b.loc[column, "mean"]), "U": t.u, "p": t.p, "smallest p": t.min_p,
                             "verdict": t.verdict})
    return pd.DataFrame(rows, columns=SEED_TEST_COLUMNS)


SEED_TEST_NOTE = ("Two-sided Mann-Whitney U test of the per-seed values (scipy.stats.mannwhitneyu; exact without "
                  "ties). `differ`: p < 0.05. With n seeds per run an exact rank test cannot give p below "
                  "2 / C(2n, n) (`smallest p`: 0.1 at 3 vs 3 seeds), so 3 seeds can never show a difference at "
                  "0.05; `separated` (every seed of one run beyond every seed of the other, p = the smallest p) "
                  "is the strongest evidence they allow, and `no evidence` is not evidence of equality.")


def all_metrics_table(runs: Sequence[FinishedRun]) -> pd.DataFrame:
    """Every (benchmark, split, metric, method) as a row, one value column per run."""
    long = pd.concat([r.metrics.assign(run=r.label) for r in runs], ignore_index=True)
    long["benchmark"] = long["benchmark"].fillna("")
    wide = long.pivot_table(index=["benchmark", "split", "metric", "method"], columns="run", values="value",
                            aggfunc="first", sort=False)
    return wide.reindex(columns=[r.label for r in runs]).reset_index()


def load_runs(dirs: Sequence[str | Path]) -> list[FinishedRun]:
    """Read several run directories (only metrics.parquet required: `load_finished_run(complete=False)`), labelled
    by their (disambiguated) directory names."""
    if not dirs:
        raise DataError("no run directories given")
    paths = [Path(d) for d in dirs]
    labels = _unique_labels(paths)
    return [load_finished_run(p, complete=False, label=lab) for p, lab in zip(paths, labels, strict=True)]


def _figures(runs: Sequence[FinishedRun], table: pd.DataFrame, columns: Sequence[Column]) -> dict[str, plt.Figure]:
    figs = (("metrics", plot_metric_bars(table, columns)), ("training", plot_training_overlay(runs)))
    return {name: fig for name, fig in figs if fig is not None}


def compare_runs(dirs: Sequence[str | Path]) -> tuple[pd.DataFrame, dict[str, plt.Figure]]:
    """The (run, method) comparison table of finished runs and its figures ({"metrics": ..., "training": ...})."""
    runs = load_runs(dirs)
    table, columns = comparison_table(runs)
    return table, _figures(runs, table, columns)


def _runs_table(runs: Sequence[FinishedRun]) -> pd.DataFrame:
    rows = []
    for r in runs:
        bench = (r.spec.get("benchmark") or {}) if r.spec else {}
        rows.append({"run": r.label, "path": str(r.run_dir), "job": r.spec.get("name", "—"),
                     "benchmark": f"{bench.get('name', '—')} {bench.get('forget_split', '')}".strip(),
                     "git commit": str(r.env.get("git_commit") or "—")[:16],
                     "seeds": str(r.env.get("seeds", r.env.get("seed", "—"))),
                     "started": str(r.env.get("started") or "—"), "duration s": str(r.env.get("duration_s") or "—")})
    return pd.DataFrame(rows)


def default_report_dir(dirs: Sequence[str | Path]) -> Path:
    """`report/` under the runs' common parent (under the run itself when there is one)."""
    paths = [os.path.abspath(d) for d in dirs]
    return Path(os.path.commonpath(paths)) / "report"


def write_report(dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Compare runs and write report.md, report.html and plots/*.png under `out` (atomically); returns report.md."""
    runs = load_runs(dirs)
    out = ensure_writable_dir(out if out else default_report_dir(dirs), "report directory")
    table, columns = comparison_table(runs)
    figures = _figures(runs, table, columns)
    pngs = {name: figure_png(fig) for name, fig in figures.items()}
    for name, png in pngs.items():
        atomic_write_bytes(out / "plots" / f"compare_{name}.png", png)
    runs_df = _runs_table(runs)
    everything = all_metrics_table(runs)
    title = "Run comparison: " + ", ".join(r.label for r in runs)
    readable = formatted_comparison(runs)
    md = [f"# {title}", "", "## Runs", "", to_markdown(runs_df), "",
          "## Summary (one row per run and method; mean [95% interval] over seeds)", "", to_markdown(readable), ""]
    for name in pngs:
        md += [f"![{name}](plots/compare_{name}.png)", ""]
    tests = seed_distribution_tests(runs)
    if not tests.empty:
        md += [f"## Seed distributions: each run vs {runs[0].label}", "", SEED_TEST_NOTE, "", to_markdown(tests), ""]
    md += ["## All metrics", "", to_markdown(everything), ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    body = ["<h2>Runs</h2>", html_table(runs_df, "runs"),
            "<h2>Summary (one row per run and method; mean [95% interval] over seeds)</h2>",
            html_table(readable, "summary")]
    body += [html_image(png, name) for name, png in pngs.items()]
    if not tests.empty:
        body += [f"<h2>Seed distributions: each run vs {html.escape(runs[0].label)}</h2>",
                 f"<p>{html.escape(SEED_TEST_NOTE)}</p>", html_table(tests, "seed_tests")]
    body += ["<h2>All metrics</h2>", html_table(everything, "metrics")]
    atomic_write_text(out / "report.html", html_page(title, "\n".join(body)))
    return out / "report.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`harness report`'s arguments."""
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories (each with metrics.parquet)")
    parser.add_argument("--out", help="output directory (default: report/ under the runs' common parent)")


def main(args: argparse.Namespace) -> int:
    """Write the report; say where it went."""
    path = write_report(args.dirs, args.out)
    print(f"report: {path} (and {path.with_suffix('.html')})")
    return 0
