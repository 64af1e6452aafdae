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
from pointtune.data.splits import filter_classes
from pointtune.data.synthetic import make_synthetic

__all__ = ["SYNTHETIC_SEED", "DEFAULT_SCANOBJECTNN_VARIANT", "MODELNET10_CLASSES"]

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
    it needs no split lists. Without ``train_test_split/shuffled_{train,val,test}_file_list.json`` (e.g. the
    pointtune sample) the official split raises a DatasetError naming the missing list rather than guessing.
    """
    root = require_root(cfg, SHAPENETPART_TXT_LAYOUT)
    n = max(cfg.num_points, SHAPENETPART_NUM_POINTS)
    if _shapenetpart_variant(cfg) == "all":
        return _all_for_training(read_shapenetpart_txt(root, "all", n))
    return read_shapenetpart_txt(root, "trainval", n), read_shapenetpart_txt(root, "test", n)


SHAPENETPART_VARIANTS = ("official", "all")


def _shapenetpart_variant(cfg: DataConfig) -> str:
    """``data.variant`` of a ShapeNetPart dataset: ``official`` (default) or ``all``."""
    variant = cfg.variant or "official"
    if variant not in SHAPENETPART_VARIANTS:
        raise DatasetError(f"data.variant: {cfg.name} has the variants {', '.join(SHAPENETPART_VARIANTS)} (all: "
                           f"every shape for training, no test split, for pretraining), got {variant!r}")
    return variant


def _all_for_training(shapes: PointCloudSet) -> Splits:
    """Every shape as the training split and an empty test split."""
    return shapes, shapes.subset([])


@register_dataset("shapenetpart_h5")
def load_shapenetpart_h5(cfg: DataConfig) -> Splits:
    """ShapeNetPart in the HDF5 layout under ``data.root``: train = ``ply_data_train*.h5`` then
    ``ply_data_val*.h5``, test = ``ply_data_test*.h5`` (2048 points per cloud, ``seg`` = the ``pid`` key).

    ``data.variant: all``: every ``ply_data_*.h5`` shape is training data, the test split is empty (as for
    ``shapenetpart``). A folder with only ``ply_data_all*.h5`` (e.g. the pointtune sample) raises a
    DatasetError naming the missing ``ply_data_train*.h5`` for the official split.
    """
    root = require_root(cfg, SHAPENETPART_H5_LAYOUT)
    if _shapenetpart_variant(cfg) == "all":
        return _all_for_training(read_shapenetpart_h5(root, "all"))
    return read_shapenetpart_h5(root, "trainval"), read_shapenetpart_h5(root, "test")


@register_dataset("scanobjectnn")
def load_scanobjectnn(cfg: DataConfig) -> Splits:
    """ScanObjectNN variant ``data.variant`` (default :data:`DEFAULT_SCANOBJECTNN_VARIANT`) under
    ``data.root``."""
    root = require_root(cfg, "the ScanObjectNN h5_files directory holding main_split/ and main_split_nobg/")
    variant = cfg.variant or DEFAULT_SCANOBJECTNN_VARIANT
    return read_scanobjectnn(root, variant, "train"), read_scanobjectnn(root, variant, "test")
