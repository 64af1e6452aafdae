"""The built-in datasets of the registry: ``synthetic``, ``modelnet40``, ``modelnet40_resampled``,
``scanobjectnn``. Each loader returns the official ``(train, test)`` splits."""

from __future__ import annotations

from pathlib import Path

from pointtune.data.config import DataConfig
from pointtune.data.errors import DatasetError
from pointtune.data.modelnet import H5_LAYOUT, RESAMPLED_LAYOUT, read_modelnet40_h5, read_modelnet40_resampled
from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.registry import register_dataset
from pointtune.data.scanobjectnn import read_scanobjectnn
from pointtune.data.synthetic import make_synthetic

__all__ = ["SYNTHETIC_SEED", "DEFAULT_SCANOBJECTNN_VARIANT"]

# The synthetic dataset is one fixed dataset: data.split_seed changes its validation split, not its shapes.
SYNTHETIC_SEED = 0
DEFAULT_SCANOBJECTNN_VARIANT = "PB_T50_RS"

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


@register_dataset("scanobjectnn")
def load_scanobjectnn(cfg: DataConfig) -> Splits:
    """ScanObjectNN variant ``data.variant`` (default :data:`DEFAULT_SCANOBJECTNN_VARIANT`) under
    ``data.root``."""
    root = require_root(cfg, "the ScanObjectNN h5_files directory holding main_split/ and main_split_nobg/")
    variant = cfg.variant or DEFAULT_SCANOBJECTNN_VARIANT
    return read_scanobjectnn(root, variant, "train"), read_scanobjectnn(root, variant, "test")
