"""``build_datasets``: from a :class:`DataConfig` to the train / validation / test torch datasets."""

from __future__ import annotations

from dataclasses import dataclass

from pointtune.data.cache import cached_splits
from pointtune.data.config import DataConfig
from pointtune.data.dataset import PointCloudDataset
from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.registry import get_dataset_loader
from pointtune.data.splits import filter_classes, train_val_split
from pointtune.data.transforms import (
    Compose,
    Jitter,
    NormalizeUnitSphere,
    RandomScale,
    RandomTranslate,
    RotateUp,
    Shuffle,
    Subsample,
    fps_subsample_set,
)

__all__ = ["DatasetBundle", "build_datasets", "build_transform"]

UP_AXIS = 1  # y: the up axis of ModelNet40 and ScanObjectNN (and of the synthetic shapes' canonical pose)


@dataclass
class DatasetBundle:
    """What a training run needs from the data.

    Attributes:
        train: the training split minus the validation clouds, with training transforms (augmentation,
            ``data.sampling``).
        val: the validation clouds carved from the training split (:func:`train_val_split`), evaluation
            transforms; empty only when ``data.val_fraction`` is 0. Model selection uses this, never
            ``test``.
        test: the official test split, evaluation transforms.
        train_eval: the same clouds as ``train`` with evaluation transforms (deterministic features for
            protocols that fit a classifier on the training split, e.g. the linear SVM).
        class_names: names in label order (after ``data.classes`` filtering).
        num_classes: ``len(class_names)``.
    """

    train: PointCloudDataset
    val: PointCloudDataset
    test: PointCloudDataset | None
    train_eval: PointCloudDataset
    class_names: list[str]
    num_classes: int


def build_transform(cfg: DataConfig, train: bool, presampled: bool = False) -> Compose:
    """The per-item transform of a training (``train=True``) or evaluation item.

    Training: ``Subsample(num_points, sampling)``, ``NormalizeUnitSphere`` (if ``normalize``), then the
    augmentations of ``cfg.augment`` in :class:`AugmentConfig`'s order (each left out when it is a no-op).
    Evaluation: ``Subsample(num_points, 'fps' if sampling == 'fps' else 'first')`` and the normalisation;
    deterministic. ``presampled=True`` (the clouds already hold exactly the sampled points, e.g. after
    :func:`fps_subsample_set`) subsamples with ``first``.
    """
    if presampled:
        method = "first"
    elif train:
        method = cfg.sampling
    else:
        method = "fps" if cfg.sampling == "fps" else "first"
    steps: list = [Subsample(cfg.num_points, method)]
    if cfg.normalize:
        steps.append(NormalizeUnitSphere())
    if train:
        aug = cfg.augment
        if aug.rotate_up and aug.rotate_range_deg > 0:
            steps.append(RotateUp(UP_AXIS, aug.rotate_range_deg))
        if not aug.scale_low == aug.scale_high == 1.0:
            steps.append(RandomScale(aug.scale_low, aug.scale_high))
        if aug.translate > 0:
            steps.append(RandomTranslate(aug.translate))
        if aug.jitter_sigma > 0:
            steps.append(Jitter(aug.jitter_sigma, aug.jitter_clip))
        if aug.shuffle:
            steps.append(Shuffle())
    return Compose(steps)


def _check_points(cfg: DataConfig, split: str, pcs: PointCloudSet) -> None:
    if len(pcs) and pcs.num_points < cfg.num_points:
        raise DatasetError(
            f"data.num_points: {cfg.num_points} points asked, but the {split} clouds of dataset {cfg.name!r} "
            f"have {pcs.num_points}"
        )


def build_datasets(cfg: DataConfig) -> DatasetBundle:
    """Read the dataset ``cfg.name`` and build its training, validation and test datasets.

    Steps: the registered loader reads the official train and test splits; ``cfg.classes`` filters both
    (labels re-indexed); :func:`train_val_split` (``val_fraction``, ``split_seed``) carves the validation
    set out of the training split, so the test split is never used for model selection; normals are dropped
    unless ``use_normals``; with ``sampling='fps'`` every cloud is farthest-point-subsampled once here
    (batched). Those splits are kept on disk for later calls with the same data config
    (:func:`~pointtune.data.cache.cached_splits`, ``data.cache``). Each split is wrapped in a
    :class:`PointCloudDataset` (seed ``split_seed``) with :func:`build_transform`.

    Args:
        cfg: the ``data`` section of an experiment config.

    Returns:
        A :class:`DatasetBundle` whose items hold ``points`` ``(num_points, 3)`` float32, ``label`` and
        ``index`` 0-d int64, ``normals`` ``(num_points, 3)`` float32 if ``use_normals``, and ``seg``
        ``(num_points,)`` int64 per-point labels for datasets that have them (ShapeNetPart's part ids).

    Raises:
        DatasetError: unknown ``data.name`` (lists the known names), ``data.root`` missing for a dataset
            that needs it, anything the reader rejects (missing or corrupt files, wrong keys or shapes),
            an unknown class in ``data.classes``, an empty training split, a positive ``val_fraction`` that
            selects no cloud, ``num_points`` larger than the clouds, or ``use_normals`` on a dataset without
            normals. One line each.
    """
    splits = cached_splits(cfg, lambda: _build_splits(cfg))
    presampled = cfg.sampling == "fps"
    train_tf = build_transform(cfg, train=True, presampled=presampled)
    eval_tf = build_transform(cfg, train=False, presampled=presampled)
    seed = cfg.split_seed
    train, val, test = splits["train"], splits["val"], splits["test"]
    return DatasetBundle(
        train=PointCloudDataset(train, train_tf, train=True, seed=seed),
        val=PointCloudDataset(val, eval_tf, train=False, seed=seed),
        test=PointCloudDataset(test, eval_tf, train=False, seed=seed),
        train_eval=PointCloudDataset(train, eval_tf, train=False, seed=seed),
        class_names=list(train.class_names),
        num_classes=len(train.class_names),
    )


def _build_splits(cfg: DataConfig) -> dict[str, PointCloudSet]:
    """Read, filter, check and split the dataset (FPS-subsampled with ``sampling='fps'``): the part of
    :func:`build_datasets` that :mod:`pointtune.data.cache` keeps on disk."""
    train_full, test = get_dataset_loader(cfg.name)(cfg)
    if cfg.classes is not None:
        try:
            train_full = filter_classes(train_full, cfg.classes)
            test = filter_classes(test, cfg.classes)
        except DatasetError as err:
            msg = str(err)
            raise DatasetError(msg if msg.startswith("data.classes") else f"data.classes: {msg}") from None
    if len(train_full) == 0:
        raise DatasetError(f"data: dataset {cfg.name!r} has no training clouds (after data.classes filtering)")
    _check_points(cfg, "train", train_full)
    _check_points(cfg, "test", test)
    if cfg.use_normals:
        if train_full.normals is None or test.normals is None:
            raise DatasetError(f"data.use_normals: dataset {cfg.name!r} has no normals; set data.use_normals=false")
    else:
        train_full, test = train_full.without_normals(), test.without_normals()
    train, val = train_val_split(train_full, cfg.val_fraction, cfg.split_seed)
    if cfg.val_fraction > 0 and len(val) == 0:
        raise DatasetError(
            f"data.val_fraction: {cfg.val_fraction} of the {len(train_full)} training clouds of dataset "
            f"{cfg.name!r} gives no validation cloud (per class round(val_fraction * n), and only classes with "
            "n >= 2 give any); raise it, or set it to 0 for no validation split"
        )
    if cfg.sampling == "fps":
        train, val, test = (fps_subsample_set(s, cfg.num_points) for s in (train, val, test))
    return {"train": train, "val": val, "test": test}

