"""Class filtering and the seeded, stratified train/validation split.

ModelNet40 and ScanObjectNN ship only a train and a test split. Hyperparameter search needs a validation
split that is not the test split, so pointtune carves it out of the training split with
:func:`train_val_split`; the test split is only ever used for the final report, never for model selection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet

__all__ = ["filter_classes", "train_val_split"]


def filter_classes(ds: PointCloudSet, classes: Sequence[str]) -> PointCloudSet:
    """Keep only the clouds of ``classes`` and re-index their labels.

    Args:
        ds: any set.
        classes: class names of ``ds.class_names``, non-empty, without repeats; the new label of
            ``classes[i]`` is ``i``.

    Returns:
        A new set (sample order kept) with ``labels`` in ``[0, len(classes))`` and ``class_names`` equal to
        ``list(classes)``.

    Raises:
        DatasetError: an empty list, a repeated name, or a name ``ds`` does not know (the message names it
            and lists the known names).
    """
    classes = [str(c) for c in classes]
    if not classes:
        raise DatasetError("data.classes: empty class list (give at least one class name)")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise DatasetError(f"data.classes: class {repeated[0]!r} is listed more than once")
    known = {name: i for i, name in enumerate(ds.class_names)}
    for name in classes:
        if name not in known:
            raise DatasetError(f"unknown class {name!r} (known classes: {', '.join(ds.class_names)})")
    old_to_new = np.full(len(ds.class_names), -1, dtype=np.int64)
    old_to_new[[known[c] for c in classes]] = np.arange(len(classes))
    keep = np.flatnonzero(old_to_new[ds.labels] >= 0)
    out = ds.subset(keep)
    return PointCloudSet(out.points, old_to_new[out.labels], classes, out.normals, out.seg)


def train_val_split(ds: PointCloudSet, val_fraction: float, seed: int, *, at_least_one: bool = False,
                    stream: int | None = None) -> tuple[PointCloudSet, PointCloudSet]:
    """Split a training set into train and validation parts, stratified by class and seeded.

    The datasets pointtune reads ship no validation split, and their test split must never be used for
    model selection (that would leak the test set into the hyperparameter search); this is where the
    validation split comes from.

    Per class with ``n`` clouds, ``round(val_fraction * n)`` (half up) go to validation, at most ``n - 1``
    so that every class with at least 2 clouds keeps one in train; a class with one cloud stays in train.
    Which clouds go is a permutation from ``np.random.default_rng([seed, class index])``: the split
    depends only on ``(seed, the class's clouds)``, is identical on every machine and every call, and
    does not change when other classes are added or removed.

    Args:
        ds: the training split.
        val_fraction: in ``[0, 1)``; 0 gives an empty validation set.
        seed: any non-negative int.
        at_least_one: every class with at least 2 clouds puts at least one in the second part (a test split
            carved the same way: :func:`pointtune.data.sources.seeded_test_split`).
        stream: a further key of the permutations, so that another split of the same clouds is independent.

    Returns:
        ``(train, val)``: disjoint subsets of ``ds`` covering it, each in the original sample order, with
        ``ds.class_names``.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)`` or a negative ``seed``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    is_val = np.zeros(len(ds), dtype=bool)
    for cls in np.unique(ds.labels):
        members = np.flatnonzero(ds.labels == cls)
        n = members.size
        share = int(np.floor(val_fraction * n + 0.5))
        n_val = min(max(share, 1) if at_least_one else share, n - 1) if n >= 2 else 0
        if n_val:
            key = [seed, int(cls)] if stream is None else [seed, int(cls), stream]
            is_val[np.random.default_rng(key).permutation(members)[:n_val]] = True
    return ds.subset(~is_val), ds.subset(is_val)
