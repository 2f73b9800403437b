"""Statistics in one place: across-seed means with their 95% Student-t interval, two-sample tests, and the
percentile bootstrap interval of one run's per-example values (`bootstrap_ci`).

Conclusions rest on these, not on one seed of a chaotic optimisation. With n seeds the interval is
`mean +- t_{0.975, n-1} * sd / sqrt(n)` (`scipy.stats.t`); one seed has no interval (NaN). The
interval describes the seeds' spread, not the benchmark's sampling error (that is the bootstrap
interval of each single run, `ci_low`/`ci_high` in metrics.parquet).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedStat:
    """Mean, 95% interval and count of one quantity over seeds (NaNs, e.g. diverged runs, left out)."""

    mean: float
    low: float
    high: float
    n: int


def _scipy_stats() -> Any:
    """`scipy.stats`, imported on first use: 0.35 s that processes which never compute a statistic (training and
    scoring workers import this module through the benchmarks) do not pay."""
    from scipy import stats

    return stats


def _finite_seeds(values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, SeedStat | None]:
    """The finite seed values, and the statistic itself when there are fewer than two (no interval then)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return x, SeedStat(math.nan, math.nan, math.nan, 0)
    if x.size == 1:
        return x, SeedStat(float(x[0]), math.nan, math.nan, 1)
    return x, None


def across_seeds(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> SeedStat:
    """Mean and Student-t interval of the finite `values` (one per seed)."""
    x, short = _finite_seeds(values)
    if short is not None:
        return short
    mean, n = float(x.mean()), int(x.size)
    half = float(_scipy_stats().t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
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


#: Significance level of the seed-distribution test's verdict.
ALPHA = 0.05


@dataclass(frozen=True)
class TwoSample:
    """A two-sided Mann-Whitney U test of two runs' per-seed values: U of the first sample, p, the smallest p an
    exact test can reach with these sample sizes, the sizes, and a verdict in words."""

    u: float
    p: float
    min_p: float
    n_a: int
    n_b: int
    verdict: str


def smallest_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided p of an exact rank test of `n_a` vs `n_b` values: `2 / C(n_a + n_b, n_a)` (0.1 for
    3 vs 3 seeds, so such a test can never reject at 0.05)."""
    if n_a == 0 or n_b == 0:
        return math.nan
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


def two_sample(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, alpha: float = ALPHA) -> TwoSample:
    """Whether two runs' seed distributions of a metric differ: `scipy.stats.mannwhitneyu(a, b,
    alternative="two-sided")` on the finite values (exact without ties at these sizes). Identical constant samples
    give p 1. `verdict`: `differ` (p < alpha), `separated` (every value of one beyond every value of the other, but
    too few seeds for p < alpha), `no evidence`, or `too few seeds` (a sample with fewer than 2 values)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    n_a, n_b = int(x.size), int(y.size)
    if n_a < 2 or n_b < 2:
        return TwoSample(math.nan, math.nan, smallest_p(n_a, n_b), n_a, n_b, "too few seeds")
    if np.ptp(np.concatenate([x, y])) == 0:
        u, p = n_a * n_b / 2, 1.0
    else:
        res = _scipy_stats().mannwhitneyu(x, y, alternative="two-sided")
        u, p = float(res.statistic), float(res.pvalue)
    if p < alpha:
        verdict = "differ"
    elif x.max() < y.min() or y.max() < x.min():
        verdict = "separated"
    else:
        verdict = "no evidence"
    return TwoSample(u, p, smallest_p(n_a, n_b), n_a, n_b, verdict)


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_resamples: int, seed: int,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of the mean; (nan, nan) when off or fewer than 2 values.

    `scipy.stats.bootstrap` (method `percentile`), resampling with `np.random.default_rng(seed)` in batches
    that bound the index matrix to ~16 MB: the interval is a function of the values, `n_resamples` and `seed`.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if n_resamples <= 0 or x.size < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        # NaN values give a NaN interval, which scipy reports with a warning meant for BCa.
        stats = _scipy_stats()
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, batch=max(1, 2_000_000 // x.size),
                                 vectorized=True, confidence_level=1 - alpha, method="percentile",
                                 rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


#: Bootstrap resamples of the across-seed intervals (fixed generator seed: the same values give the same interval).
BOOTSTRAP_RESAMPLES = 9999


def bootstrap_interval(values: Sequence[float] | np.ndarray, low: float = -math.inf, high: float = math.inf,
                       confidence: float = CONFIDENCE, method: str = "percentile") -> SeedStat:
    """Mean of the finite `values` (one per seed) and its bootstrap interval over the seeds
    (`scipy.stats.bootstrap` of the mean, `method` percentile or BCa, fixed generator), clipped to the metric's
    range [`low`, `high`]. A percentile interval of a mean never leaves the values' own range, so it respects any
    range the metric has; one seed has no interval (NaN), equal values give [value, value]."""
    x, short = _finite_seeds(values)
    if short is not None:
        return short
    mean, n = float(x.mean()), int(x.size)
    if np.ptp(x) == 0:
        return SeedStat(mean, mean, mean, n)
    res = _scipy_stats().bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                                   method=method, rng=np.random.default_rng(0))
    ci_low, ci_high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return SeedStat(mean, float(np.clip(ci_low, low, high)), float(np.clip(ci_high, low, high)), n)


@dataclass(frozen=True)
class PairedComparison:
    """A method against its baseline on paired seeds: the mean difference (method - baseline) with its bootstrap
    interval, the two-sided p of an exact paired sign-flip permutation test, the smallest p that test can reach
    with n pairs (`2 / 2^n`), and n."""

    diff: float
    low: float
    high: float
    p: float
    min_p: float
    n: int


def paired_comparison(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                      confidence: float = CONFIDENCE) -> PairedComparison:
    """`a` (the method) vs `b` (the baseline), value i of both from seed i: pairs with a non-finite value are
    left out. The test is `scipy.stats.permutation_test` of the mean difference with `permutation_type="samples"`
    (every sign flip of the differences: exact for up to 2^n <= 9999 flips); identical pairs give p 1."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need equal lengths, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    diff = bootstrap_interval(x - y, confidence=confidence)
    if n < 2:
        return PairedComparison(diff.mean, diff.low, diff.high, math.nan, math.nan, n)
    min_p = min(1.0, 2.0 / 2**n)
    if np.all(x == y):
        return PairedComparison(diff.mean, diff.low, diff.high, 1.0, min_p, n)
    res = _scipy_stats().permutation_test((x, y), lambda u, v, axis: np.mean(u - v, axis=axis),
                                          permutation_type="samples", alternative="two-sided",
                                          n_resamples=BOOTSTRAP_RESAMPLES, rng=np.random.default_rng(0),
                                          vectorized=True)
    return PairedComparison(diff.mean, diff.low, diff.high, float(res.pvalue), min_p, n)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of `pvalues` (NaNs stay NaN and do not count): the k-th smallest of m is
    multiplied by (m - k + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    running = 0.0
    for k, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()
