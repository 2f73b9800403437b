"""Membership-inference statistics and their AUC, as open-unlearning computes them (pure numpy functions).

Reference: locuslab/open-unlearning `src/evals/metrics/mia/` (loss.py, zlib.py, min_k.py, min_k_plus_plus.py,
reference.py, gradnorm.py, utils.py `mia_auc`; read at commit d3d7cf9). Conventions kept from there:

- every statistic is signed like a loss: a higher score means "less likely a member";
- the AUC labels forget examples 0 and holdout examples 1 (`roc_auc_score(labels, scores)`), so the AUC is 1
  when the model finds the forget data much more likely than the holdout data, and about 0.5 when it cannot
  tell them apart (what a model that never saw the forget data gives);
- LOSS, ZLib and Reference use the mean NLL over every scored token (`evaluate_probability`: the answer plus
  its EOS); Min-K% and Min-K%++ drop the last scored token (`tokenwise_logprobs` ignores the EOS prediction).

Inputs are per-example arrays: `logprobs` the log-probabilities of the scored tokens in order (EOS last);
`vocab_logprobs` the (tokens x vocabulary) log-softmax rows at those positions.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np


def loss_score(logprobs: np.ndarray) -> float:
    """LOSS (loss.py): the mean token NLL of the example."""
    return float(-np.mean(logprobs))


def zlib_score(logprobs: np.ndarray, text: str) -> float:
    """ZLib (zlib.py): the mean NLL divided by the zlib-compressed length of the scored text in bytes."""
    return loss_score(logprobs) / len(zlib.compress(text.encode("utf-8")))


def _bottom_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the `max(1, int(n k))` smallest values (min_k.py's `num_k`)."""
    num_k = max(1, int(len(values) * k))
    return float(np.mean(np.sort(values)[:num_k]))


def min_k_score(logprobs: np.ndarray, k: float = 0.4) -> float:
    """Min-K% Prob (min_k.py): minus the mean of the lowest k share of token log-probs, EOS dropped."""
    lp = np.asarray(logprobs, dtype=np.float64)[:-1]
    if lp.size == 0:
        return 0.0
    return -_bottom_k_mean(lp, k)


def min_k_plus_plus_score(logprobs: np.ndarray, vocab_logprobs: np.ndarray, k: float = 0.4) -> float:
    """Min-K%++ (min_k_plus_plus.py): each token's log-prob standardised by the mean and standard deviation of
    the log-prob under the model's own next-token distribution (variance clamped at 1e-6), then minus the mean
    of the lowest k share; EOS dropped."""
    lp = np.asarray(logprobs, dtype=np.float64)[:-1]
    vlp = np.asarray(vocab_logprobs, dtype=np.float64)[:-1]
    if lp.size == 0:
        return 0.0
    p = np.exp(vlp)
    mu = (p * vlp).sum(-1)
    sigma = np.maximum((p * vlp**2).sum(-1) - mu**2, 1e-6)
    return -_bottom_k_mean((lp - mu) / np.sqrt(sigma), k)


def reference_score(logprobs: np.ndarray, reference_logprobs: np.ndarray) -> float:
    """Reference (reference.py): the model's mean NLL minus the reference model's on the same tokens."""
    return loss_score(logprobs) - loss_score(reference_logprobs)


def gradnorm_score(grad_norms: Sequence[float]) -> float:
    """GradNorm (gradnorm.py): the mean over parameter tensors of the p-norm of each one's gradient of the
    example's mean NLL (the per-tensor norms are computed by the caller, which owns the model)."""
    return float(np.mean(np.asarray(grad_norms, dtype=np.float64)))


def norm_order(p: int | str) -> float:
    """`p` of the GradNorm spec as a norm order (`"inf"` -> infinity)."""
    return math.inf if p == "inf" else float(p)


def mia_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """utils.py `mia_auc`: ROC AUC with forget labelled 0 and holdout 1 (1 = forget data far more likely)."""
    from sklearn.metrics import roc_auc_score  # imported on use: about 1 s

    scores = np.concatenate([np.asarray(forget_scores, float), np.asarray(holdout_scores, float)])
    labels = np.array([0] * len(forget_scores) + [1] * len(holdout_scores))
    return float(roc_auc_score(labels, scores))
