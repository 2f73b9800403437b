"""The nightly report: the comparison table and the trend figures of the flagged metrics (markdown and HTML)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.commands.nightly.history import KEYS, run_order
from harness.commands.nightly.judge import STATUS_ORDER, is_flagged
from harness.commands.nightly.spec import SuiteSpec
from harness.core.io import (
    atomic_write_bytes,
    atomic_write_parquet,
    atomic_write_text,
)
from harness.render.html import figure_png, html_image, html_page, html_table
from harness.render.tables import to_markdown

_SHOW = [*KEYS, "baseline", "new", "delta", "rel_delta", "baseline_ci_low", "baseline_ci_high", "rule", "status"]


def trend_figures(history: pd.DataFrame, comparison: pd.DataFrame, run_id: str) -> dict[str, Any]:
    """One figure per job: a panel per (split, metric), a line per method over the runs, flagged points in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}
    order = run_order(history)
    pos = {r: i for i, r in enumerate(order)}
    flagged = comparison[comparison["status"].map(is_flagged)]
    for job, hist in history.groupby("job", sort=False):
        hist = hist[hist["metric"] != "job_failed"]
        panels = list(dict.fromkeys(zip(hist["split"], hist["metric"], strict=True)))
        if not panels:
            continue
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows), squeeze=False)
        job_runs = [r for r in order if r in set(hist["run_id"])]
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        color = {m: colors[i % len(colors)] for i, m in enumerate(dict.fromkeys(hist["method"]))}
        for ax, (split, metric) in zip(axes.flat, panels):
            sub = hist[(hist["split"] == split) & (hist["metric"] == metric)]
            for method, g in sub.groupby("method", sort=False):
                g = g.assign(x=g["run_id"].map(pos)).sort_values("x")
                ax.plot(g["x"], g["value"], marker="o", markersize=3, linewidth=1.2, label=method, color=color[method])
            bad = flagged[(flagged["job"] == job) & (flagged["split"] == split) & (flagged["metric"] == metric)]
            bad = bad[bad["new"].notna()]
            if len(bad) and run_id in pos:
                ax.scatter([pos[run_id]] * len(bad), bad["new"], s=60, facecolors="none", edgecolors="red",
                           linewidths=1.5, zorder=5)
            ax.set_title(f"{split} / {metric}", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ticks = [pos[r] for r in job_runs]
            step = max(1, len(ticks) // 6)
            ax.set_xticks(ticks[::step], [f"{r[4:8]} {r[9:13]}" for r in job_runs][::step], rotation=30, fontsize=6)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        handles = [plt.Line2D([], [], color=c, marker="o", markersize=3, label=m) for m, c in color.items()]
        fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=min(len(handles), 6))
        fig.suptitle(f"{job}: metric trends over nightly runs (red rings: flagged in {run_id})", fontsize=10)
        fig.tight_layout()
        figures[str(job)] = fig
    return figures


def write_nightly_report(run_dir: Path, suite: SuiteSpec, run_id: str, baseline: str, comparison: pd.DataFrame,
                         history: pd.DataFrame, failures: dict[str, str] | None = None) -> Path:
    """Write nightly_report.md and nightly_report.html (+ plots/trend_<job>.png) under `run_dir`."""
    import re

    failures = failures or {}
    flagged = comparison[comparison["status"].map(is_flagged)][_SHOW]
    counts = comparison["status"].value_counts().to_dict()
    pngs = {}
    for job, fig in trend_figures(history, comparison, run_id).items():
        name = "trend_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", job) + ".png"
        pngs[name] = figure_png(fig)
        atomic_write_bytes(run_dir / "plots" / name, pngs[name])
    atomic_write_parquet(run_dir / "comparison.parquet", comparison)

    verdict = (f"**{len(flagged)} regression(s)**" if len(flagged) else "**no regressions**")
    head = [f"- run: `{run_id}`", f"- baseline: {baseline}", f"- verdict: {verdict}",
            "- statuses: " + ", ".join(f"{k} {counts[k]}" for k in sorted(counts, key=STATUS_ORDER.get))]
    head += [f"- job `{job}` failed: {msg}" for job, msg in failures.items()]
    md = [f"# Nightly {suite.name}: {run_id}", "", *head, "", "## Flagged regressions", ""]
    md += [to_markdown(flagged) if len(flagged) else "None.", "", "## All metrics (baseline, new, delta)", "",
           to_markdown(comparison[_SHOW]), "", "## Trends", ""]
    md += [f"![{n}](plots/{n})" for n in pngs] or ["No history to plot."]
    md_path = atomic_write_text(run_dir / "nightly_report.md", "\n".join(md) + "\n")

    import html as _html

    body = ["<ul>" + "".join(f"<li>{_html.escape(h[2:]).replace('**', '')}</li>" for h in head) + "</ul>",
            "<h2>Flagged regressions</h2>",
            html_table(flagged, "flagged", ["regression"] * len(flagged)) if len(flagged) else "<p>None.</p>",
            "<h2>All metrics (baseline, new, delta)</h2>",
            html_table(comparison[_SHOW], "metrics", comparison["status"].tolist()), "<h2>Trends</h2>"]
    body += [html_image(png, name) for name, png in pngs.items()]
    atomic_write_text(run_dir / "nightly_report.html", html_page(f"Nightly {suite.name}: {run_id}", "\n".join(body)))
    return md_path
