"""OA, mAcc, macro F1 and the confusion matrix against direct counting."""

import numpy as np
import pytest

from pointtune.metrics import classification_metrics, confusion_matrix, per_class_accuracy


def test_metrics_match_direct_counting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    preds = np.where(rng.random(200) < 0.7, labels, rng.integers(0, 4, 200))
    cm = confusion_matrix(labels, preds, 4)
    assert cm.sum() == 200 and cm[1, 2] == np.sum((labels == 1) & (preds == 2))
    m = classification_metrics(cm)
    assert m["OA"] == pytest.approx(np.mean(labels == preds))
    recalls = [np.mean(preds[labels == k] == k) for k in range(4)]
    assert m["mAcc"] == pytest.approx(np.mean(recalls))
    f1s = []
    for k in range(4):
        tp = np.sum((preds == k) & (labels == k))
        fp = np.sum((preds == k) & (labels != k))
        fn = np.sum((preds != k) & (labels == k))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    assert m["F1"] == pytest.approx(np.mean(f1s))


def test_absent_classes_are_left_out_of_class_means():
    cm = confusion_matrix([0, 0, 1], [0, 1, 1], 3)  # class 2 absent
    assert np.isnan(per_class_accuracy(cm)[2])
    assert classification_metrics(cm)["mAcc"] == pytest.approx((0.5 + 1.0) / 2)


def test_out_of_range_labels_raise():
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 1], 3)
