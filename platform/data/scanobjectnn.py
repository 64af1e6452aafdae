"""Reader for ScanObjectNN (Uy et al. 2019, "Revisiting Point Cloud Classification: A New Benchmark
Dataset and Classification Model on Real-World Data"): 15 classes of scanned objects, HDF5 release
(``h5_files/``)."""

from __future__ import annotations

from pathlib import Path

from pointtune.data._io import check_clouds, check_labels, check_split, read_h5, require_dir
from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet

__all__ = ["read_scanobjectnn", "SCANOBJECTNN_CLASSES", "SCANOBJECTNN_FILES"]

# Label order of the official release (its README and the training scripts' class list).
SCANOBJECTNN_CLASSES = [
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door",
    "shelf", "table", "bed", "pillow", "sink", "sofa", "toilet",
]

# variant -> (folder, file stem); the split adds "training_" or "test_" in front of the stem.
SCANOBJECTNN_FILES = {
    "OBJ_BG": ("main_split", "objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "objectdataset.h5"),
    "PB_T50_RS": ("main_split", "objectdataset_augmentedrot_scale75.h5"),
}

_SPLIT_PREFIX = {"train": "training", "test": "test"}


def scanobjectnn_path(root: Path, variant: str, split: str) -> Path:
    """``root/<folder>/<training|test>_<stem>`` of ``variant`` and ``split``; DatasetError for an unknown
    variant."""
    if variant not in SCANOBJECTNN_FILES:
        raise DatasetError(
            f"unknown ScanObjectNN variant {variant!r} (expected one of {', '.join(SCANOBJECTNN_FILES)})"
        )
    folder, stem = SCANOBJECTNN_FILES[variant]
    return root / folder / f"{_SPLIT_PREFIX[split]}_{stem}"


def read_scanobjectnn(root: str | Path, variant: str, split: str) -> PointCloudSet:
    """Read one split of one ScanObjectNN variant.

    Layout expected under ``root`` (the release's ``h5_files`` directory)::

        main_split/training_objectdataset.h5                       OBJ_BG
        main_split/test_objectdataset.h5
        main_split_nobg/training_objectdataset.h5                  OBJ_ONLY
        main_split_nobg/test_objectdataset.h5
        main_split/training_objectdataset_augmentedrot_scale75.h5  PB_T50_RS (the hardest variant)
        main_split/test_objectdataset_augmentedrot_scale75.h5

    Each file has keys ``data`` ``(M, 2048, 3)`` float and ``label`` ``(M,)`` integer in
    :data:`SCANOBJECTNN_CLASSES` order; other keys (``mask``) are ignored.

    Args:
        root: the directory above.
        variant: ``'OBJ_BG'``, ``'OBJ_ONLY'`` or ``'PB_T50_RS'``.
        split: ``'train'`` or ``'test'`` (the official split).

    Returns:
        A :class:`PointCloudSet`: ``points`` ``(M, N, 3)`` float32 in the file's units, ``labels`` ``(M,)``
        int64, no normals, the 15 ``class_names``.

    Raises:
        DatasetError: unknown variant or split, missing directory or file, corrupt file, missing key, wrong
            shapes or labels outside ``[0, 15)``; one line naming the path.
    """
    check_split(split)
    root = require_dir(root, "the ScanObjectNN h5_files layout: main_split/ and main_split_nobg/ with "
                             "{training,test}_objectdataset*.h5 (keys data, label)")
    path = scanobjectnn_path(root, variant, split)
    arrays = read_h5(path, required=("data", "label"))
    points = check_clouds(path, "data", arrays["data"])
    labels = check_labels(path, "label", arrays["label"], points.shape[0], len(SCANOBJECTNN_CLASSES))
    return PointCloudSet(points=points, labels=labels, class_names=list(SCANOBJECTNN_CLASSES))
