"""Vision metrics against independent computations: sklearn accuracy/recall, scipy, SalUn's SVC-MIA by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, log_loss, recall_score, roc_auc_score
from sklearn.svm import SVC

from harness.benchmarks.vision.metrics import (
    ROW_METRICS,
    ImageRows,
    accuracy,
    avg_gap,
    forget_quality,
    image_rows,
    model_utility,
    per_class_accuracy,
    salun_metrics,
    svc_mia_efficacy,
)
from harness.core.errors import DataError

LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 1.0], [-2.0, 4.0, 0.0], [0.0, 0.0, 5.0]])
LABELS = np.array([0, 2, 1, 0, 1])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _rows_with_confidence(conf: list[float]) -> ImageRows:
    """Rows whose true-class confidence is `conf` (two classes, label 0)."""
    c = np.asarray(conf, dtype=np.float64)
    logits = np.stack([np.log(c), np.log1p(-c)], 1)
    return image_rows(logits, np.zeros(len(c), dtype=np.int64))


def test_image_rows_by_hand() -> None:
    rows = image_rows(torch.tensor(LOGITS), torch.tensor(LABELS))
    p = _softmax(LOGITS)
    np.testing.assert_allclose(rows.confidence, p[np.arange(5), LABELS])
    np.testing.assert_allclose(rows.loss, -np.log(p[np.arange(5), LABELS]))
    assert rows.loss.mean() == pytest.approx(log_loss(LABELS, p, labels=[0, 1, 2]))
    np.testing.assert_allclose(rows.entropy, stats.entropy(p, axis=1))
    np.testing.assert_array_equal(rows.predicted, [0, 2, 0, 1, 2])  # ties: the first maximum, as torch.topk
    np.testing.assert_array_equal(rows.correct, [True, True, False, False, False])
    assert rows.entropy[2] == pytest.approx(np.log(3))


def test_accuracy_and_per_class_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(200, 4)), rng.integers(0, 4, 200)
    rows = image_rows(logits, labels)
    assert accuracy(rows) == pytest.approx(accuracy_score(labels, logits.argmax(1)))
    np.testing.assert_allclose(per_class_accuracy(rows, 4), recall_score(labels, logits.argmax(1), average=None))
    partial = per_class_accuracy(image_rows(logits[labels != 2], labels[labels != 2]), 4)
    assert np.isnan(partial[2]) and not np.isnan(partial[[0, 1, 3]]).any()
    with pytest.raises(DataError, match="empty"):
        accuracy(image_rows(np.zeros((0, 4)), np.zeros(0)))


def test_rows_long_frame() -> None:
    rows = image_rows(LOGITS, LABELS)
    frame = rows.frame(np.array([10, 11, 12, 13, 14]))
    assert list(frame.columns) == ["example_id", "metric", "value"] and len(frame) == 5 * len(ROW_METRICS)
    conf = frame[frame.metric == "confidence"].set_index("example_id")["value"]
    assert conf[13] == pytest.approx(rows.confidence[3])
    with pytest.raises(ValueError, match="example ids"):
        rows.frame(np.arange(3))


def test_svc_mia_on_a_small_fixed_set_by_hand() -> None:
    # members (retain) are confident, non-members (test) are not; the attack separates them cleanly
    retain = _rows_with_confidence([0.95, 0.97, 0.99, 0.96, 0.98])
    test = _rows_with_confidence([0.30, 0.40, 0.35, 0.45, 0.50])
    # forget: three images the model is no longer sure of (called non-members), two it still knows
    forget = _rows_with_confidence([0.38, 0.97, 0.42, 0.96, 0.33])
    assert svc_mia_efficacy(retain, test, forget) == pytest.approx(3 / 5)
    # the same attack written as SalUn's SVC_fit_predict (target_train=None, target_test=forget)
    x = np.concatenate([retain.confidence, test.confidence]).reshape(-1, 1)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, np.r_[np.ones(5), np.zeros(5)])
    assert svc_mia_efficacy(retain, test, forget) == 1 - clf.predict(forget.confidence.reshape(-1, 1)).mean()
    # the attack's own scores separate members from non-members perfectly on this set
    assert roc_auc_score(np.r_[np.ones(5), np.zeros(5)], clf.decision_function(x)) == 1.0


def test_svc_mia_uses_len_test_retain_images_and_entropy_feature() -> None:
    # SalUn's shadow_train = retain[:len(test)]: the extra retain images (made to look like non-members) are unused
    retain = _rows_with_confidence([0.95, 0.97, 0.99, 0.96, 0.98] + [0.3] * 20)
    test = _rows_with_confidence([0.30, 0.40, 0.35, 0.45, 0.50])
    forget = _rows_with_confidence([0.38, 0.97, 0.42, 0.96, 0.33])
    assert svc_mia_efficacy(retain, test, forget) == pytest.approx(3 / 5)
    # entropy of a two-class softmax: low for confident (member-like) images, high near 0.5
    assert svc_mia_efficacy(retain, test, forget, feature="entropy") == pytest.approx(3 / 5)
    with pytest.raises(DataError, match="unknown MIA feature"):
        svc_mia_efficacy(retain, test, forget, feature="loss")


def test_salun_metrics_and_avg_gap_by_hand() -> None:
    forget = _rows_with_confidence([0.9, 0.2, 0.1, 0.3])  # 1 of 4 right -> UA 0.75
    retain = _rows_with_confidence([0.95, 0.97, 0.99, 0.96, 0.4])  # RA 0.8
    test_retain = _rows_with_confidence([0.8, 0.3, 0.45, 0.9])  # TA 0.5
    test_forget = _rows_with_confidence([0.2, 0.1])
    m = salun_metrics(forget, retain, test_retain, test_forget)
    assert (m["ua"], m["ra"], m["ta"], m["forget_test_accuracy"]) == pytest.approx((0.75, 0.8, 0.5, 0.0))
    assert 0.0 <= m["mia_efficacy"] <= 1.0
    retrain = {"ua": 1.0, "ra": 0.9, "ta": 0.6, "mia_efficacy": 1.0}
    mine = {"ua": 0.75, "ra": 0.8, "ta": 0.5, "mia_efficacy": 0.5}
    assert avg_gap(mine, retrain) == pytest.approx((0.25 + 0.1 + 0.1 + 0.5) / 4)
    assert avg_gap(retrain, retrain) == 0.0


def test_forget_quality_is_the_ks_pvalue_and_loss_invariant() -> None:
    rng = np.random.default_rng(0)
    unlearned = _rows_with_confidence(rng.uniform(0.01, 0.3, 50).tolist())
    retrain = _rows_with_confidence(rng.uniform(0.01, 0.1, 40).tolist())
    fq = forget_quality(unlearned, retrain)
    assert fq == pytest.approx(stats.ks_2samp(unlearned.confidence, retrain.confidence).pvalue)
    assert fq == pytest.approx(stats.ks_2samp(unlearned.loss, retrain.loss).pvalue)  # loss = -log confidence
    assert forget_quality(retrain, retrain) == 1.0
    assert forget_quality(_rows_with_confidence([0.99] * 40), retrain) < 1e-10  # not forgotten at all


def test_model_utility_is_the_harmonic_mean() -> None:
    assert model_utility(0.9, 0.6) == pytest.approx(2 * 0.9 * 0.6 / 1.5)
    assert model_utility(1.0, 1.0) == 1.0
    assert model_utility(0.0, 0.8) == 0.0
