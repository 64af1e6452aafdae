"""``PointCloudDataset``: a torch ``Dataset`` of transformed items from a :class:`PointCloudSet`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.transforms import Compose, Transform

__all__ = ["ItemStreams", "PointCloudDataset"]


class ItemStreams:
    """The per-item random streams of a dataset whose items are made with fresh randomness (point clouds,
    scene crops): evaluation ``default_rng([seed, i])``; training ``default_rng([seed, epoch, i, visit,
    torch.initial_seed()])``, ``visit`` counting this process's fetches of item ``i`` since :meth:`set_epoch`
    (see :class:`PointCloudDataset` for why each part is there).

    Subclasses call :meth:`_init_streams` with their number of items, ``train`` and ``seed``.
    """

    train: bool
    seed: int
    epoch: int

    def _init_streams(self, count: int, train: bool, seed: int) -> None:
        self.train, self.seed, self.epoch = bool(train), int(seed), 0
        self._visits = np.zeros(count, dtype=np.int64)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (>= 0) of the training streams; resets the per-item visit counts.

        Raises:
            ValueError: ``epoch < 0``.
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self._visits[:] = 0

    def rng(self, index: int) -> np.random.Generator:
        """The generator item ``index`` is made with now (training: advances its visit count)."""
        if not self.train:
            return np.random.default_rng([self.seed, index])
        visit = int(self._visits[index])
        self._visits[index] += 1
        return np.random.default_rng([self.seed, self.epoch, index, visit, torch.initial_seed()])


class PointCloudDataset(Dataset, ItemStreams):
    """Items of a :class:`PointCloudSet` passed through a transform, as dicts of tensors.

    Item ``i`` is ``{"points": (P, 3) float32, "label": () int64, "index": () int64}`` plus
    ``"normals": (P, 3) float32`` when ``pcs.normals`` is not ``None`` (``build_datasets`` drops normals
    unless ``data.use_normals``) and ``"seg": (P,) int64`` when ``pcs.seg`` is not ``None``; ``P`` is
    whatever the transform returns (``data.num_points``), ``index`` is ``i``. ``seg[j]`` is the label of the
    source point that became ``points[j]``: the row-selecting steps (``Shuffle``, ``Subsample``: any step
    with an ``indices`` method, also inside a ``Compose``) are applied to ``seg`` with the same indices, and
    the same random draws are made as without ``seg``.

    Random streams: the transform draws from a fresh ``numpy.random.Generator`` per item.

    * Evaluation (``train=False``): ``default_rng([seed, i])``, the same on every call (evaluation
      transforms are deterministic anyway).
    * Training (``train=True``): ``default_rng([seed, epoch, i, visit, torch.initial_seed()])``, where
      ``epoch`` is set by :meth:`set_epoch` and ``visit`` counts earlier fetches of item ``i`` by this
      process since the last :meth:`set_epoch`. ``torch.initial_seed()`` is the main process's torch seed,
      or in a ``DataLoader`` worker the worker's seed (which torch derives from the main process's RNG each
      epoch and adds the worker id to), so streams differ between epochs, items and workers, and a run
      repeats exactly given its torch seed and epoch (also after resuming: :meth:`set_epoch` resets the
      visit counts). ``visit`` keeps persistent workers, which never see :meth:`set_epoch`, from repeating
      an augmentation.

    Args:
        pcs: the clouds.
        transform: ``(points, normals, rng) -> (points, normals)``; ``None`` returns clouds unchanged. With
            ``seg``, a transform that changes the number of points must expose ``indices`` (see above).
        train: draw fresh training randomness (see above) or the fixed evaluation stream.
        seed: non-negative base seed of every stream.
    """

    def __init__(self, pcs: PointCloudSet, transform: Transform | None = None, train: bool = False, seed: int = 0):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.pcs = pcs
        self.transform = transform
        self._init_streams(len(pcs), train, seed)

    @property
    def class_names(self) -> list[str]:
        """``pcs.class_names``."""
        return self.pcs.class_names

    @property
    def labels(self) -> np.ndarray:
        """``(M,)`` int64 labels of all items (no transform needed)."""
        return self.pcs.labels

    def __len__(self) -> int:
        """Number of clouds ``M``."""
        return len(self.pcs)

    def limited(self, count: int) -> PointCloudDataset:
        """The same dataset (transform, streams) over ``min(count, M)`` of its clouds, spread over the
        classes: the first cloud of every class (in label order), then the second, and so on, each in index
        order (``train.limit_batches``: a few items that still hold several classes).

        Raises:
            ValueError: ``count < 1``.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        labels = np.asarray(self.labels)
        rank = np.zeros(len(labels), dtype=np.int64)              # how many earlier clouds share the class
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            rank[members] = np.arange(len(members))
        order = np.lexsort((labels, rank))[:count]                # by rank, then label
        return PointCloudDataset(self.pcs.subset(np.sort(order)), self.transform, self.train, self.seed)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` (``0 <= index < M``; negative indices count from the end) as a dict of tensors.

        Raises:
            IndexError: ``index`` out of range.
            ValueError: with ``seg``, a transform step without ``indices`` changed the number of points.
        """
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} clouds")
        points = self.pcs.points[index]
        normals = None if self.pcs.normals is None else self.pcs.normals[index]
        seg = None if self.pcs.seg is None else self.pcs.seg[index]
        if self.transform is not None:
            if seg is None:
                points, normals = self.transform(points, normals, self.rng(index))
            else:
                points, normals, seg = _transform_with_seg(self.transform, points, normals, seg, self.rng(index))
        item = {
            "points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            "label": torch.tensor(int(self.pcs.labels[index]), dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if normals is not None:
            item["normals"] = torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32))
        if seg is not None:
            item["seg"] = torch.from_numpy(np.ascontiguousarray(seg, dtype=np.int64))
        return item


def _transform_with_seg(
    transform: Transform, points: np.ndarray, normals: np.ndarray | None, seg: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Run ``transform`` step by step (into nested :class:`Compose`), applying the row indices of every step
    that has ``indices`` (``Shuffle``, ``Subsample``) to ``points``, ``normals`` and ``(N,)`` ``seg`` alike;
    other steps are called as usual and must keep the number of points (else ValueError)."""
    steps = transform.transforms if isinstance(transform, Compose) else [transform]
    for step in steps:
        if isinstance(step, Compose):
            points, normals, seg = _transform_with_seg(step, points, normals, seg, rng)
        elif callable(getattr(step, "indices", None)):
            idx = step.indices(points, rng)
            points, seg = points[idx], seg[idx]
            normals = None if normals is None else normals[idx]
        else:
            n = points.shape[0]
            points, normals = step(points, normals, rng)
            if points.shape[0] != n:
                raise ValueError(
                    f"transform {step!r} turned {n} points into {points.shape[0]} without exposing indices(), "
                    "so per-point seg labels cannot follow"
                )
    return points, normals, seg
