"""``PointCloudDataset``: a torch ``Dataset`` of transformed items from a :class:`PointCloudSet`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.transforms import Transform

__all__ = ["PointCloudDataset"]


class PointCloudDataset(Dataset):
    """Items of a :class:`PointCloudSet` passed through a transform, as dicts of tensors.

    Item ``i`` is ``{"points": (P, 3) float32, "label": () int64, "index": () int64}`` plus
    ``"normals": (P, 3) float32`` when ``pcs.normals`` is not ``None`` (``build_datasets`` drops normals
    unless ``data.use_normals``); ``P`` is whatever the transform returns (``data.num_points``), ``index``
    is ``i``.

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
        transform: ``(points, normals, rng) -> (points, normals)``; ``None`` returns clouds unchanged.
        train: draw fresh training randomness (see above) or the fixed evaluation stream.
        seed: non-negative base seed of every stream.
    """

    def __init__(self, pcs: PointCloudSet, transform: Transform | None = None, train: bool = False, seed: int = 0):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.pcs = pcs
        self.transform = transform
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self._visits = np.zeros(len(pcs), dtype=np.int64)

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

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (>= 0) of the training streams; resets the per-item visit counts."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)
        self._visits[:] = 0

    def rng(self, index: int) -> np.random.Generator:
        """The generator item ``index`` is transformed with now (training: advances its visit count)."""
        if not self.train:
            return np.random.default_rng([self.seed, index])
        visit = int(self._visits[index])
        self._visits[index] += 1
        return np.random.default_rng([self.seed, self.epoch, index, visit, torch.initial_seed()])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` (``0 <= index < M``; negative indices count from the end) as a dict of tensors.

        Raises:
            IndexError: ``index`` out of range.
        """
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} clouds")
        points = self.pcs.points[index]
        normals = None if self.pcs.normals is None else self.pcs.normals[index]
        if self.transform is not None:
            points, normals = self.transform(points, normals, self.rng(index))
        item = {
            "points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            "label": torch.tensor(int(self.pcs.labels[index]), dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if normals is not None:
            item["normals"] = torch.from_numpy(np.ascontiguousarray(normals, dtype=np.float32))
        return item
