"""``SceneDataset``: fixed-size crops of scenes as torch items, ``collate_scenes``, and whole-scene test items.

Batching design: every training and validation item has exactly ``max_points`` rows. The pipeline per item
is the PointNeXt one::

    scene --GridSample(voxel_size)--> one point per voxel --SphereCrop(max_points)--> at most max_points
          --transform (augmentation, colour normalisation, height)--> PadPoints(max_points): exactly max_points

Padding repeats random real points with ``seg = IGNORE_INDEX`` (-1) and ``mask = False``, so losses that
ignore -1 and metrics that read ``mask`` skip them, and :func:`collate_scenes` simply stacks items into
``(B, N, ...)`` tensors. This works unchanged through ``DataLoader`` workers, ``DistributedSampler`` and Ray
Train's ``prepare_data_loader``. Whole-scene testing uses :meth:`SceneDataset.test_items`: the grid passes
of every scene, each split into fixed-size crops that together cover every point, voted back to the
original points through ``point_index``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from pointtune.data.dataset import ItemStreams
from pointtune.data.scene_transforms import GridSample, PadPoints, SceneTransform, SphereCrop, select_points
from pointtune.data.scenes import SceneSet

__all__ = ["SceneDataset", "collate_scenes", "ITEM_KEYS"]

#: Item key of each sample key (pointtune batches call coordinates ``points`` and labels ``seg``).
ITEM_KEYS = {"coord": "points", "color": "color", "height": "height", "normal": "normals", "segment": "seg",
             "instance": "instance", "mask": "mask", "point_index": "point_index"}
_DTYPES = {"points": np.float32, "color": np.float32, "height": np.float32, "normals": np.float32,
           "seg": np.int64, "instance": np.int64, "mask": np.bool_, "point_index": np.int64}


class SceneDataset(Dataset, ItemStreams):
    """Fixed-size items of the scenes of a :class:`SceneSet`, each scene ``loop`` times per epoch.

    Item ``i`` (scene ``i % len(scenes)``) is a dict of tensors with ``N = max_points`` rows::

        points      (N, 3) float32   coordinates in metres after the transform
        color       (N, 3) float32   colours after the transform (0..255 unless it normalises them)
        seg         (N,)   int64     class in [0, C) or IGNORE_INDEX (-1): unlabelled or padding points
        mask        (N,)   bool      True for real points, False for padding
        point_index (N,)   int64     the row of the scene (as read) each point came from
        index       ()     int64     the scene's position in ``scenes``
        height      (N, 1) float32   when the transform adds it (HeightFeature)
        normals     (N, 3) float32   when the scenes have normals
        instance    (N,)   int64     when the scenes have instance ids (-1 for padding)

    Steps (module docstring): ``GridSample(voxel_size)`` (training: a random point per voxel; evaluation:
    the first) if ``voxel_size``; ``SphereCrop(max_points)`` (training: a random centre; evaluation: the
    middle) and finally ``PadPoints(max_points)`` if ``max_points``; ``transform`` in between. Without
    ``max_points`` items keep their size and only batch size 1 collates.

    Random streams (as :class:`~pointtune.data.dataset.PointCloudDataset`): evaluation items use
    ``default_rng([seed, i])``; training items ``default_rng([seed, epoch, i, visit, torch.initial_seed()])``
    with ``epoch`` from :meth:`set_epoch` and ``visit`` counting this process's earlier fetches of ``i``
    since then, so each of the ``loop`` repeats of a scene, each epoch and each worker draws afresh.

    Args:
        scenes: the scenes (in memory or lazy).
        transform: ``(sample, rng) -> sample`` (:mod:`pointtune.data.scene_transforms`), or ``None``.
        voxel_size: grid size in metres, or ``None`` for no grid sampling.
        max_points: points per item, or ``None`` (variable size).
        train: training randomness and crops, or the deterministic evaluation ones.
        loop: repeats of every scene per epoch (>= 1; AMContrast3D: 30 on S3DIS, 6 on ScanNet).
        seed: non-negative base seed.

    Raises:
        ValueError: ``loop < 1``, ``seed < 0``, ``voxel_size <= 0`` or ``max_points < 1``.
    """

    def __init__(self, scenes: SceneSet, transform: SceneTransform | None = None, *, voxel_size: float | None = None,
                 max_points: int | None = None, train: bool = False, loop: int = 1, seed: int = 0):
        if loop < 1:
            raise ValueError(f"loop must be >= 1, got {loop}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.scenes = scenes
        self.transform = transform
        self.loop = int(loop)
        self._init_streams(self.loop * len(scenes), train, seed)
        self.voxel_size = None if voxel_size is None else float(voxel_size)
        self.max_points = None if max_points is None else int(max_points)
        self._grid = None if voxel_size is None else GridSample(voxel_size, "train" if train else "test")
        self._crop = None if max_points is None else SphereCrop(max_points, "random" if train else "middle")
        self._pad = None if max_points is None else PadPoints(max_points)

    @property
    def class_names(self) -> list[str]:
        """``scenes.class_names``."""
        return self.scenes.class_names

    @property
    def num_classes(self) -> int:
        """``len(class_names)``."""
        return self.scenes.num_classes

    def __len__(self) -> int:
        """``loop * len(scenes)``."""
        return self.loop * len(self.scenes)

    def limited(self, count: int) -> SceneDataset:
        """The same dataset (transform, crops, ``loop``, streams) over its first ``min(count, len(scenes))``
        scenes (``train.limit_batches``).

        Raises:
            ValueError: ``count < 1``.
        """
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        return SceneDataset(self.scenes.subset(range(min(count, len(self.scenes)))), self.transform,
                            voxel_size=self.voxel_size, max_points=self.max_points, train=self.train, loop=self.loop,
                            seed=self.seed)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` (negative counts from the end); see the class docstring.

        Raises:
            IndexError: ``index`` out of range.
            DatasetError: a lazily read scene whose files are unusable.
        """
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        scene = index % len(self.scenes)
        rng = self.rng(index)
        sample = self.scenes[scene]
        if self._grid is None:
            sample = select_points(sample, np.arange(len(sample["coord"])))
        else:
            sample = self._grid(sample, rng)
        sample.pop("inverse", None)
        if self._crop is not None:
            sample = self._crop(sample, rng)
        if self.transform is not None:
            sample = self.transform(sample, rng)
        if self._pad is not None:
            sample = self._pad(sample, rng)
        return _to_item(sample, scene)

    def test_items(self, scene: int, max_passes: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Whole-scene test items of scene ``scene``: every point of the scene is in at least one of them.

        The scene's grid passes (:meth:`GridSample.passes`: pass ``p`` keeps the ``p``-th point of every
        voxel; one pass of all points without ``voxel_size``), each split into crops of ``max_points`` points
        that cover it (:meth:`SphereCrop.cover`; the whole pass without ``max_points``), each passed through
        ``transform`` with the evaluation stream and padded. Vote predictions back with
        ``votes[item["point_index"][item["mask"]]] += probs[item["mask"]]`` over all items and take the
        argmax: the metric is then on every original point (the PointNeXt protocol).

        Args:
            scene: position in ``scenes`` (not an item index).
            max_passes: at most this many grid passes (``None``: all, full coverage).

        Returns:
            Items as :meth:`__getitem__`'s (``index`` = ``scene``), all of ``max_points`` rows when it is set.

        Raises:
            IndexError: ``scene`` out of range.
        """
        if not 0 <= scene < len(self.scenes):
            raise IndexError(f"scene {scene} out of range for {len(self.scenes)} scenes")
        sample = self.scenes[scene]
        if self._grid is None:
            passes = [select_points(sample, np.arange(len(sample["coord"])))]
        else:
            passes = GridSample(self.voxel_size, "test").passes(sample, max_passes)
        cover = SphereCrop(self.max_points) if self.max_points is not None else None
        rng = np.random.default_rng([self.seed, scene, 1])
        items = []
        for part in passes:
            part.pop("inverse", None)
            for crop in (cover.cover(part) if cover is not None else [part]):
                if self.transform is not None:
                    crop = self.transform(crop, rng)
                if self._pad is not None:
                    crop = self._pad(crop, rng)
                items.append(_to_item(crop, scene))
        return items

    def __repr__(self) -> str:
        return (f"SceneDataset({len(self.scenes)} scenes x loop {self.loop}, voxel_size={self.voxel_size}, "
                f"max_points={self.max_points}, train={self.train})")


def _to_item(sample: dict[str, np.ndarray], scene: int) -> dict[str, torch.Tensor]:
    """Tensors of the sample's per-point keys under their item names (:data:`ITEM_KEYS`), a ``mask`` of
    ones when there is none, and ``index``."""
    n = len(sample["coord"])
    if "mask" not in sample:
        sample = {**sample, "mask": np.ones(n, dtype=bool)}
    item = {}
    for key, name in ITEM_KEYS.items():
        if key in sample:
            item[name] = torch.from_numpy(np.ascontiguousarray(sample[key], dtype=_DTYPES[name]))
    item["index"] = torch.tensor(scene, dtype=torch.int64)
    return item


def collate_scenes(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack fixed-size scene items into a batch.

    Args:
        items: :class:`SceneDataset` items, all with the same keys and the same number of points ``N``.

    Returns:
        ``{key: (B, ...)}``: ``points`` (B, N, 3), ``color`` (B, N, 3), ``seg`` (B, N), ``mask`` (B, N),
        ``point_index`` (B, N), ``index`` (B,), and ``height`` (B, N, 1) / ``normals`` / ``instance`` when the
        items have them.

    Raises:
        ValueError: no items, items with different keys, or different sizes (a dataset without
            ``max_points`` batches only one item at a time).
    """
    if not items:
        raise ValueError("collate_scenes needs at least one item")
    keys = set(items[0])
    for item in items[1:]:
        if set(item) != keys:
            raise ValueError(f"collate_scenes: items with different keys {sorted(keys)} and {sorted(item)}")
    sizes = sorted({int(item["points"].shape[0]) for item in items})
    if len(sizes) > 1:
        raise ValueError(f"collate_scenes: items of {', '.join(map(str, sizes))} points; set max_points so that "
                         "every item has the same size (or use batch size 1)")
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}

