"""TOFU metric formulas on per-example mean token NLLs, following locuslab/tofu exactly.

Reference: locuslab/tofu `evaluate_util.py` (`get_all_evals`, `eval_perturbation_ratio`) and
`aggregate_eval_stat.py` (`get_model_utility`, `get_forget_quality`). Inputs are per-example
average losses `avg_loss = -mean(token log-probs)` over the answer tokens plus one EOS, so
`exp(-avg_loss)` is the length-normalised probability `p(a|q)^(1/|a|)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import hmean, ks_2samp

from harness.results.contract import FORGET_SPLITS, Metric

#: The metrics TOFU reports (locuslab/tofu names); prob / ROUGE / truth ratio carry bootstrap intervals.
METRICS = (
    Metric("forget_quality", "higher_is_better", "absolute", 0.05, range=(0.0, 1.0)),  # KS p-value vs retain model
    Metric("model_utility", "higher_is_better", "relative", 0.05, range=(0.0, 1.0)),
    Metric(("prob", "rouge_l_recall"), "lower_is_better", "ci", 0.02, split=FORGET_SPLITS, range=(0.0, 1.0)),
    Metric(("prob", "rouge_l_recall"), "higher_is_better", "ci", 0.02, range=(0.0, 1.0)),  # retain, real authors...
    Metric("truth_ratio", "higher_is_better", "ci", 0.02, range=(0.0, 1.0)),
)

#: The splits (by role) and metrics whose harmonic mean is TOFU's model utility.
UTILITY_SPLITS: tuple[str, ...] = ("retain", "real_authors", "world_facts")
UTILITY_METRICS: tuple[str, ...] = ("prob", "rouge_l_recall", "truth_ratio")


def _as_2d(avg_perturbed_losses: np.ndarray | Sequence[Sequence[float]], n: int) -> np.ndarray:
    """Perturbed losses as an (n, k) float array, or fail naming the shape."""
    pert = np.asarray(avg_perturbed_losses, dtype=np.float64)
    if pert.ndim != 2 or pert.shape[0] != n or pert.shape[1] < 1:
        raise ValueError(f"perturbed losses must have shape ({n}, k>=1), got {pert.shape}")
    return pert


def prob_qa(avg_gt_loss: np.ndarray | Sequence[float]) -> np.ndarray:
    """Per-example `exp(-avg_gt_loss)`: TOFU forget/retain `Prob.` (`get_model_utility`)."""
    return np.exp(-np.asarray(avg_gt_loss, dtype=np.float64))


def prob_mc(avg_gt_loss: np.ndarray | Sequence[float],
            avg_perturbed_losses: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Per-example `p_a / (p_a + sum_j p_pert_j)`, length-normalised (TOFU real authors, world facts)."""
    p_true = prob_qa(avg_gt_loss)
    p_pert = np.exp(-_as_2d(avg_perturbed_losses, p_true.shape[0]))
    return p_true / (p_true + p_pert.sum(axis=1))


def truth_ratio_R(avg_base_loss: np.ndarray | Sequence[float],
                  avg_perturbed_losses: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Per-example `R = exp(avg_base - mean_j avg_pert_j)` = geomean_j P(pert_j) / P(base).

    TOFU's `eval_perturbation_ratio` stores this as `truth_ratio`; `aggregate_eval_stat.py` works with
    its inverse `exp(pert - para)`, which gives the same statistics below.
    """
    base = np.asarray(avg_base_loss, dtype=np.float64)
    return np.exp(base - _as_2d(avg_perturbed_losses, base.shape[0]).mean(axis=1))


def truth_ratio_values(R: np.ndarray | Sequence[float], forget: bool) -> np.ndarray:
    """Per-example terms of the truth-ratio statistic: forget `min(R, 1/R)`; others `max(0, 1 - R)`."""
    r = np.asarray(R, dtype=np.float64)
    return np.minimum(r, 1.0 / r) if forget else np.maximum(0.0, 1.0 - r)


def truth_ratio_stat(R: np.ndarray | Sequence[float], forget: bool) -> float:
    """TOFU `Truth Ratio`: forget `mean(min(R, 1/R))`; others `mean(max(0, 1 - R))` (`get_model_utility`)."""
    return float(np.mean(truth_ratio_values(R, forget)))


def forget_quality(R_unlearned: np.ndarray | Sequence[float],
                   R_retain: np.ndarray | Sequence[float]) -> float:
    """KS-test p-value of the forget-split truth ratios, unlearned vs retain model (`get_forget_quality`).

    TOFU tests `exp(pert - para) = 1/R`; 1/R is monotone in R, so the KS statistic and p-value are equal.
    """
    return float(ks_2samp(np.asarray(R_unlearned, dtype=np.float64),
                          np.asarray(R_retain, dtype=np.float64)).pvalue)


def model_utility(values: Mapping[tuple[str, str], float],
                  splits: Sequence[str] = UTILITY_SPLITS) -> float:
    """Harmonic mean of {prob, rouge_l_recall, truth_ratio} x {retain, real_authors, world_facts}.

    `values` maps `(split, metric)` to the split-level value; `splits` names the three utility splits
    in that order (pass e.g. `("retain90", "real_authors", "world_facts")`). Follows TOFU
    `get_model_utility` (`scipy.stats.hmean`); any value of 0 makes the utility 0.
    """
    keys = [(s, m) for s in splits for m in UTILITY_METRICS]
    missing = [f"{s}/{m}" for s, m in keys if (s, m) not in values]
    if missing:
        raise ValueError(f"model utility needs 9 values; missing: {', '.join(missing)}")
    xs = np.array([values[k] for k in keys], dtype=np.float64)
    if not np.all(np.isfinite(xs)) or np.any(xs < 0):
        got = dict(zip(keys, xs.tolist()))
        raise ValueError(f"model utility needs finite non-negative values, got {got}")
    if np.any(xs == 0):
        return 0.0
    return float(hmean(xs))
