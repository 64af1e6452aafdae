"""Classification metrics from a confusion matrix: OA, mAcc, per-class accuracy, macro F1.

All functions take a confusion matrix ``C`` of shape ``(K, K)`` with ``C[t, p]`` = number of samples of
true class ``t`` predicted as ``p``. Classes absent from the evaluated set (row sum 0) are left out of the
class means (mAcc, macro F1), as in the usual ModelNet40 / ScanObjectNN evaluation scripts.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Count matrix ``(K, K)`` int64 from true labels and predictions, both int ``(M,)`` in ``[0, K)``.

    Raises:
        ValueError: shapes differ or a value lies outside ``[0, K)``.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    preds = np.asarray(preds, dtype=np.int64).ravel()
    if labels.shape != preds.shape:
        raise ValueError(f"labels {labels.shape} and preds {preds.shape} differ in shape")
    for name, arr in (("labels", labels), ("preds", preds)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} outside [0, {num_classes}): min {arr.min()}, max {arr.max()}")
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall of each class ``(K,)`` float; NaN for classes with no samples."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def classification_metrics(cm: np.ndarray) -> dict[str, float]:
    """``OA`` (overall accuracy), ``mAcc`` (mean per-class accuracy) and ``F1`` (macro F1), in ``[0, 1]``.

    F1 of class ``k`` is ``2 TP / (2 TP + FP + FN)``; the macro mean runs over classes present in the labels.
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    present = cm.sum(1) > 0
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)  # 2TP + FP + FN
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return {
        "OA": float(tp.sum() / total) if total else float("nan"),
        "mAcc": float(np.nanmean(per_class_accuracy(cm)[present])) if present.any() else float("nan"),
        "F1": float(f1[present].mean()) if present.any() else float("nan"),
    }


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: str, title: str = "") -> None:
    """Save a row-normalised confusion-matrix heat map (PNG) to ``path``; counts are printed when K <= 15."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(1, keepdims=True))
    size = max(4.0, 0.35 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
        for t in range(k):
            for p in range(k):
                ax.text(p, t, int(cm[t, p]), ha="center", va="center", fontsize=7,
                        color="white" if norm[t, p] > 0.5 else "black")
    ax.set_title(title or "confusion matrix (rows normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
