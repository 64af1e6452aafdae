"""The built-in datasets of the registry: the point-cloud datasets ``synthetic``, ``modelnet40``,
``modelnet40_resampled``, ``modelnet10``, ``scanobjectnn``, ``shapenetpart``, ``shapenetpart_h5`` (each loader
returns the official ``(train, test)`` splits) and the scene datasets ``s3dis`` and ``scannet`` (each loader
returns ``(train, val, test)`` scene sets and prints one ``[pointtune] data <name>`` line saying how they were
split)."""

from __future__ import annotations

from pathlib import Path

from pointtune.data.config import DataConfig
from pointtune.data.errors import DatasetError
from pointtune.data.modelnet import H5_LAYOUT, RESAMPLED_LAYOUT, read_modelnet40_h5, read_modelnet40_resampled
from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.registry import register_dataset, register_scene_dataset
from pointtune.data.scanobjectnn import read_scanobjectnn
from pointtune.data.scenes import (
    S3DIS_NPY_LAYOUT,
    S3DIS_TXT_LAYOUT,
    SCANNET_LAYOUT,
    SCANNET_SPLIT_FILES,
    SceneSet,
    s3dis_areas,
    s3dis_splits,
    scannet_layout,
    scannet_scene_names,
    scannet_splits,
)
from pointtune.data.shapenetpart import (
    H5_LAYOUT as SHAPENETPART_H5_LAYOUT,
    SHAPENETPART_NUM_POINTS,
    TXT_LAYOUT as SHAPENETPART_TXT_LAYOUT,
    read_shapenetpart_h5,
    read_shapenetpart_txt,
)
from pointtune.data.splits import filter_classes, train_val_split
from pointtune.data.synthetic import make_synthetic

__all__ = ["SYNTHETIC_SEED", "DEFAULT_SCANOBJECTNN_VARIANT", "MODELNET10_CLASSES", "SHAPENETPART_VARIANTS",
           "SPLIT_TEST_FRACTION", "seeded_test_split", "S3DIS_DEFAULTS", "SCANNET_DEFAULTS", "S3DIS_TEST_AREA",
           "SCANNET_TEST_FRACTION", "SCANNET_MIN_SCENES_FOR_TEST"]

# The synthetic dataset is one fixed dataset: data.split_seed changes its validation split, not its shapes.
SYNTHETIC_SEED = 0
DEFAULT_SCANOBJECTNN_VARIANT = "PB_T50_RS"
# The 10 ModelNet10 classes, in ModelNet10's (alphabetical) label order; all are ModelNet40 class names.
MODELNET10_CLASSES = [
    "bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand", "sofa", "table", "toilet",
]

Splits = tuple[PointCloudSet, PointCloudSet]


def require_root(cfg: DataConfig, layout: str) -> Path:
    """``cfg.root`` as a Path; DatasetError naming ``data.root`` when it is not set."""
    if cfg.root is None:
        raise DatasetError(
            f"data.root: dataset {cfg.name!r} needs its directory ({layout}); "
            "pass --data-root DIR or --set data.root=DIR"
        )
    return Path(cfg.root)


@register_dataset("synthetic")
def load_synthetic(cfg: DataConfig) -> Splits:
    """:func:`make_synthetic` train and test splits (``synthetic_num_classes`` x ``synthetic_per_class``
    clouds each, seed :data:`SYNTHETIC_SEED`) of ``num_points`` points, or twice as many when
    ``sampling`` is ``random`` or ``fps`` so that sampling has points to choose from."""
    n = cfg.num_points if cfg.sampling == "first" else 2 * cfg.num_points
    make = dict(num_classes=cfg.synthetic_num_classes, per_class=cfg.synthetic_per_class, num_points=n,
                seed=SYNTHETIC_SEED)
    return make_synthetic(**make, split="train"), make_synthetic(**make, split="test")


@register_dataset("modelnet40")
def load_modelnet40(cfg: DataConfig) -> Splits:
    """ModelNet40 in the ``modelnet40_ply_hdf5_2048`` layout under ``data.root``."""
    root = require_root(cfg, H5_LAYOUT)
    return read_modelnet40_h5(root, "train"), read_modelnet40_h5(root, "test")


@register_dataset("modelnet40_resampled")
def load_modelnet40_resampled(cfg: DataConfig) -> Splits:
    """ModelNet40 in the ``modelnet40_normal_resampled`` layout under ``data.root``: the first
    ``num_points`` rows of each file with ``sampling: first``, all 10000 otherwise."""
    root = require_root(cfg, RESAMPLED_LAYOUT)
    rows = cfg.num_points if cfg.sampling == "first" else None
    return read_modelnet40_resampled(root, "train", rows), read_modelnet40_resampled(root, "test", rows)


@register_dataset("modelnet10")
def load_modelnet10(cfg: DataConfig) -> Splits:
    """ModelNet10 as the 10-class subset of ModelNet40: the ``modelnet40_ply_hdf5_2048`` layout under
    ``data.root`` (the same directory as ``modelnet40``), keeping the clouds of :data:`MODELNET10_CLASSES`
    with :func:`filter_classes` (labels 0..9 in that order); ``data.classes`` then filters further.

    The official ModelNet10 is a separate download with its own, manually aligned meshes; this dataset is
    ModelNet40's samples of those 10 classes (ModelNet40's point sampling, pose and train/test split), so its
    numbers are not comparable with papers that report on the official ModelNet10.
    """
    root = require_root(cfg, H5_LAYOUT)
    train = filter_classes(read_modelnet40_h5(root, "train"), MODELNET10_CLASSES)
    return train, filter_classes(read_modelnet40_h5(root, "test"), MODELNET10_CLASSES)


@register_dataset("shapenetpart")
def load_shapenetpart(cfg: DataConfig) -> Splits:
    """ShapeNetPart in the ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` layout under
    ``data.root`` (the release folder or its parent): train = the official train and val lists
    (``'trainval'``, as PointNet++ and DGCNN train), test = the official test list; the validation split is
    carved out of train as for every dataset. Every cloud is resampled to ``max(num_points, 2048)`` points
    (:func:`pointtune.data.shapenetpart.resample_indices`), with normals and ``seg`` (global part ids 0..49).

    ``data.variant: all``: every shape is training data and the test split is empty, for self-supervised
    pretraining (STRL and DCGLR pretrain on all of ShapeNet and judge on another dataset: ``protocol.data``);
    it needs no split lists. ``data.variant: split``: every shape, split by pointtune into train and test
    (:func:`seeded_test_split`, seeded by ``data.split_seed``, stratified by category; a printed line says
    so), for judging part segmentation on a copy without the official lists. Without
    ``train_test_split/shuffled_{train,val,test}_file_list.json`` (e.g. the pointtune sample) the official
    split raises a DatasetError naming the missing list (and the ``split`` variant) rather than guessing.
    """
    root = require_root(cfg, SHAPENETPART_TXT_LAYOUT)
    n = max(cfg.num_points, SHAPENETPART_NUM_POINTS)
    variant = _shapenetpart_variant(cfg)
    if variant == "all":
        return _all_for_training(read_shapenetpart_txt(root, "all", n))
    if variant == "split":
        return _announce_split(cfg, root, read_shapenetpart_txt(root, "all", n))
    try:
        return read_shapenetpart_txt(root, "trainval", n), read_shapenetpart_txt(root, "test", n)
    except DatasetError as err:
        raise _split_hint(err, "_file_list.json: missing file") from None


SHAPENETPART_VARIANTS = ("official", "all", "split")
# Share of every category's shapes that the ``split`` variant holds out as the test split (the official
# split's test share is 2874 of 16881 shapes, 17%).
SPLIT_TEST_FRACTION = 0.2


def _shapenetpart_variant(cfg: DataConfig) -> str:
    """``data.variant`` of a ShapeNetPart dataset: ``official`` (default), ``all`` or ``split``."""
    variant = cfg.variant or "official"
    if variant not in SHAPENETPART_VARIANTS:
        raise DatasetError(f"data.variant: {cfg.name} has the variants {', '.join(SHAPENETPART_VARIANTS)} (all: "
                           "every shape for training, no test split, for pretraining; split: a seeded split by "
                           f"category of every shape, without the official lists), got {variant!r}")
    return variant


def seeded_test_split(shapes: PointCloudSet, test_fraction: float, seed: int) -> Splits:
    """``(train, test)``: a seeded split of ``shapes``, stratified by category (``labels``), for ShapeNetPart
    copies without the official split lists (``data.variant: split``).

    Per category with ``n`` shapes, ``max(1, round(test_fraction * n))`` (half up) go to test, at most
    ``n - 1``, so that every category with at least 2 shapes is in both splits; a category with one shape
    stays in train. Which shapes go is a permutation from ``np.random.default_rng([seed, label, 1])`` (a
    stream apart from :func:`~pointtune.data.splits.train_val_split`'s), the same on every machine and call.

    Args:
        shapes: every shape.
        test_fraction: in ``(0, 1)``.
        seed: non-negative.

    Returns:
        Disjoint subsets covering ``shapes``, each in the original order.

    Raises:
        ValueError: ``test_fraction`` outside ``(0, 1)`` or a negative ``seed``.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return train_val_split(shapes, test_fraction, seed, at_least_one=True, stream=1)


def _split_hint(err: DatasetError, missing: str) -> DatasetError:
    """``err``, pointing at ``data.variant=split`` when its message says the official split is ``missing``."""
    if missing not in str(err):
        return err
    return DatasetError(f"{err}; data.variant=split splits the shapes that are there (seeded, by category)")


def _announce_split(cfg: DataConfig, root: Path, shapes: PointCloudSet) -> Splits:
    """:func:`seeded_test_split` of ``shapes`` with :data:`SPLIT_TEST_FRACTION` and ``data.split_seed``, and a
    printed line saying that the split is pointtune's, not the official one."""
    train, test = seeded_test_split(shapes, SPLIT_TEST_FRACTION, cfg.split_seed)
    print(f"[pointtune] data {cfg.name} variant split: not the official split; every shape under {root} split "
          f"by category (seed data.split_seed={cfg.split_seed}, {SPLIT_TEST_FRACTION:g} of each category to test): "
          f"{len(train)} train, {len(test)} test", flush=True)
    return train, test


def _all_for_training(shapes: PointCloudSet) -> Splits:
    """Every shape as the training split and an empty test split."""
    return shapes, shapes.subset([])


@register_dataset("shapenetpart_h5")
def load_shapenetpart_h5(cfg: DataConfig) -> Splits:
    """ShapeNetPart in the HDF5 layout under ``data.root``: train = ``ply_data_train*.h5`` then
    ``ply_data_val*.h5``, test = ``ply_data_test*.h5`` (2048 points per cloud, ``seg`` = the ``pid`` key).

    ``data.variant: all``: every ``ply_data_*.h5`` shape is training data, the test split is empty;
    ``data.variant: split``: every shape, split by category with a printed line (both as for
    ``shapenetpart``). A folder with only ``ply_data_all*.h5`` (e.g. the pointtune sample) raises a
    DatasetError naming the missing ``ply_data_train*.h5`` for the official split.
    """
    root = require_root(cfg, SHAPENETPART_H5_LAYOUT)
    variant = _shapenetpart_variant(cfg)
    if variant == "all":
        return _all_for_training(read_shapenetpart_h5(root, "all"))
    if variant == "split":
        return _announce_split(cfg, root, read_shapenetpart_h5(root, "all"))
    try:
        return read_shapenetpart_h5(root, "trainval"), read_shapenetpart_h5(root, "test")
    except DatasetError as err:
        raise _split_hint(err, "no such HDF5 files") from None


@register_dataset("scanobjectnn")
def load_scanobjectnn(cfg: DataConfig) -> Splits:
    """ScanObjectNN variant ``data.variant`` (default :data:`DEFAULT_SCANOBJECTNN_VARIANT`) under
    ``data.root``."""
    root = require_root(cfg, "the ScanObjectNN h5_files directory holding main_split/ and main_split_nobg/")
    variant = cfg.variant or DEFAULT_SCANOBJECTNN_VARIANT
    return read_scanobjectnn(root, variant, "train"), read_scanobjectnn(root, variant, "test")


# --------------------------------------------------------------------------------------------------- scenes

#: The standard S3DIS test area (``data.test_area: auto`` when it is present).
S3DIS_TEST_AREA = 5
#: The null scene knobs of S3DIS: CPU scale (crops of 4096 points) with the AMContrast3D / PointNeXt recipe
#: otherwise (voxel 0.04 m, loop 30, scale 0.9..1.1 anisotropic, jitter 0.005 m, S3DIS colour statistics).
S3DIS_DEFAULTS = {"num_points": 4096, "voxel_size": 0.04, "loop": 30, "scale_low": 0.9, "scale_high": 1.1,
                  "mirror": (0.0, 0.0, 0.0), "jitter_sigma": 0.005, "color_norm": "s3dis",
                  "reads": ("test_area", "val_area", "layout")}
#: The null scene knobs of ScanNet: crops of 4096 points, voxel 0.02 m, loop 6, scale 0.8..1.2 with x mirrored
#: one time in five, no jitter, ScanNet colour statistics (AMContrast3D's ScanNet config).
SCANNET_DEFAULTS = {"num_points": 4096, "voxel_size": 0.02, "loop": 6, "scale_low": 0.8, "scale_high": 1.2,
                    "mirror": (0.2, 0.0, 0.0), "jitter_sigma": 0.0, "color_norm": "scannet", "reads": ()}
#: A ScanNet copy without the official lists: share of its scenes held out for testing ...
SCANNET_TEST_FRACTION = 0.2
#: ... when it has at least this many scenes (fewer: train and validation only, so that both have a scene).
SCANNET_MIN_SCENES_FOR_TEST = 3


def _few_names(scenes: SceneSet, limit: int = 3) -> str:
    """`` (name, name)`` for a split of at most ``limit`` scenes, else ``""``."""
    return f" ({', '.join(scenes.names)})" if 0 < len(scenes) <= limit else ""


def _no_validation(cfg: DataConfig, kept: int, what: str, hint: str) -> DatasetError:
    return DatasetError(f"data.val_fraction: {cfg.val_fraction:g} of the {kept} training {what} of dataset "
                        f"{cfg.name!r} gives no validation {what[:-1]} (at least one stays for training); {hint}")


@register_scene_dataset("s3dis", S3DIS_DEFAULTS)
def load_s3dis(cfg: DataConfig) -> tuple[SceneSet, SceneSet, SceneSet]:
    """S3DIS v1.2 aligned under ``data.root`` (``Area_<a>_<room>.npy`` or ``Area_<a>/<room>/Annotations``,
    ``data.layout``), split by area with :func:`~pointtune.data.scenes.s3dis_splits`.

    ``data.test_area``: ``auto`` takes :data:`S3DIS_TEST_AREA` (5) when it is present and otherwise leaves the
    test split empty (the printed line says so: the pointtune sample holds only Area 1); a number must be
    present; null: no test split. ``data.val_area``: a validation area, or null for ``data.val_fraction`` of the
    training rooms (seeded by ``data.split_seed``; never the test area).

    Returns:
        ``(train, val, test)`` scene sets of the 13 S3DIS classes (``test`` possibly empty).

    Raises:
        DatasetError: no ``data.root``, no areas under it, a test or validation area that is not there (naming
            ``data.test_area`` / ``data.val_area``), the validation area equal to the test area, no area left
            for training, a validation share that holds out no room, or any reader error (naming the file).
    """
    root = require_root(cfg, f"{S3DIS_NPY_LAYOUT}, or {S3DIS_TXT_LAYOUT}")
    present = s3dis_areas(root)
    if not present:
        raise DatasetError(f"{root}: holds no S3DIS areas (expected {S3DIS_NPY_LAYOUT}, or {S3DIS_TXT_LAYOUT})")
    listed = ", ".join(map(str, present))
    test_area, why_no_test = cfg.test_area, "data.test_area=null"
    if test_area == "auto":
        test_area = S3DIS_TEST_AREA if S3DIS_TEST_AREA in present else None
        why_no_test = (f"the standard test area {S3DIS_TEST_AREA} is not there; data.test_area=auto, null says so, "
                       "a number picks another area")
    if test_area is not None and test_area not in present:
        raise DatasetError(f"data.test_area: S3DIS area {test_area} is not under {root} (areas present: {listed}); "
                           "set data.test_area=null for no test split, or one of the areas present")
    if cfg.val_area is not None and cfg.val_area not in present:
        raise DatasetError(f"data.val_area: S3DIS area {cfg.val_area} is not under {root} (areas present: {listed}); "
                           "choose one of them, or null to hold out data.val_fraction of the training rooms")
    if cfg.val_area is not None and cfg.val_area == test_area:
        raise DatasetError(f"data.val_area: area {test_area} is the test area (data.test_area={cfg.test_area}); "
                           "choose another validation area, or null for a seeded room split")
    train_areas = [a for a in present if a not in (test_area, cfg.val_area)]
    if not train_areas:
        raise DatasetError(f"data.test_area / data.val_area: no S3DIS area left for training under {root} (areas "
                           f"present: {listed}; test area {test_area}, validation area {cfg.val_area})")
    train, val, test = s3dis_splits(root, test_area, cfg.val_area, cfg.val_fraction, cfg.split_seed, cfg.layout,
                                    cfg.lazy)
    if cfg.val_area is None and cfg.val_fraction > 0 and len(val) == 0:
        raise _no_validation(cfg, len(train), "rooms", "set data.val_area to another area, or give more rooms")
    if cfg.val_area is not None:
        held = f"of area {cfg.val_area}"
    else:
        held = (f"held out of the training areas (data.val_fraction={cfg.val_fraction:g}, seeded by "
                f"data.split_seed={cfg.split_seed})")
    tested = (f"test {len(test)} room(s) of area {test_area}{_few_names(test)}" if test_area is not None
              else f"no test split ({why_no_test})")
    print(f"[pointtune] data s3dis under {root}: train {len(train)} room(s){_few_names(train)} of area(s) "
          f"{', '.join(map(str, train_areas))}, validation {len(val)} room(s){_few_names(val)} {held}, {tested}",
          flush=True)
    return train, val, test


@register_scene_dataset("scannet", SCANNET_DEFAULTS)
def load_scannet(cfg: DataConfig) -> tuple[SceneSet, SceneSet, SceneSet]:
    """ScanNet v2 per-scene arrays under ``data.root`` (:data:`~pointtune.data.scenes.SCANNET_LAYOUT`), split by
    :func:`~pointtune.data.scenes.scannet_splits`.

    With ``scannetv2_train.txt`` and ``scannetv2_val.txt`` (or Pointcept's ``train/`` and ``val/`` directories,
    :data:`~pointtune.data.scenes.POINTCEPT_LAYOUT`): test = the official val scenes, validation =
    ``data.val_fraction`` of the official train scenes (seeded by ``data.split_seed``), train = the rest. Without
    them (e.g. the pointtune sample): :data:`SCANNET_TEST_FRACTION` of the scenes to test, then
    ``data.val_fraction`` of the rest to validation, seeded; a copy of fewer than
    :data:`SCANNET_MIN_SCENES_FOR_TEST` scenes gets no test split, so that train and validation both have one
    (the sample's 2 scenes: 1 train, 1 validation). A printed line says which split was made.

    Returns:
        ``(train, val, test)`` scene sets of the 20 ScanNet classes (``test`` possibly empty).

    Raises:
        DatasetError: no ``data.root``, only one of the two lists, no scenes, a validation share that holds out
            no scene, or any reader error (naming the file).
    """
    root = require_root(cfg, SCANNET_LAYOUT)
    lists = any((root / name).is_file() for name in SCANNET_SPLIT_FILES.values())
    official = lists or scannet_layout(root) == "pointcept"
    names = [] if official else scannet_scene_names(root)
    test_fraction = SCANNET_TEST_FRACTION if official or len(names) >= SCANNET_MIN_SCENES_FOR_TEST else 0.0
    train, val, test = scannet_splits(root, cfg.val_fraction, test_fraction, cfg.split_seed, cfg.lazy,
                                      verbose=False)
    if cfg.val_fraction > 0 and len(val) == 0:
        raise _no_validation(cfg, len(train), "scenes", "give more scenes")
    seeded = f"seeded by data.split_seed={cfg.split_seed}"
    if official:
        where = "the official lists" if lists else "Pointcept's train/ and val/ (the official lists)"
        print(f"[pointtune] data scannet under {root}: {where}: {len(train)} train and {len(val)} "
              f"validation scenes (data.val_fraction={cfg.val_fraction:g} of {SCANNET_SPLIT_FILES['train']}, "
              f"{seeded}), {len(test)} test scenes ({SCANNET_SPLIT_FILES['val']})", flush=True)
    else:
        tested = (f"{len(test)} test{_few_names(test)}" if test_fraction > 0 else
                  f"no test split (fewer than {SCANNET_MIN_SCENES_FOR_TEST} scenes)")
        print(f"[pointtune] data scannet under {root}: no {' / '.join(SCANNET_SPLIT_FILES.values())}, so its "
              f"{len(names)} scenes are split by pointtune ({seeded}): {len(train)} train{_few_names(train)}, "
              f"{len(val)} validation{_few_names(val)}, {tested}", flush=True)
    return train, val, test
