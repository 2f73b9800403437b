"""Human-facing results: the summary table (markdown) and plots of training curves and metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.config import SearchObjective
from harness.core.io import atomic_write_bytes, atomic_write_text
from harness.core.stats import bootstrap_interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend, imported on first use: about 0.6 s of import that most processes
    importing this module (Ray Train and scoring workers reading `Column`) never need."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


@dataclass(frozen=True)
class Column:
    """One metric column of the summary table: which (split, metric) it shows and its header."""

    split: str
    metric: str
    label: str
    higher_is_better: bool | None = None


#: Training telemetry shown beside the metrics: (column label, train_log column); the maximum over steps.
TELEMETRY: tuple[tuple[str, str], ...] = (("max grad norm", "grad_norm"), ("max adapter norm", "adapter_norm"),
                                          ("max logit norm", "logit_norm"))
STAT_COLUMNS = ["method", "column", "split", "metric", "higher_is_better", "mean", "ci_low", "ci_high", "n",
                "values"]


def fmt_value(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def _stat_row(method: str, column: str, split: str, metric: str, better: bool | None,
              values: Sequence[float]) -> dict[str, object]:
    s = bootstrap_interval(values)  # a percentile interval: never outside the seeds' values, so inside the range
    return {"method": method, "column": column, "split": split, "metric": metric, "higher_is_better": better,
            "mean": s.mean, "ci_low": s.low, "ci_high": s.high, "n": s.n, "values": [float(v) for v in values]}


def summary_stats(metrics: pd.DataFrame, train_log: pd.DataFrame, columns: Sequence[Column],
                  methods: Sequence[str]) -> pd.DataFrame:
    """Long table, one row per (method, column): the across-seed mean, 95% percentile bootstrap interval (which
    stays inside the metric's range), seed count and the per-seed values of every summary metric and of each
    telemetry maximum (harness.core.stats.bootstrap_interval)."""
    rows = []
    seed_col = "seed" in metrics.columns
    for method in methods:
        m = metrics[metrics["method"] == method]
        for col in columns:
            hit = m[(m["split"] == col.split) & (m["metric"] == col.metric)]
            hit = hit.sort_values("seed") if seed_col else hit
            rows.append(_stat_row(method, col.label, col.split, col.metric, col.higher_is_better,
                                  hit["value"].astype(float).tolist()))
        log = train_log[train_log["method"] == method] if len(train_log) else train_log
        for label, key in TELEMETRY:
            per_seed = log.groupby("seed")[key].max().tolist() if len(log) and "seed" in log else (
                [float(log[key].max())] if len(log) else [])
            rows.append(_stat_row(method, label, "train", key, None, per_seed))
    return pd.DataFrame(rows, columns=STAT_COLUMNS)


def format_stat(mean: float, low: float, high: float) -> str:
    """`mean [low, high]`, or the mean alone when there is no interval."""
    if math.isnan(low) or math.isnan(high):
        return fmt_value(mean)
    return f"{fmt_value(mean)} [{fmt_value(low)}, {fmt_value(high)}]"


def summary_table(stats: pd.DataFrame, methods: Sequence[str], diverged: dict[str, tuple[int, int]]) -> pd.DataFrame:
    """One row per method: `mean [95% interval]` of each column over seeds, then divergence as `k/n`.

    `diverged` maps a method to (diverged seeds, trained seeds); methods without training show `—`.
    """
    rows = []
    for method in methods:
        sub = stats[stats["method"] == method]
        row: dict[str, object] = {"method": method, "seeds": int(sub["n"].max()) if len(sub) else 0}
        for _, r in sub.iterrows():
            row[r["column"]] = format_stat(r["mean"], r["ci_low"], r["ci_high"])
        k, n = diverged.get(method, (0, 0))
        row["diverged"] = f"{k}/{n}" if n else "—"
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table with compact number formatting."""
    headers = list(table.columns)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for _, row in table.iterrows():
        cells = [fmt_value(v) if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(path: Path, title: str, table: pd.DataFrame, notes: Sequence[str]) -> str:
    """Write summary.md: title, the comparison table, and notes; returns the markdown."""
    text = f"# {title}\n\n{to_markdown(table)}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(path, text)
    return text


def save_figure(fig: Figure, path: Path) -> None:
    import io

    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_training(train_log: pd.DataFrame, path: Path) -> Path | None:
    """Loss, gradient norm, adapter norm and logit norm per step, one colour per method: the median over
    seeds as a line, the range over seeds shaded."""
    plt = pyplot()
    if train_log.empty:
        return None
    panels = [("loss_forget", "forget loss", False), ("loss_retain", "retain loss", False),
              ("grad_norm", "gradient norm", True), ("adapter_norm", "adapter norm ‖ΔW‖", True),
              ("logit_norm", "logit norm", True), ("loss", "total loss", False)]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title, log_scale) in zip(axes.flat, panels, strict=True):
        for i, (method, group) in enumerate(train_log.groupby("method", sort=False)):
            by_step = group.groupby("step")[key]
            med, lo, hi = by_step.median(), by_step.min(), by_step.max()
            n_seeds = group["seed"].nunique() if "seed" in group else 1
            color = colors[i % len(colors)]
            ax.plot(med.index, med.to_numpy(), label=f"{method} (n={n_seeds})", color=color, linewidth=1.5)
            if n_seeds > 1:
                ax.fill_between(med.index, lo.to_numpy(), hi.to_numpy(), color=color, alpha=0.2, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("step")
        if log_scale and (train_log[key].dropna() > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Training telemetry per method (line: median over seeds; band: min to max)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_metrics(stats: pd.DataFrame, columns: Sequence[Column], path: Path) -> Path | None:
    """One panel per metric column: a bar per method (across-seed mean), its 95% interval, and each seed
    as a dot."""
    plt = pyplot()
    if stats.empty or not columns:
        return None
    n = len(columns)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, col in zip(axes[0], columns, strict=True):
        sub = stats[stats["column"] == col.label].reset_index(drop=True)
        xs = range(len(sub))
        means = sub["mean"].astype(float).fillna(0.0)
        ax.bar(xs, means, color=[colors[i % len(colors)] for i in xs], alpha=0.8)
        lo = (sub["mean"] - sub["ci_low"]).astype(float).fillna(0.0).clip(lower=0)
        hi = (sub["ci_high"] - sub["mean"]).astype(float).fillna(0.0).clip(lower=0)
        ax.errorbar(xs, means, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, linewidth=1)
        for x, values in zip(xs, sub["values"], strict=True):
            ax.scatter([x] * len(values), values, s=10, color="black", zorder=3)
        arrow = {True: " ↑", False: " ↓"}.get(col.higher_is_better, "")
        ax.set_title(col.label + arrow, fontsize=10)
        ax.set_xticks(list(xs), sub["method"], rotation=45, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Metrics per method (bar: mean over seeds; line: 95% interval; dots: seeds)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def non_dominated(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of `values` (higher is better in every column) that no other row dominates
    (at least as good everywhere, strictly better somewhere)."""
    values = np.asarray(values, dtype=float)
    return np.array([not np.any(np.all(values >= row, axis=1) & np.any(values > row, axis=1)) for row in values],
                    dtype=bool)


#: The trade-off plotted for jobs with several methods: (metric on x, metric on y), both higher is better.
PARETO_METRICS = ("forget_quality", "model_utility")


def pareto_table(stats: pd.DataFrame, methods: Sequence[str], references: Sequence[str] = ()) -> pd.DataFrame:
    """Per method: mean and interval over seeds of forget quality and model utility, whether it is a
    reference model, and whether its means lie on the Pareto front of the other methods' (references are
    shown, never on the front). Empty when the benchmark reports neither metric."""
    x, y = PARETO_METRICS
    rows = []
    for method in methods:
        sub = stats[stats["method"] == method]
        px, py = sub[sub["metric"] == x], sub[sub["metric"] == y]
        if px.empty or py.empty or px["n"].iloc[0] == 0 or py["n"].iloc[0] == 0:
            continue
        rows.append({"method": method, "reference": method in references,
                     **{f"{x}_{k}": float(px[k].iloc[0]) for k in ("mean", "ci_low", "ci_high")},
                     **{f"{y}_{k}": float(py[k].iloc[0]) for k in ("mean", "ci_low", "ci_high")}})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["pareto"] = False
        trained = ~table["reference"]
        means = table.loc[trained, [f"{x}_mean", f"{y}_mean"]].to_numpy()
        table.loc[trained, "pareto"] = non_dominated(np.nan_to_num(means, nan=-np.inf))
    return table


def plot_pareto(table: pd.DataFrame, path: Path) -> Path | None:
    """Forget quality vs model utility, one point per method (mean over seeds, 95% interval as error bars,
    clipped to the metrics' range [0, 1]), the Pareto front marked and joined; reference models in grey (a
    `pareto_table`)."""
    plt = pyplot()
    if table.empty:
        return None
    x, y = PARETO_METRICS
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    groups = ((table[~table["reference"] & ~table["pareto"]], "tab:blue", "method"),
              (table[table["pareto"]], "tab:red", "Pareto front"),
              (table[table["reference"]], "0.5", "reference model"))
    for sub, color, label in groups:
        if sub.empty:
            continue
        # Both metrics lie in [0, 1]: intervals are drawn clipped to it (two seeds give very wide t intervals).
        xerr = [(sub[f"{x}_mean"] - sub[f"{x}_ci_low"].clip(lower=sub[f"{x}_mean"] / 10)).clip(lower=0).fillna(0),
                (sub[f"{x}_ci_high"].clip(upper=1.0) - sub[f"{x}_mean"]).clip(lower=0).fillna(0)]
        yerr = [(sub[f"{y}_mean"] - sub[f"{y}_ci_low"].clip(lower=0.0)).clip(lower=0).fillna(0),
                (sub[f"{y}_ci_high"].clip(upper=1.0) - sub[f"{y}_mean"]).clip(lower=0).fillna(0)]
        ax.errorbar(sub[f"{x}_mean"], sub[f"{y}_mean"], xerr=xerr, yerr=yerr, fmt="o", color=color, label=label,
                    markersize=5, elinewidth=0.8, capsize=2, zorder=3 if label == "Pareto front" else 2)
        for _, row in sub.iterrows():
            ax.annotate(row["method"], (row[f"{x}_mean"], row[f"{y}_mean"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    front = table[table["pareto"]].sort_values(f"{x}_mean")
    ax.plot(front[f"{x}_mean"], front[f"{y}_mean"], color="tab:red", alpha=0.5, linewidth=1)
    if (table[f"{x}_mean"] > 0).all():
        ax.set_xscale("log")
        ax.set_xlim(float(table[f"{x}_mean"].min()) / 20, 1.5)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("forget quality ↑ (log scale when positive; interval cut at a tenth of the mean)")
    ax.set_ylabel("model utility ↑")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Forget quality vs model utility (mean over seeds, 95% interval)", fontsize=10)
    save_figure(fig, path)
    return path


def pareto_front(frame: pd.DataFrame, objectives: list[SearchObjective]) -> pd.DataFrame:
    """Rows not dominated by any other (every objective at least as good, one strictly better)."""
    cols = [o.metric for o in objectives]
    done = frame.dropna(subset=cols)
    if done.empty:
        return done

    signed = done[cols].to_numpy(dtype=float) * np.array([1.0 if o.mode == "max" else -1.0 for o in objectives])
    return done[non_dominated(signed)].sort_values(cols[0], ascending=objectives[0].mode == "min")
