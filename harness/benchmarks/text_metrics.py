"""Text metrics shared by benchmarks: ROUGE-L (rouge_score, stemmed) and bootstrap confidence intervals."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from rouge_score import rouge_scorer, scoring
from scipy import stats


@lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
    """One shared ROUGE-L scorer with Porter stemming, as TOFU uses (MUSE does not: `benchmarks/muse/metrics.py`)."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _rouge_l(reference: str, prediction: str) -> scoring.Score:
    """The rougeL Score (precision, recall, fmeasure) of `prediction` against `reference`."""
    return _rouge_l_scorer().score(target=reference, prediction=prediction)["rougeL"]


def rouge_l_recall(reference: str, prediction: str) -> float:
    """ROUGE-L recall: LCS length / reference length in (stemmed) tokens (TOFU `eval_rouge_recall`)."""
    return float(_rouge_l(reference, prediction).recall)


def rouge_l_f1(reference: str, prediction: str) -> float:
    """Stemmed ROUGE-L F1 of `prediction` against `reference`.

    Not MUSE's VerbMem / KnowMem score: muse_bench scores unstemmed (`harness.benchmarks.muse.metrics.rouge_l_f1`).
    """
    return float(_rouge_l(reference, prediction).fmeasure)


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
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((x,), np.mean, n_resamples=n_resamples, batch=max(1, 2_000_000 // x.size),
                                 vectorized=True, confidence_level=1 - alpha, method="percentile",
                                 rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)
