"""``build_datasets``: from a :class:`DataConfig` to the train / validation / test torch datasets, for
point-cloud datasets (:class:`PointCloudDataset` items) and scene datasets (:class:`SceneDataset` items)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pointtune.data.cache import cached_splits
from pointtune.data.config import DataConfig
from pointtune.data.dataset import PointCloudDataset
from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.registry import get_dataset_loader, is_scene_dataset
from pointtune.data.scene_dataset import SceneDataset
from pointtune.data.scene_transforms import (
    S3DIS_COLOR_MEAN,
    S3DIS_COLOR_STD,
    SCANNET_COLOR_MEAN,
    SCANNET_COLOR_STD,
    CenterShift,
    ChromaticAutoContrast,
    ChromaticDrop,
    ChromaticNormalize,
    HeightFeature,
    PointJitter,
    RotateZ,
    ScaleMirror,
    SceneCompose,
)
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

__all__ = ["DatasetBundle", "build_datasets", "build_transform", "build_scene_transform", "COLOR_PRESETS",
           "SplitSummary", "describe_split"]

UP_AXIS = 1  # y: the up axis of ModelNet40 and ScanObjectNN (and of the synthetic shapes' canonical pose)


@dataclass
class DatasetBundle:
    """What a training run needs from the data.

    Attributes:
        train: the training split minus the validation clouds, with training transforms (augmentation,
            ``data.sampling``). Scenes: the training scenes, ``data.loop`` random crops of each per epoch.
        val: the validation clouds carved from the training split (:func:`train_val_split`), evaluation
            transforms; empty only when ``data.val_fraction`` is 0. Model selection uses this, never
            ``test``. Scenes: the validation rooms / scenes, one fixed (middle) crop each.
        test: the official test split, evaluation transforms. Scenes: one fixed crop per test scene (empty
            when the dataset has no test split); whole-scene testing goes through
            :meth:`SceneDataset.test_items`.
        train_eval: the same clouds as ``train`` with evaluation transforms (deterministic features for
            protocols that fit a classifier on the training split, e.g. the linear SVM). Scenes: one fixed
            crop per training scene.
        class_names: names in label order (after ``data.classes`` filtering).
        num_classes: ``len(class_names)``.
        kind: ``"clouds"`` (:class:`PointCloudDataset` splits: a ``label`` per item) or ``"scenes"``
            (:class:`SceneDataset` splits: per-point ``seg`` with -1 for ignored and padding points).
    """

    train: PointCloudDataset | SceneDataset
    val: PointCloudDataset | SceneDataset
    test: PointCloudDataset | SceneDataset | None
    train_eval: PointCloudDataset | SceneDataset
    class_names: list[str]
    num_classes: int
    kind: Literal["clouds", "scenes"] = "clouds"


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


#: ``data.scene_augment.color_norm`` presets: ``(mean, std)`` of colours in [0, 1], or ``None`` for no
#: normalisation (colours stay 0..255).
COLOR_PRESETS = {
    "s3dis": (S3DIS_COLOR_MEAN, S3DIS_COLOR_STD),
    "scannet": (SCANNET_COLOR_MEAN, SCANNET_COLOR_STD),
    "unit": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "none": None,
}


def build_scene_transform(cfg: DataConfig, train: bool) -> SceneCompose:
    """The per-crop transform of a scene dataset's training (``train=True``) or evaluation items.

    The steps of :class:`~pointtune.data.config.SceneAugmentConfig`, with its null knobs from the dataset's
    defaults (:meth:`DataConfig.scene_values`): ``CenterShift`` (unless ``center: none``), ``HeightFeature``
    (if ``height``), then for training ``RotateZ``, ``ScaleMirror``, ``PointJitter``, ``ChromaticAutoContrast``,
    ``ChromaticDrop`` (each left out when it is a no-op), and ``ChromaticNormalize`` of the ``color_norm``
    preset (:data:`COLOR_PRESETS`). Evaluation steps are deterministic. Coordinates stay in metres.

    Args:
        cfg: a scene dataset's ``data`` section.
        train: the training transform, or the evaluation one.

    Returns:
        A :class:`~pointtune.data.scene_transforms.SceneCompose` of ``(sample, rng) -> sample`` steps.

    Raises:
        ValueError: ``cfg.name`` is not a scene dataset.
    """
    values = cfg.scene_values()
    aug = cfg.scene_augment
    steps: list = []
    if aug.center != "none":
        steps.append(CenterShift(xy=aug.center, z_min=True))
    if aug.height:
        steps.append(HeightFeature())
    if train:
        if aug.rotate_z_deg > 0:
            steps.append(RotateZ(aug.rotate_z_deg))
        if not (values["scale_low"] == values["scale_high"] == 1.0 and not any(values["mirror"])):
            steps.append(ScaleMirror(values["scale_low"], values["scale_high"], aug.anisotropic, values["mirror"]))
        if values["jitter_sigma"] > 0:
            steps.append(PointJitter(values["jitter_sigma"], aug.jitter_clip))
        if aug.auto_contrast_p > 0:
            steps.append(ChromaticAutoContrast(aug.auto_contrast_p))
        if aug.color_drop_p > 0:
            steps.append(ChromaticDrop(aug.color_drop_p))
    stats = COLOR_PRESETS[values["color_norm"]]
    if stats is not None:
        steps.append(ChromaticNormalize(*stats))
    return SceneCompose(steps)


def _build_scene_datasets(cfg: DataConfig) -> DatasetBundle:
    """The :class:`DatasetBundle` of a scene dataset: its loader's ``(train, val, test)`` scene sets (never
    cached on disk) as :class:`SceneDataset` objects with ``voxel_size``, ``max_points = num_points`` and seed
    ``split_seed``: ``train`` with the training transform and ``loop``; ``val``, ``test`` and ``train_eval``
    with the evaluation transform, one fixed crop per scene."""
    train, val, test = get_dataset_loader(cfg.name)(cfg)
    if len(train) == 0:
        raise DatasetError(f"data: dataset {cfg.name!r} has no training scenes under {cfg.root}")
    values = cfg.scene_values()
    common = {"voxel_size": values["voxel_size"], "max_points": cfg.num_points, "seed": cfg.split_seed}
    eval_tf = build_scene_transform(cfg, train=False)
    return DatasetBundle(
        train=SceneDataset(train, build_scene_transform(cfg, train=True), train=True, loop=values["loop"], **common),
        val=SceneDataset(val, eval_tf, **common),
        test=SceneDataset(test, eval_tf, **common),
        train_eval=SceneDataset(train, eval_tf, **common),
        class_names=list(train.class_names),
        num_classes=train.num_classes,
        kind="scenes",
    )


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`describe_split` says about a split.

    Attributes:
        text: e.g. ``"120 clouds"`` or ``"30 items (1 scene x loop 30, voxel 0.04 m, crops of 4096 points)"``.
        class_counts: ``(K,)`` int64: clouds of every class (clouds) or labelled points (scenes, every point of
            every scene as read; ignored points not counted).
        unit: what ``class_counts`` counts: ``"cloud"`` or ``"point"``.
    """

    text: str
    class_counts: np.ndarray
    unit: str


def describe_split(dataset: PointCloudDataset | SceneDataset) -> SplitSummary:
    """Size and class counts of one split of a :class:`DatasetBundle` (reads every scene of a lazy scene set).

    Raises:
        TypeError: neither a :class:`PointCloudDataset` nor a :class:`SceneDataset`.
    """
    if isinstance(dataset, SceneDataset):
        scenes = len(dataset.scenes)
        crop = f"crops of {dataset.max_points} points" if dataset.max_points else "whole scenes"
        voxel = f"voxel {dataset.voxel_size:g} m" if dataset.voxel_size else "no grid sampling"
        text = f"{len(dataset)} items ({scenes} scene{'s' if scenes != 1 else ''} x loop {dataset.loop}, {voxel}, {crop})"
        return SplitSummary(text, dataset.scenes.label_counts(), "point")
    if isinstance(dataset, PointCloudDataset):
        return SplitSummary(f"{len(dataset)} clouds", dataset.pcs.class_counts(), "cloud")
    raise TypeError(f"describe_split takes a PointCloudDataset or a SceneDataset, got {type(dataset).__name__}")


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

    Scene datasets (``s3dis``, ``scannet``: :func:`~pointtune.data.registry.is_scene_dataset`) go to their
    own builder instead: the registered loader reads and splits the scenes (a printed line says how), which are
    wrapped in :class:`SceneDataset` objects (``data.voxel_size``, crops of ``data.num_points``, ``data.loop``,
    :func:`build_scene_transform`); no on-disk cache (``data.cache`` is ignored for them).

    Returns:
        A :class:`DatasetBundle` whose items hold ``points`` ``(num_points, 3)`` float32, ``label`` and
        ``index`` 0-d int64, ``normals`` ``(num_points, 3)`` float32 if ``use_normals``, and ``seg``
        ``(num_points,)`` int64 per-point labels for datasets that have them (ShapeNetPart's part ids).
        Scene datasets (``kind="scenes"``): items of ``N = num_points`` rows holding ``points`` (N, 3)
        float32 metres (centred), ``color`` (N, 3) float32 (normalised), ``seg`` (N,) int64 in ``[0, K)`` or
        -1 (ignored or padding), ``mask`` (N,) bool (False: padding), ``point_index`` (N,) int64 (row of the
        scene as read), ``index`` 0-d int64 (the scene), ``height`` (N, 1) float32 metres (with
        ``scene_augment.height``) and ``instance`` (N,) int64 where the layout has instance ids; no ``label``.

    Raises:
        DatasetError: unknown ``data.name`` (lists the known names), ``data.root`` missing for a dataset
            that needs it, anything the reader rejects (missing or corrupt files, wrong keys or shapes),
            an unknown class in ``data.classes``, an empty training split, a positive ``val_fraction`` that
            selects no cloud, ``num_points`` larger than the clouds, or ``use_normals`` on a dataset without
            normals; for scenes, a missing or unusable file (naming it and the line or row), a missing test
            or validation area (naming ``data.test_area`` / ``data.val_area``), no training scene, or a
            validation share that holds out no scene. One line each.
    """
    if is_scene_dataset(cfg.name):
        return _build_scene_datasets(cfg)
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

