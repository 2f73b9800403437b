"""Plots comparing finished runs side by side (`harness report`): summary metrics per method grouped by run, and
the training curves of every (run, method) overlaid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from harness.render.tables import Column, pyplot
from harness.results.run_record import FinishedRun

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_CURVES = [("loss", "total loss", False), ("loss_forget", "forget loss", False), ("loss_retain", "retain loss", False),
           ("grad_norm", "gradient norm", True), ("adapter_norm", "adapter norm ‖ΔW‖", True),
           ("logit_norm", "logit norm", True)]
_LINESTYLES = ["-", "--", ":", "-."]


def plot_metric_bars(table: pd.DataFrame, columns: Sequence[Column]) -> Figure | None:
    """One panel per summary metric; methods on the x axis, one bar per run."""
    plt = pyplot()
    if table.empty or not columns:
        return None
    runs = list(dict.fromkeys(table["run"]))
    methods = list(dict.fromkeys(table["method"]))
    n = len(columns)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    width = 0.8 / max(len(runs), 1)
    for ax, col in zip(axes.flat, columns):
        for i, run in enumerate(runs):
            sub = table[table["run"] == run].set_index("method")[col.label].astype(float)
            xs = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(methods))]
            ax.bar(xs, [sub.get(m, float("nan")) for m in methods], width, label=run)
        arrow = {True: " ↑", False: " ↓"}.get(col.higher_is_better, "")
        ax.set_title(col.label + arrow, fontsize=10)
        ax.set_xticks(range(len(methods)), methods, rotation=45, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Summary metrics per method, grouped by run")
    fig.tight_layout()
    return fig


def plot_training_overlay(runs: Sequence[FinishedRun]) -> Figure | None:
    """Training curves of every (run, method) overlaid: colour per method, line style per run."""
    plt = pyplot()
    logs = [r for r in runs if not r.train_log.empty]
    if not logs:
        return None
    methods = list(dict.fromkeys(m for r in logs for m in r.train_log["method"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    for ax, (key, title, log_scale) in zip(axes.flat, _CURVES, strict=True):
        positive = True
        for i, run in enumerate(logs):
            for method, group in run.train_log.groupby("method", sort=False):
                y = group[key].astype(float)
                positive &= bool((y.dropna() > 0).all())
                ax.plot(group["step"], y, color=colors[methods.index(method) % len(colors)],
                        linestyle=_LINESTYLES[i % len(_LINESTYLES)], linewidth=1.4, label=f"{run.label}: {method}")
        ax.set_title(title)
        ax.set_xlabel("step")
        if log_scale and positive:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Training curves (colour: method, line style: run)")
    fig.tight_layout()
    return fig


