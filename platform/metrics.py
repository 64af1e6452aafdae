"""Classification metrics from a confusion matrix: OA, mAcc, per-class accuracy, macro F1; the part
segmentation mIoU of PointNet (:func:`shape_part_ious`, :func:`part_seg_metrics`); and the semantic (scene)
segmentation mIoU of PointNeXt / Pointcept from a point confusion matrix (:func:`class_iou`,
:func:`semantic_seg_metrics`).

The classification functions take a confusion matrix ``C`` of shape ``(K, K)`` with ``C[t, p]`` = number of
samples of true class ``t`` predicted as ``p``. Classes absent from the evaluated set (row sum 0) are left out
of the class means (mAcc, macro F1), as in the usual ModelNet40 / ScanObjectNN evaluation scripts.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def shape_part_ious(preds: np.ndarray, labels: np.ndarray, parts: Sequence[int]) -> np.ndarray:
    """Per-shape IoU of part segmentation, as PointNet defines it (Qi et al. 2017, ``part_seg/test.py``;
    SCL spec A13): for each part id ``p`` of the shapes' category, ``IoU_p = |pred == p and label == p| /
    |pred == p or label == p|``, counted as 1 when the part is absent from both the prediction and the truth;
    the shape's IoU is the mean of ``IoU_p`` over the category's parts (predicted ids outside ``parts`` only
    lower the IoUs of the parts they were taken from).

    Args:
        preds: ``(M, N)`` or ``(N,)`` integer predicted part ids of ``M`` shapes of one category.
        labels: same shape, the true part ids.
        parts: the category's part ids (e.g. ShapeNetPart's global ids, ``SHAPENETPART_SEG_CLASSES``),
            non-empty.

    Returns:
        ``(M,)`` float64 in ``[0, 1]`` (``(1,)`` for a single shape).

    Raises:
        ValueError: ``preds`` and ``labels`` differ in shape or are not 1-D / 2-D, or ``parts`` is empty.
    """
    preds, labels = np.asarray(preds), np.asarray(labels)
    if preds.shape != labels.shape or preds.ndim not in (1, 2):
        raise ValueError(f"preds {preds.shape} and labels {labels.shape}: expected the same shape, (M, N) or (N,)")
    parts = [int(p) for p in parts]
    if not parts:
        raise ValueError("parts is empty: a category needs at least one part id")
    preds, labels = np.atleast_2d(preds), np.atleast_2d(labels)  # (N,) -> (1, N)
    ious = np.empty((preds.shape[0], len(parts)), dtype=np.float64)
    for j, part in enumerate(parts):
        p, t = preds == part, labels == part
        inter, union = (p & t).sum(1), (p | t).sum(1)
        ious[:, j] = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return ious.mean(1)


def part_seg_metrics(shape_ious: np.ndarray, categories: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """PointNet's part-segmentation summary of per-shape IoUs (:func:`shape_part_ious`).

    ``ins_miou``: the mean over all shapes (instance mIoU, the "mean" column of PointNet / the SCL paper's
    Table 2); ``cls_miou``: the mean over the categories present of each category's mean shape IoU (class
    mIoU); ``iou/<name>``: each present category's mean shape IoU.

    Args:
        shape_ious: ``(M,)`` per-shape IoUs.
        categories: ``(M,)`` integer category of every shape, an index into ``names``.
        names: category names.

    Returns:
        ``{"ins_miou", "cls_miou", "iou/<name>" per category present}``, floats in ``[0, 1]``.

    Raises:
        ValueError: no shape, shapes and categories of different lengths, or a category outside ``names``.
    """
    ious = np.asarray(shape_ious, dtype=np.float64).ravel()
    cats = np.asarray(categories, dtype=np.int64).ravel()
    if ious.size == 0 or ious.shape != cats.shape:
        raise ValueError(f"need one category per shape and at least one shape, got {ious.size} IoUs and "
                         f"{cats.size} categories")
    if cats.min() < 0 or cats.max() >= len(names):
        raise ValueError(f"categories outside [0, {len(names)}): min {cats.min()}, max {cats.max()}")
    per_cat = {names[c]: float(ious[cats == c].mean()) for c in np.unique(cats)}
    return {"ins_miou": float(ious.mean()), "cls_miou": float(np.mean(list(per_cat.values()))),
            **{f"iou/{name}": value for name, value in per_cat.items()}}


def class_iou(cm: np.ndarray) -> np.ndarray:
    """Intersection over union of every class of a confusion matrix ``C`` ``(K, K)`` (``C[t, p]`` = points of
    true class ``t`` predicted as ``p``): ``IoU_k = TP_k / (TP_k + FP_k + FN_k)`` with ``TP_k = C[k, k]``,
    ``FP_k`` the rest of column ``k`` and ``FN_k`` the rest of row ``k`` (the definition of the ScanNet benchmark,
    PointNeXt and Pointcept).

    Returns:
        ``(K,)`` float64 in ``[0, 1]``; NaN for classes absent from the ground truth (row sum 0), whose IoU
        no mean counts (a class only predicted still lowers the IoU of the classes its points came from).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cm.sum(1) > 0, tp / np.maximum(union, 1.0), np.nan)


def semantic_seg_metrics(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Semantic segmentation figures of a point confusion matrix (labelled points only; the ignore label is
    left out before counting), as PointNeXt and Pointcept report them, restricted as the AMContrast3D issue
    asks to the classes present in the ground truth of the scored split.

    ``mIoU``: the mean of :func:`class_iou` over the classes present; ``OA``: correct points / labelled
    points; ``mAcc``: the mean recall (:func:`per_class_accuracy`) over the classes present;
    ``iou/<name>``: each present class's IoU.

    Args:
        cm: ``(K, K)`` counts, ``C[t, p]`` as :func:`confusion_matrix`.
        class_names: ``K`` names in label order.

    Returns:
        ``{"mIoU", "OA", "mAcc", "iou/<name>" per present class}``, floats in ``[0, 1]`` (NaN for the first
        three when ``cm`` counts no point).

    Raises:
        ValueError: ``cm`` is not square or does not have ``len(class_names)`` rows.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {len(class_names)} classes; expected "
                         f"({len(class_names)}, {len(class_names)})")
    present = cm.sum(1) > 0
    iou = class_iou(cm)
    total = cm.sum()
    nan = float("nan")
    return {
        "mIoU": float(iou[present].mean()) if present.any() else nan,
        "OA": float(np.trace(cm) / total) if total else nan,
        "mAcc": float(per_class_accuracy(cm)[present].mean()) if present.any() else nan,
        **{f"iou/{class_names[k]}": float(iou[k]) for k in np.flatnonzero(present)},
    }
