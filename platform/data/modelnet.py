"""Readers for the two public ModelNet40 layouts (Wu et al. 2015, "3D ShapeNets"; Princeton licence).

* ``modelnet40_ply_hdf5_2048`` (the PointNet / DGCNN HDF5 release): :func:`read_modelnet40_h5`.
* ``modelnet40_normal_resampled`` (the PointNet++ text release, 10000 points with normals per shape):
  :func:`read_modelnet40_resampled`.

Both use the official train/test split; neither ships a validation split
(see :func:`pointtune.data.splits.train_val_split`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pointtune.data._io import (
    check_clouds,
    check_labels,
    check_split,
    natural_key,
    read_h5,
    read_lines,
    require_dir,
    require_file,
)
from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet

__all__ = ["read_modelnet40_h5", "read_modelnet40_resampled", "H5_LAYOUT", "RESAMPLED_LAYOUT"]

H5_LAYOUT = (
    "the modelnet40_ply_hdf5_2048 layout: shape_names.txt, {train,test}_files.txt and "
    "ply_data_{train,test}*.h5 with keys data, label"
)
RESAMPLED_LAYOUT = (
    "the modelnet40_normal_resampled layout: modelnet40_shape_names.txt, modelnet40_{train,test}.txt "
    "and <class>/<class>_NNNN.txt with rows x,y,z,nx,ny,nz"
)


def _h5_files(root: Path, split: str) -> list[Path]:
    """The split's HDF5 files: the basenames listed in ``{split}_files.txt`` (official lines read
    ``data/modelnet40_ply_hdf5_2048/ply_data_train0.h5``), resolved in ``root``; without a list file,
    ``ply_data_{split}*.h5`` in natural order."""
    listing = root / f"{split}_files.txt"
    if listing.is_file():
        names = read_lines(listing, "a list of HDF5 files")
        if not names:
            raise DatasetError(f"{listing}: lists no HDF5 files (expected lines like ply_data_{split}0.h5)")
        return [root / Path(name.replace("\\", "/")).name for name in names]
    files = sorted(root.glob(f"ply_data_{split}*.h5"), key=natural_key)
    if not files:
        raise DatasetError(f"{listing}: missing file (expected it, or ply_data_{split}*.h5 files in {root})")
    return files


def read_modelnet40_h5(root: str | Path, split: str) -> PointCloudSet:
    """Read one split of ModelNet40 in the ``modelnet40_ply_hdf5_2048`` layout (PointNet, Qi et al. 2017).

    Layout expected under ``root``::

        shape_names.txt          40 class names, one a line, in label order
        train_files.txt          one HDF5 file a line (only the basename is used, so the official
        test_files.txt           "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5" lines work)
        ply_data_train0.h5 ...   keys data (M, N, 3) float32 (N = 2048), label (M, 1) or (M,) integer,
        ply_data_test0.h5 ...    optional normal (M, N, 3) float32

    Without ``{split}_files.txt``, every ``ply_data_{split}*.h5`` is read in natural order.

    Args:
        root: the directory above.
        split: ``'train'`` or ``'test'`` (the official split).

    Returns:
        A :class:`PointCloudSet`: ``points`` ``(M, N, 3)`` float32 in the files' units (shapes are already
        normalised into the unit sphere by the release), ``labels`` ``(M,)`` int64, ``normals`` when every
        file has the ``normal`` key, ``class_names`` from ``shape_names.txt``. Files are concatenated in
        list order.

    Raises:
        DatasetError: missing directory or file, a corrupt HDF5 file, a missing key, wrong shapes, point
            counts that differ between files, or labels outside the class list; one line naming the path.
    """
    check_split(split)
    root = require_dir(root, H5_LAYOUT)
    class_names = read_lines(root / "shape_names.txt", "the class names, one a line, in label order")
    if not class_names:
        raise DatasetError(f"{root / 'shape_names.txt'}: lists no class names")
    points, labels, normals = [], [], []
    for path in _h5_files(root, split):
        arrays = read_h5(path, required=("data", "label"), optional=("normal",))
        data = check_clouds(path, "data", arrays["data"])
        if points and data.shape[1] != points[0].shape[1]:
            raise DatasetError(
                f"{path}: HDF5 key 'data' has {data.shape[1]} points per cloud, "
                f"expected {points[0].shape[1]} like the split's first file"
            )
        points.append(data)
        labels.append(check_labels(path, "label", arrays["label"], data.shape[0], len(class_names)))
        normals.append(check_clouds(path, "normal", arrays["normal"], data.shape[0]) if "normal" in arrays else None)
        if normals[-1] is not None and normals[-1].shape != data.shape:
            raise DatasetError(f"{path}: HDF5 key 'normal' has shape {normals[-1].shape}, expected {data.shape}")
    has_normals = all(n is not None for n in normals)
    return PointCloudSet(
        points=np.concatenate(points),
        labels=np.concatenate(labels),
        class_names=class_names,
        normals=np.concatenate(normals) if has_normals else None,
    )


def _read_txt_cloud(path: Path, rows: int | None) -> np.ndarray:
    """``(K, 6)`` float32 rows ``x,y,z,nx,ny,nz`` of one resampled shape (the first ``rows`` if given)."""
    require_file(path, "comma-separated rows x,y,z,nx,ny,nz")
    try:
        array = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2, max_rows=rows)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        msg = " ".join(str(err).split())[:200]
        raise DatasetError(f"{path}: cannot parse comma-separated rows x,y,z,nx,ny,nz ({msg})") from None
    if array.shape[1] != 6 or array.shape[0] == 0:
        raise DatasetError(f"{path}: has shape {array.shape}, expected rows of 6 values x,y,z,nx,ny,nz")
    return array


def read_modelnet40_resampled(root: str | Path, split: str, num_points: int | None = None) -> PointCloudSet:
    """Read one split of ModelNet40 in the ``modelnet40_normal_resampled`` layout (PointNet++, Qi et al.
    2017: 10000 points sampled uniformly on each mesh surface, with normals).

    Layout expected under ``root``::

        modelnet40_shape_names.txt       40 class names, one a line, in label order
        modelnet40_train.txt             shape ids, one a line, e.g. airplane_0126, night_stand_0080
        modelnet40_test.txt
        <class>/<shape id>.txt           10000 lines "x,y,z,nx,ny,nz" (the class is the id without its
                                         trailing _NNNN)

    Args:
        root: the directory above.
        split: ``'train'`` or ``'test'`` (the official split).
        num_points: keep the first ``num_points`` rows of every file (the files are already in random
            order); ``None`` keeps every row, which must then be the same count in every file.

    Returns:
        A :class:`PointCloudSet` with ``points`` from columns 0:3 and unit ``normals`` from columns 3:6,
        ``(M, N, 3)`` float32 each, in list order; ``labels`` ``(M,)`` int64.

    Raises:
        DatasetError: missing directory, list or shape file; an id whose class is not in the class list;
            an unparsable file or one with fewer rows than ``num_points`` or than the other files; one line
            naming the path.
        ValueError: ``num_points < 1``.
    """
    check_split(split)
    if num_points is not None and num_points < 1:
        raise ValueError(f"num_points must be >= 1 or None, got {num_points}")
    root = require_dir(root, RESAMPLED_LAYOUT)
    names_file = root / "modelnet40_shape_names.txt"
    class_names = read_lines(names_file, "the class names, one a line, in label order")
    index = {name: i for i, name in enumerate(class_names)}
    list_file = root / f"modelnet40_{split}.txt"
    shape_ids = read_lines(list_file, "shape ids, one a line, e.g. airplane_0001")
    if not shape_ids:
        raise DatasetError(f"{list_file}: lists no shapes (expected shape ids, one a line)")
    clouds, labels = [], []
    for shape_id in shape_ids:
        cls = shape_id.rsplit("_", 1)[0]
        if cls not in index:
            raise DatasetError(f"{list_file}: shape {shape_id!r} has class {cls!r}, which {names_file} does not list")
        path = root / cls / f"{shape_id}.txt"
        rows = _read_txt_cloud(path, num_points)
        want = num_points if num_points is not None else (clouds[0].shape[0] if clouds else rows.shape[0])
        if rows.shape[0] != want:
            hint = "" if num_points is not None else " (pass num_points to keep the first rows of every file)"
            raise DatasetError(f"{path}: has {rows.shape[0]} points, expected {want}{hint}")
        clouds.append(rows)
        labels.append(index[cls])
    stacked = np.stack(clouds)
    return PointCloudSet(
        points=np.ascontiguousarray(stacked[..., :3]),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=class_names,
        normals=np.ascontiguousarray(stacked[..., 3:6]),
    )
