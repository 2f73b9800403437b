"""Across-seed statistics: the mean of a metric over a job's seeds and its 95% Student-t interval.

Conclusions rest on these, not on one seed of a chaotic optimisation. With n seeds the interval is
`mean +- t_{0.975, n-1} * sd / sqrt(n)` (`scipy.stats.t`); one seed has no interval (NaN). The
interval describes the seeds' spread, not the benchmark's sampling error (that is the bootstrap
interval of each single run, `ci_low`/`ci_high` in metrics.parquet).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedStat:
    """Mean, 95% interval and count of one quantity over seeds (NaNs, e.g. diverged runs, left out)."""

    mean: float
    low: float
    high: float
    n: int


def across_seeds(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> SeedStat:
    """Mean and Student-t interval of the finite `values` (one per seed)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return SeedStat(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return SeedStat(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return SeedStat(mean, mean - half, mean + half, n)


def metrics_across_seeds(metrics: pd.DataFrame) -> pd.DataFrame:
    """metrics.parquet rows reduced over seeds: one row per (method, benchmark, split, metric) with the mean
    as `value`, the across-seed interval as `ci_low`/`ci_high` and `n_seeds`; with one seed the row keeps its
    own (bootstrap) interval."""
    keys = ["method", "benchmark", "split", "metric"]
    df = metrics.copy()
    df["benchmark"] = df["benchmark"].fillna("") if "benchmark" in df else ""
    rows = []
    for key, group in df.groupby(keys, sort=False, dropna=False):
        s = across_seeds(group["value"].to_numpy(dtype=float))
        if len(group) == 1:
            low, high = group["ci_low"].iloc[0], group["ci_high"].iloc[0]
        else:
            low, high = s.low, s.high
        rows.append({**dict(zip(keys, key, strict=True)), "value": s.mean, "ci_low": low, "ci_high": high,
                     "n_seeds": len(group)})
    return pd.DataFrame(rows, columns=[*keys, "value", "ci_low", "ci_high", "n_seeds"])
