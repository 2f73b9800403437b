"""Vision class-deletion metrics in SalUn's conventions (OPTML-Group/Unlearn-Saliency, `Classification/`).

Per image (`image_rows`): cross-entropy loss, whether the top-1 prediction is right, confidence (the softmax
probability of the true class), the softmax entropy and the predicted class. Aggregates over the splits of
`data.SPLITS`, all fractions in [0, 1] (SalUn prints percentages):

- UA = 1 - accuracy on the forget set; RA = accuracy on the retained training images; TA = accuracy on the
  retained classes' test images (SalUn's class-wise test loader drops the deleted classes,
  `Classification/dataset.py`); plus the deleted classes' test accuracy. Accuracy is top-1, as
  `Classification/utils.py::accuracy` computes it.
- MIA-efficacy (`svc_mia_efficacy`): SalUn's `Classification/evaluation/SVC_MIA.py`, called from
  `Classification/main_forget.py` as `SVC_MIA(shadow_train=retain[:len(test)], shadow_test=test,
  target_train=None, target_test=forget)`: an `SVC(C=3, gamma="auto", kernel="rbf")` learns member (retain
  images, label 1) against non-member (test images, label 0) from one feature per image, and the efficacy is
  the fraction of forget images it calls non-members. SalUn's README reports the `confidence` feature (the
  true-class probability); `entropy` is the other single-feature attack in the same file.
- `avg_gap`: SalUn's "Avg. Gap", the mean absolute difference of (UA, RA, TA, MIA-efficacy) to the retrain model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats

from harness.core.errors import DataError
from harness.results.contract import Metric

#: The metrics of vision class deletion (SalUn's, fractions in [0, 1]), beside TOFU-style quality and utility.
METRICS = (
    Metric(("ua", "mia_efficacy"), "higher_is_better", "absolute", 0.02, range=(0.0, 1.0)),
    Metric(("ra", "ta"), "higher_is_better", "absolute", 0.02, range=(0.0, 1.0)),
    Metric("accuracy", "lower_is_better", "absolute", 0.02, split="test_forget", range=(0.0, 1.0)),
    Metric("avg_gap", "lower_is_better", "absolute", 0.02, range=(0.0, 1.0)),
    Metric("forget_quality", "higher_is_better", "absolute", 0.05, range=(0.0, 1.0)),
    Metric("model_utility", "higher_is_better", "relative", 0.05, range=(0.0, 1.0)),
)

#: Per-image values of `ImageRows`, as they go to examples.parquet (`metric` column).
ROW_METRICS = ("loss", "correct", "confidence", "entropy", "predicted")
#: The SalUn metrics whose gap to the retrain model `avg_gap` averages.
GAP_METRICS = ("ua", "ra", "ta", "mia_efficacy")
MIA_FEATURES = ("confidence", "entropy")


@dataclass(frozen=True)
class ImageRows:
    """Per-image predictions of one model on one split (arrays of length N)."""

    labels: np.ndarray
    loss: np.ndarray
    correct: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    predicted: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def frame(self, example_ids: np.ndarray | None = None) -> pd.DataFrame:
        """Long format `example_id, metric, value` (one row per image and metric of ROW_METRICS)."""
        ids = np.arange(len(self)) if example_ids is None else np.asarray(example_ids)
        if len(ids) != len(self):
            raise ValueError(f"{len(ids)} example ids for {len(self)} rows")
        parts = [pd.DataFrame({"example_id": ids, "metric": m, "value": getattr(self, m).astype(np.float64)})
                 for m in ROW_METRICS]
        return pd.concat(parts, ignore_index=True)


def image_rows(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> ImageRows:
    """Loss, correctness, true-class confidence, entropy and prediction of each image from its logits."""
    x = torch.as_tensor(logits).detach().to(torch.float64)
    y = torch.as_tensor(labels).detach().to(torch.long)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"logits must be (N, C) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    log_p = torch.log_softmax(x, dim=-1)
    p = log_p.exp()
    true_log_p = log_p.gather(1, y[:, None])[:, 0]
    # SalUn's entropy(): -sum p log p over classes with p > 0
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)
    predicted = x.argmax(-1)
    return ImageRows(labels=y.numpy(), loss=(-true_log_p).numpy(), correct=(predicted == y).numpy(),
                     confidence=true_log_p.exp().numpy(), entropy=entropy.numpy(), predicted=predicted.numpy())


def accuracy(rows: ImageRows) -> float:
    """Top-1 accuracy (fraction of images predicted right)."""
    if len(rows) == 0:
        raise DataError("accuracy of an empty split")
    return float(np.mean(rows.correct))


def per_class_accuracy(rows: ImageRows, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class with no images), for the per-class plot."""
    out = np.full(num_classes, np.nan)
    for c in np.unique(rows.labels):
        out[c] = float(np.mean(rows.correct[rows.labels == c]))
    return out


def _feature(rows: ImageRows, feature: str) -> np.ndarray:
    if feature not in MIA_FEATURES:
        raise DataError(f"unknown MIA feature {feature!r} (known: {', '.join(MIA_FEATURES)})")
    return getattr(rows, feature).reshape(-1, 1)


def svc_mia_efficacy(retain: ImageRows, test: ImageRows, forget: ImageRows, feature: str = "confidence") -> float:
    """SalUn's SVC attack: fit on retain (member) vs test (non-member), share of forget images called non-member.

    As `main_forget.py` does, the member set is the first `len(test)` retain images, so both classes of the
    attack's training set are the same size; with fewer retain than test images both are cut to the smaller.
    """
    from sklearn.svm import SVC

    n = min(len(retain), len(test))
    if n == 0 or len(forget) == 0:
        raise DataError("the MIA needs retain, test and forget images")
    x = np.concatenate([_feature(retain, feature)[:n], _feature(test, feature)[:n]])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    return float(1.0 - clf.predict(_feature(forget, feature)).mean())


def salun_metrics(forget: ImageRows, retain: ImageRows, test_retain: ImageRows, test_forget: ImageRows,
                  mia_feature: str = "confidence") -> dict[str, float]:
    """UA, RA, TA, the deleted classes' test accuracy and MIA-efficacy of one model."""
    return {
        "ua": 1.0 - accuracy(forget),
        "ra": accuracy(retain),
        "ta": accuracy(test_retain),
        "forget_test_accuracy": accuracy(test_forget),
        "mia_efficacy": svc_mia_efficacy(retain, test_retain, forget, mia_feature),
    }


def avg_gap(metrics: dict[str, float], retrain: dict[str, float]) -> float:
    """Mean absolute gap of UA, RA, TA and MIA-efficacy to the retrain model (SalUn's Avg. Gap)."""
    return float(np.mean([abs(metrics[m] - retrain[m]) for m in GAP_METRICS]))


def forget_quality(forget: ImageRows, retrain_forget: ImageRows) -> float:
    """KS-test p-value of the forget images' true-class confidences: unlearned vs the retrain model.

    The vision analogue of TOFU's forget quality (`ks_2samp` of the unlearned and the retain model's
    per-example statistics on the forget set, locuslab/tofu `aggregate_eval_stat.py`). Why this definition:
    the goal of class deletion is a model that cannot be told apart from one never trained on the deleted
    classes, and the per-image confidence in the true class is the quantity a membership attacker reads (it
    is SalUn's MIA feature). A p-value near 1 means the two confidence distributions agree; forgetting too
    little (confidences stay high) and forgetting too much (confidences pushed far below the retrain model's,
    the "Streisand" signal that gradient ascent leaves) both drive it to 0, which accuracy-based UA cannot
    show (any model that never predicts the class has UA = 1). The KS statistic only depends on ranks, so
    using the per-image loss (-log confidence) instead gives exactly the same value. Like TOFU's, it is a
    p-value and depends on the forget set's size (compare runs with the same number of forget images).
    """
    if len(forget) == 0 or len(retrain_forget) == 0:
        raise DataError("forget quality needs forget images of both models")
    return float(stats.ks_2samp(forget.confidence, retrain_forget.confidence).pvalue)


def model_utility(ra: float, ta: float) -> float:
    """Harmonic mean of retain accuracy (RA) and retained-class test accuracy (TA).

    The vision analogue of TOFU's model utility, the harmonic mean of the model's scores on what it should
    keep (retain set, plus held-out real-author and world-fact questions): RA is the training data it must
    keep, TA how well it still generalises on the retained classes. The harmonic mean is low when either is
    (a model that memorises the retain set but lost test accuracy, or the reverse), and 0 when either is 0.
    """
    return float(stats.hmean([ra, ta])) if min(ra, ta) > 0 else 0.0
