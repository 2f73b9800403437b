"""Trajectory sensitivity read from the training log: finite-time Lyapunov exponents, decorrelation steps, plot.

A run trained with `train.sensitivity` logs, per step, the distance `d` between it and its perturbed twin and the
signal `s` the distance is measured against (harness/train/twin.py). Per run:

- **growth window**: from the first step with a positive finite distance to the first step where the distance
  reaches `WINDOW_FRACTION` (1%) of the signal, else to the step of the largest distance; a window of fewer than
  `MIN_WINDOW` steps is widened to the whole run (then the exponent is the average rate, negative when the twins
  converge). Up to 1% the twins are still a small perturbation of each other, so the distance grows at the
  linearised dynamics' rate; beyond it the growth slows as they decorrelate (the distance saturates near the
  signal: `d >= s` means the twins' updates differ as much as the update itself), which the 100% step reports.
- **finite-time Lyapunov exponent**: the Theil-Sen slope (`scipy.stats.theilslopes`, robust to outlying steps) of
  `ln d` over the steps of the growth window, per optimizer step; its 95% interval is the slope's.
  `exp(lambda)` is the factor the distance grows by per step.
- **steps to 1% / 100%**: the first step (0-based, as logged) where `d >= 0.01 s` / `d >= s`; NaN if never.

Computed for the adapter update distance (`sens_adapter`, the main one) and the probe logits (`sens_logits`).
Across seeds the job reports the mean and 95% Student-t interval (harness.core.stats), like every other metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from harness.core.stats import across_seeds
from harness.render.tables import Column, format_stat, save_figure

SPLIT = "sensitivity"
#: Fewest steps a growth window has; a shorter one is widened to the whole run.
MIN_WINDOW = 5
#: The growth window ends where the distance reaches this fraction of the signal.
WINDOW_FRACTION = 0.01
#: (train_log distance column, its signal column, metric suffix)
DISTANCES = (("sens_adapter", "sens_adapter_signal", ""), ("sens_logits", "sens_logits_signal", "_logits"))
#: The summary table's sensitivity columns.
COLUMNS = (Column(SPLIT, "lyapunov_exponent", "Lyapunov exp/step"),
           Column(SPLIT, "lyapunov_exponent_logits", "Lyapunov exp/step (logits)"),
           Column(SPLIT, "steps_to_1pct", "steps to 1%"),
           Column(SPLIT, "steps_to_100pct", "steps to 100%"))


@dataclass(frozen=True)
class Fit:
    """A run's finite-time Lyapunov exponent (per step), its 95% Theil-Sen interval and growth window (steps)."""

    exponent: float
    low: float
    high: float
    start: float
    end: float


NO_FIT = Fit(math.nan, math.nan, math.nan, math.nan, math.nan)


def threshold_step(steps: Sequence[float], distance: Sequence[float], signal: Sequence[float],
                   fraction: float) -> float:
    """The first step where `distance >= fraction * signal` (NaN if never)."""
    d, s = np.asarray(distance, dtype=float), np.asarray(signal, dtype=float)
    hit = np.flatnonzero(np.isfinite(d) & np.isfinite(s) & (d >= fraction * s) & (d > 0))
    return float(np.asarray(steps, dtype=float)[hit[0]]) if hit.size else math.nan


def growth_window(distance: Sequence[float], signal: Sequence[float]) -> tuple[int, int] | None:
    """Indices `(first, last)` (inclusive) of the growth window (see the module docstring); None without one."""
    d, s = np.asarray(distance, dtype=float), np.asarray(signal, dtype=float)
    valid = np.flatnonzero(np.isfinite(d) & (d > 0))
    if valid.size == 0:
        return None
    first = int(valid[0])
    at = np.isfinite(d) & np.isfinite(s) & (d >= WINDOW_FRACTION * s)
    reached = np.flatnonzero(at & (np.arange(d.size) >= first))
    if reached.size:
        last = int(reached[0])
    else:
        tail = np.where(np.isfinite(d[first:]), d[first:], -np.inf)
        last = first + int(np.argmax(tail))
    if last - first + 1 < MIN_WINDOW:
        last = int(valid[-1])
    return first, last


def lyapunov(steps: Sequence[float], distance: Sequence[float], signal: Sequence[float]) -> Fit:
    """The finite-time Lyapunov exponent of one run's distance curve (NO_FIT with fewer than 3 usable steps)."""
    x, d = np.asarray(steps, dtype=float), np.asarray(distance, dtype=float)
    window = growth_window(d, signal)
    if window is None:
        return NO_FIT
    first, last = window
    keep = np.arange(first, last + 1)
    keep = keep[np.isfinite(d[keep]) & (d[keep] > 0)]
    if keep.size < 3:
        return NO_FIT
    slope, _, low, high = stats.theilslopes(np.log(d[keep]), x[keep], alpha=0.95)
    return Fit(float(slope), float(low), float(high), float(x[first]), float(x[last]))


def has_sensitivity(train_log: pd.DataFrame) -> bool:
    """Whether a training log carries a twin's distances."""
    return "sens_adapter" in train_log.columns and bool(train_log["sens_adapter"].notna().any())


def metric_rows(train_log: pd.DataFrame) -> list[dict[str, Any]]:
    """metrics.parquet rows (split `sensitivity`) per (method, seed) of a log with twin distances: the exponents
    (with their Theil-Sen interval), growth window and steps to 1% / 100% of the adapter distance."""
    if not has_sensitivity(train_log):
        return []
    rows: list[dict[str, Any]] = []
    for (method, seed), g in train_log.groupby(["method", "seed"], sort=False):
        g = g.sort_values("step")
        if not g["sens_adapter"].notna().any():
            continue
        base = {"method": method, "seed": int(seed), "split": SPLIT}
        for dist, signal, suffix in DISTANCES:
            if dist not in g or not g[dist].notna().any():
                continue
            fit = lyapunov(g["step"], g[dist], g[signal])
            rows.append({**base, "metric": f"lyapunov_exponent{suffix}", "value": fit.exponent, "ci_low": fit.low,
                         "ci_high": fit.high})
            if not suffix:
                rows += [{**base, "metric": "growth_window_start", "value": fit.start},
                         {**base, "metric": "growth_window_end", "value": fit.end}]
        for fraction, name in ((0.01, "steps_to_1pct"), (1.0, "steps_to_100pct")):
            step = threshold_step(g["step"], g["sens_adapter"], g["sens_adapter_signal"], fraction)
            rows.append({**base, "metric": name, "value": step})
    return rows


def summary_columns(metrics: pd.DataFrame | Sequence[dict[str, Any]]) -> list[Column]:
    """The sensitivity columns of the summary table when the metrics have sensitivity rows, else none."""
    df = metrics if isinstance(metrics, pd.DataFrame) else pd.DataFrame(list(metrics))
    if df.empty or "split" not in df or not (df["split"] == SPLIT).any():
        return []
    present = set(df.loc[df["split"] == SPLIT, "metric"])
    return [c for c in COLUMNS if c.metric in present]


def notes(rows: Sequence[dict[str, Any]], epsilon: float, methods: Sequence[str], extra_s: float,
          train_s: float) -> list[str]:
    """Summary notes: each method's exponent over seeds, how many seeds decorrelated, and the twins' cost."""

    if not rows:
        return []
    df = pd.DataFrame(list(rows))
    parts = []
    for method in methods:
        m = df[df["method"] == method]
        if m.empty:
            continue
        lam = across_seeds(m.loc[m["metric"] == "lyapunov_exponent", "value"].to_numpy(dtype=float))
        full = m.loc[m["metric"] == "steps_to_100pct", "value"].to_numpy(dtype=float)
        one = m.loc[m["metric"] == "steps_to_1pct", "value"].to_numpy(dtype=float)
        parts.append(f"{method} {format_stat(lam.mean, lam.low, lam.high)} (1% of the update reached in "
                     f"{int(np.isfinite(one).sum())}/{len(one)} seeds, 100% in {int(np.isfinite(full).sum())}/"
                     f"{len(full)})")
    share = f" ({100 * extra_s / train_s:.0f}% of the training time)" if train_s > 0 else ""
    return [f"Trajectory sensitivity (train.sensitivity, epsilon {epsilon:g}): finite-time Lyapunov exponent per "
            "step of ||dW_run - dW_twin||_F (Theil-Sen slope of its log over the growth window, up to the step "
            "where it reaches 1% of ||dW_run||), mean [95% Student-t interval] over seeds: " + "; ".join(parts)
            + f". The twins took {extra_s:.1f} s of the workers' time{share}; plots/sensitivity.png."]


def plot_sensitivity(train_log: pd.DataFrame, path: Path) -> Path | None:
    """Log distance between run and twin per step, one colour per method (median over seeds, seed range shaded):
    the update distance, the same relative to the update's norm (1% and 100% marked), the probe logits'."""
    import matplotlib.pyplot as plt

    if train_log.empty or not has_sensitivity(train_log):
        return None
    log = train_log.assign(sens_relative=train_log["sens_adapter"] / train_log["sens_adapter_signal"])
    panels = [("sens_adapter", "||dW_run - dW_twin||_F"), ("sens_relative", "relative: / ||dW_run||_F"),
              ("sens_logits", "probe logits ||L_run - L_twin||_F")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes, panels, strict=True):
        if not (log[key] > 0).any():  # identical twins (epsilon 0) or no probe: nothing to draw on a log scale
            ax.text(0.5, 0.5, "zero at every step" if log[key].notna().any() else "not measured",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=10)
            continue
        for i, (method, group) in enumerate(log.groupby("method", sort=False)):
            values = group.assign(v=group[key].where(group[key] > 0))
            by_step = values.groupby("step")["v"]
            color = colors[i % len(colors)]
            ax.plot(by_step.median().index, by_step.median().to_numpy(), color=color, linewidth=1.5,
                    label=f"{method} (n={group['seed'].nunique()})")
            ax.fill_between(by_step.min().index, by_step.min().to_numpy(), by_step.max().to_numpy(), color=color,
                            alpha=0.2, linewidth=0)
        if key == "sens_relative":
            for level in (0.01, 1.0):
                ax.axhline(level, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
            break
    fig.suptitle("Distance between each run and its perturbed twin (line: median over seeds; band: min to max)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path
