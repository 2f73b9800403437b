"""Human-facing results: the summary table (markdown) and plots of training curves and metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from harness.results import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class Column:
    """One metric column of the summary table: which (split, metric) it shows and its header."""

    split: str
    metric: str
    label: str
    higher_is_better: bool | None = None


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4g}"


def summary_table(metrics: pd.DataFrame, train_log: pd.DataFrame, columns: Sequence[Column],
                  methods: Sequence[str], diverged: dict[str, bool]) -> pd.DataFrame:
    """One row per method: the chosen metrics, then training telemetry maxima and divergence."""
    rows = []
    for method in methods:
        row: dict[str, object] = {"method": method}
        m = metrics[metrics["method"] == method]
        for col in columns:
            hit = m[(m["split"] == col.split) & (m["metric"] == col.metric)]["value"]
            row[col.label] = float(hit.iloc[0]) if len(hit) else float("nan")
        log = train_log[train_log["method"] == method] if len(train_log) else train_log
        for name, key in (("max grad norm", "grad_norm"), ("max adapter norm", "adapter_norm"),
                          ("max logit norm", "logit_norm")):
            row[name] = float(log[key].max()) if len(log) else float("nan")
        row["diverged"] = "yes" if diverged.get(method) else ("no" if len(log) else "—")
        rows.append(row)
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table with compact number formatting."""
    headers = list(table.columns)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for _, row in table.iterrows():
        cells = [_fmt(v) if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_summary(path: Path, title: str, table: pd.DataFrame, notes: Sequence[str]) -> str:
    """Write summary.md: title, the comparison table, and notes; returns the markdown."""
    text = f"# {title}\n\n{to_markdown(table)}\n"
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(path, text)
    return text


def save_figure(fig: plt.Figure, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_training(train_log: pd.DataFrame, path: Path) -> Path | None:
    """Loss, gradient norm, adapter norm and logit norm per step, one line per method."""
    if train_log.empty:
        return None
    panels = [("loss_forget", "forget loss", False), ("loss_retain", "retain loss", False),
              ("grad_norm", "gradient norm", True), ("adapter_norm", "adapter norm ‖ΔW‖", True),
              ("logit_norm", "logit norm", True), ("loss", "total loss", False)]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (key, title, log_scale) in zip(axes.flat, panels, strict=True):
        for method, group in train_log.groupby("method", sort=False):
            ax.plot(group["step"], group[key], label=method, linewidth=1.5)
        ax.set_title(title)
        ax.set_xlabel("step")
        if log_scale and (train_log[key] > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle("Training telemetry per method")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_metrics(table: pd.DataFrame, columns: Sequence[Column], path: Path) -> Path | None:
    """Grouped bars: one panel per metric column, one bar per method."""
    if table.empty or not columns:
        return None
    n = len(columns)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, col in zip(axes[0], columns, strict=True):
        values = table[col.label].astype(float).fillna(0.0)
        ax.bar(table["method"], values, color=[colors[i % len(colors)] for i in range(len(table))])
        arrow = {True: " ↑", False: " ↓"}.get(col.higher_is_better, "")
        ax.set_title(col.label + arrow, fontsize=10)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path
