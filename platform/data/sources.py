"""The built-in datasets of the registry: ``synthetic``, ``modelnet40``, ``modelnet40_resampled``,
``modelnet10``, ``scanobjectnn``, ``shapenetpart``, ``shapenetpart_h5``. Each loader returns the official
``(train, test)`` splits."""

from __future__ import annotations

from pathlib import Path

from pointtune.data.config import DataConfig
from pointtune.data.errors import DatasetError
from pointtune.data.modelnet import H5_LAYOUT, RESAMPLED_LAYOUT, read_modelnet40_h5, read_modelnet40_resampled
from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.registry import register_dataset
from pointtune.data.scanobjectnn import read_scanobjectnn
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
           "SPLIT_TEST_FRACTION", "seeded_test_split"]

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
