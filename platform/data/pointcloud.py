"""``PointCloudSet``: a labelled set of equally sized point clouds held in memory as numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PointCloudSet"]


@dataclass
class PointCloudSet:
    """An in-memory labelled point-cloud dataset (one split of one dataset).

    Attributes:
        points: ``(M, N, 3)`` float32 coordinates, ``M`` clouds of ``N`` points, in the units of the source
            (ModelNet40 and ScanObjectNN files are already roughly in the unit sphere).
        labels: ``(M,)`` int64 class indices into ``class_names`` (``0 <= label < len(class_names)``).
        class_names: names of all classes, in label order; may list classes that have no sample here.
        normals: optional ``(M, N, 3)`` float32 unit surface normals, row-aligned with ``points``.
        seg: optional ``(M, N)`` int64 per-point labels (part ids for ShapeNetPart), row-aligned with
            ``points``; their meaning is the dataset's (e.g. ShapeNetPart's global part ids 0..49).

    Inputs are converted to those dtypes on construction (a copy only where the dtype differs).

    Raises:
        ValueError: shapes that disagree, a label outside ``[0, len(class_names))``, or a non-integer
            ``seg``.
    """

    points: np.ndarray
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)
    normals: np.ndarray | None = None
    seg: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.float32)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.class_names = [str(c) for c in self.class_names]
        if self.points.ndim != 3 or self.points.shape[-1] != 3:
            raise ValueError(f"points must have shape (M, N, 3), got {self.points.shape}")
        if self.labels.shape != (self.points.shape[0],):
            raise ValueError(f"labels must have shape ({self.points.shape[0]},), got {self.labels.shape}")
        if self.normals is not None:
            self.normals = np.asarray(self.normals, dtype=np.float32)
            if self.normals.shape != self.points.shape:
                raise ValueError(f"normals must have the shape of points {self.points.shape}, got {self.normals.shape}")
        if self.seg is not None:
            seg = np.asarray(self.seg)
            if seg.shape != self.points.shape[:2] or not (np.issubdtype(seg.dtype, np.integer) or seg.size == 0):
                raise ValueError(
                    f"seg must be integers of shape {self.points.shape[:2]} (one label per point), "
                    f"got {seg.dtype} {seg.shape}"
                )
            self.seg = seg.astype(np.int64, copy=False)
        if self.labels.size and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError(
                f"labels must lie in [0, {len(self.class_names)}) (one per class name), "
                f"got [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        """Number of clouds ``M``."""
        return int(self.points.shape[0])

    @property
    def num_points(self) -> int:
        """Points per cloud ``N``."""
        return int(self.points.shape[1])

    @property
    def num_classes(self) -> int:
        """``len(class_names)``."""
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """``(len(class_names),)`` int64: how many clouds of each class this set holds."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> PointCloudSet:
        """A new set holding the clouds at ``indices`` (integer indices, in that order, or a ``(M,)`` bool
        mask); arrays are copied, ``class_names`` kept.

        Raises:
            IndexError: an index out of range or a mask of the wrong length.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        return PointCloudSet(
            points=self.points[idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            normals=None if self.normals is None else self.normals[idx],
            seg=None if self.seg is None else self.seg[idx],
        )

    def without_normals(self) -> PointCloudSet:
        """The same set with ``normals=None`` (arrays shared, not copied; ``seg`` kept)."""
        return PointCloudSet(self.points, self.labels, list(self.class_names), None, self.seg)
