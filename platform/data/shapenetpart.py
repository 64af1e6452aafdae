"""Readers for ShapeNetPart (Yi et al. 2016, "A Scalable Active Framework for Region Annotation in 3D Shape
Collections"; ShapeNet terms of use): 16 object categories, 50 part classes, per-point part labels.

* ``shapenetcore_partanno_segmentation_benchmark_v0_normal`` (the PointNet++ text release, points with
  normals and a part id per row): :func:`read_shapenetpart_txt`.
* The HDF5 release (``ply_data_*.h5`` with keys ``data``, ``label``, ``pid``; PointNet's
  ``shapenet_part_seg_hdf5_data``): :func:`read_shapenetpart_h5`.

Both return a :class:`~pointtune.data.pointcloud.PointCloudSet` whose ``labels`` are the 16-way object
category (:data:`SHAPENETPART_CLASSES` order) and whose ``seg`` holds the *global* part id 0..49 of every
point (:data:`SHAPENETPART_SEG_CLASSES` gives each category's ids). Both releases store global ids (the text
files' last column too, e.g. 6/7 for Cap, 47..49 for Table), so no conversion is needed; a part id outside
its category's range is rejected, which also catches per-category local ids (except Airplane's 0..3, which
equal its global ones).

The official split is train / val / test; pointtune's loaders (``shapenetpart``, ``shapenetpart_h5`` in
:mod:`pointtune.data.sources`) train on train + val, as PointNet++ and DGCNN do, and carve their own
validation split out of it. Where the official split lists are absent (e.g. the pointtune sample),
``data.variant: split`` reads every shape (split ``'all'`` here) and splits it into train and test itself,
seeded and stratified by category (:func:`pointtune.data.sources.seeded_test_split`), with a printed line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pointtune.data._io import (
    check_clouds,
    check_labels,
    natural_key,
    read_h5,
    read_lines,
    require_dir,
    require_file,
)
from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet

__all__ = [
    "read_shapenetpart_txt",
    "read_shapenetpart_h5",
    "SHAPENETPART_CLASSES",
    "SHAPENETPART_SEG_CLASSES",
    "SHAPENETPART_NUM_POINTS",
    "SHAPENETPART_SPLITS",
    "TXT_LAYOUT",
    "TXT_FOLDER",
    "H5_LAYOUT",
    "resample_indices",
]

# The 16 categories in label order (the order of the official synsetoffset2category.txt and of the HDF5
# release's labels).
SHAPENETPART_CLASSES = [
    "Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife",
    "Lamp", "Laptop", "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard", "Table",
]

# Category -> its global part ids (50 in all, consecutive, in category order).
SHAPENETPART_SEG_CLASSES: dict[str, list[int]] = {}
_first = 0
for _name, _count in zip(SHAPENETPART_CLASSES, (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)):
    SHAPENETPART_SEG_CLASSES[_name] = list(range(_first, _first + _count))
    _first += _count
del _first, _name, _count

# Points per cloud the text reader resamples to by default (that of the HDF5 release).
SHAPENETPART_NUM_POINTS = 2048
# Seed of the fixed per-cloud permutation of :func:`resample_indices`.
RESAMPLE_SEED = 0

# Splits the readers accept: the official three, "trainval" (train then val, what PointNet++ / DGCNN train
# on) and "all" (every shape, no split needed; also None for the text reader).
SHAPENETPART_SPLITS = ("train", "val", "trainval", "test", "all")

TXT_FOLDER = "shapenetcore_partanno_segmentation_benchmark_v0_normal"
TXT_LAYOUT = (
    f"the {TXT_FOLDER} layout: synsetoffset2category.txt, <synset>/<id>.txt with rows x y z nx ny nz part, "
    "and train_test_split/shuffled_{train,val,test}_file_list.json"
)
H5_LAYOUT = (
    "the ShapeNetPart HDF5 layout: ply_data_{train,val,test}*.h5 or ply_data_all*.h5 "
    "with keys data, label, pid (optional normal)"
)

_CATEGORY_FILE = "synsetoffset2category.txt"
_SPLIT_DIR = "train_test_split"

# (G,) int64: the category of every global part id.
_PART_CATEGORY = np.concatenate(
    [np.full(len(ids), c, dtype=np.int64) for c, ids in enumerate(SHAPENETPART_SEG_CLASSES.values())]
)


def _check_split(split: str | None, allow_none: bool) -> str:
    """``split`` (``None`` -> ``'all'`` where allowed) if it is one of :data:`SHAPENETPART_SPLITS`; else
    DatasetError."""
    if split is None and allow_none:
        return "all"
    if split not in SHAPENETPART_SPLITS:
        raise DatasetError(f"unknown ShapeNetPart split {split!r} (expected one of {', '.join(SHAPENETPART_SPLITS)})")
    return split


def _check_parts(path: Path, what: str, seg: np.ndarray, labels: np.ndarray) -> None:
    """DatasetError naming ``path`` unless every part id of cloud ``i`` in ``seg`` ``(M, N)`` is one of
    category ``labels[i]``'s global part ids."""
    if seg.size and (seg.min() < 0 or seg.max() >= len(_PART_CATEGORY)):
        raise DatasetError(
            f"{path}: {what} holds part ids in [{seg.min()}, {seg.max()}], expected global part ids "
            f"0..{len(_PART_CATEGORY) - 1}"
        )
    wrong = _PART_CATEGORY[seg] != labels[:, None]
    if wrong.any():
        i, j = (int(v) for v in np.argwhere(wrong)[0])
        name = SHAPENETPART_CLASSES[labels[i]]
        ids = SHAPENETPART_SEG_CLASSES[name]
        raise DatasetError(
            f"{path}: {what} of cloud {i} (category {name}) holds part id {seg[i, j]} at point {j}, "
            f"expected global part ids {ids[0]}..{ids[-1]}"
        )


def resample_indices(count: int, num_points: int) -> np.ndarray:
    """``(num_points,)`` int64 rows of a cloud of ``count`` rows: the text reader's fixed resampling rule.

    A fresh ``numpy.random.default_rng(RESAMPLE_SEED)`` permutes the ``count`` rows; the first
    ``num_points`` of the permutation are kept. A cloud with fewer rows keeps the whole permutation (every
    row once) followed by ``num_points - count`` rows drawn uniformly with replacement by the same generator.
    The result depends only on ``(count, num_points)``, so a shape gives the same points whatever split,
    order or machine it is read in.

    Raises:
        ValueError: ``count < 1`` or ``num_points < 1``.
    """
    if count < 1 or num_points < 1:
        raise ValueError(f"need count >= 1 and num_points >= 1, got count={count}, num_points={num_points}")
    rng = np.random.default_rng(RESAMPLE_SEED)
    order = rng.permutation(count)
    if count >= num_points:
        return order[:num_points]
    return np.concatenate([order, rng.choice(count, size=num_points - count, replace=True)])


def _txt_root(root: str | Path) -> Path:
    """``root``, or ``root/TXT_FOLDER`` when ``root`` lacks ``synsetoffset2category.txt`` but holds that
    folder (so the release's parent directory works too)."""
    path = require_dir(root, TXT_LAYOUT)
    if not (path / _CATEGORY_FILE).is_file() and (path / TXT_FOLDER / _CATEGORY_FILE).is_file():
        return path / TXT_FOLDER
    return path


def _read_categories(root: Path) -> dict[str, int]:
    """``{synset id: label}`` from ``synsetoffset2category.txt`` (lines ``<Category> <synset>``)."""
    path = root / _CATEGORY_FILE
    synsets: dict[str, int] = {}
    for line in read_lines(path, "lines '<Category> <synset id>', e.g. 'Airplane 02691156'"):
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{path}: line {line!r} is not '<Category> <synset id>'")
        name, synset = parts
        if name not in SHAPENETPART_CLASSES:
            raise DatasetError(
                f"{path}: unknown category {name!r} (expected one of {', '.join(SHAPENETPART_CLASSES)})"
            )
        synsets[synset] = SHAPENETPART_CLASSES.index(name)
    if not synsets:
        raise DatasetError(f"{path}: lists no categories (expected lines '<Category> <synset id>')")
    return synsets


def _split_shapes(root: Path, split: str, synsets: dict[str, int]) -> list[tuple[Path, int]]:
    """``(file, label)`` of every shape of ``split``: the entries of the split's JSON list in list order
    (``'trainval'``: train's then val's), or for ``'all'`` every ``<synset>/*.txt`` of the listed categories
    (label order, then natural file order)."""
    if split == "trainval":
        return _split_shapes(root, "train", synsets) + _split_shapes(root, "val", synsets)
    if split == "all":
        shapes = []
        for synset, label in sorted(synsets.items(), key=lambda item: (item[1], item[0])):
            folder = root / synset
            if not folder.is_dir():
                raise DatasetError(f"{folder}: no such directory (expected the {SHAPENETPART_CLASSES[label]} shapes "
                                   f"<id>.txt, as {root / _CATEGORY_FILE} lists synset {synset})")
            shapes += [(path, label) for path in sorted(folder.glob("*.txt"), key=natural_key)]
        if not shapes:
            raise DatasetError(f"{root}: holds no <synset>/<id>.txt shape files (expected {TXT_LAYOUT})")
        return shapes
    listing = root / _SPLIT_DIR / f"shuffled_{split}_file_list.json"
    what = 'a JSON list of "shape_data/<synset>/<id>" (split "all" reads every shape without one)'
    require_file(listing, what)
    try:
        entries = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{listing}: cannot read {what} ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise DatasetError(f"{listing}: expected a non-empty {what}")
    shapes = []
    for entry in entries:
        parts = entry.replace("\\", "/").strip("/").split("/")
        if len(parts) < 2 or parts[-2] not in synsets:
            raise DatasetError(
                f"{listing}: entry {entry!r} names no synset of {root / _CATEGORY_FILE} "
                "(expected shape_data/<synset>/<id>)"
            )
        shapes.append((root / parts[-2] / f"{parts[-1]}.txt", synsets[parts[-2]]))
    return shapes


def _read_part_file(path: Path) -> np.ndarray:
    """``(K, 7)`` float64 rows ``x y z nx ny nz part`` of one shape file."""
    require_file(path, "whitespace-separated rows x y z nx ny nz part")
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        msg = " ".join(str(err).split())[:200]
        raise DatasetError(f"{path}: cannot parse rows x y z nx ny nz part ({msg})") from None
    if rows.shape[0] == 0 or rows.shape[1] != 7:
        raise DatasetError(f"{path}: has shape {rows.shape}, expected rows of 7 values x y z nx ny nz part")
    if not np.array_equal(rows[:, 6], np.round(rows[:, 6])):
        raise DatasetError(f"{path}: column 7 (part id) holds non-integer values, expected global part ids")
    return rows


def read_shapenetpart_txt(root: str | Path, split: str | None, num_points: int | None = None) -> PointCloudSet:
    """Read one split of ShapeNetPart in the ``shapenetcore_partanno_segmentation_benchmark_v0_normal``
    layout (the PointNet++ release: points, normals and a part id per row).

    Layout expected under ``root`` (the release folder; its parent works too)::

        synsetoffset2category.txt          one line per category: "<Category> <synset id>", e.g.
                                           "Airplane 02691156"; categories from SHAPENETPART_CLASSES
        <synset>/<id>.txt                  one point a line: "x y z nx ny nz part", part = the global
                                           part id 0..49 (written as a float, e.g. 6.000000)
        train_test_split/shuffled_{train,val,test}_file_list.json
                                           JSON lists of "shape_data/<synset>/<id>" (the official split)

    Shapes have different point counts (about 2500 each), so every cloud is resampled to ``num_points``
    rows with :func:`resample_indices`: the first ``num_points`` rows of a fixed-seed permutation, all rows
    plus rows drawn with replacement when the shape has fewer. Deterministic; the HDF5 release's 2048 points
    are a different random subset of the same rows.

    Args:
        root: the directory above.
        split: ``'train'``, ``'val'`` or ``'test'`` (read from the split's JSON list, in list order),
            ``'trainval'`` (train's list, then val's), or ``'all'`` / ``None``: every ``<synset>/*.txt`` of
            the categories in ``synsetoffset2category.txt``, in label order then file-name order, needing no
            split list (the pointtune sample ships none).
        num_points: points per cloud after resampling; ``None`` is :data:`SHAPENETPART_NUM_POINTS` (2048).

    Returns:
        A :class:`PointCloudSet`: ``points`` ``(M, num_points, 3)`` float32 (the release normalises shapes
        into the unit sphere), ``normals`` ``(M, num_points, 3)`` float32 as stored (about 1% of the
        release's rows are not unit length, some zero; the HDF5 release has the same values), ``labels``
        ``(M,)`` int64 into the 16 :data:`SHAPENETPART_CLASSES`, ``seg`` ``(M, num_points)`` int64 global
        part ids.

    Raises:
        DatasetError: unknown split; missing directory, ``synsetoffset2category.txt``, split list or shape
            file; an unknown category, a list entry whose synset is not listed, an unparsable shape file, or a
            part id outside its category's range; one line naming the path.
        ValueError: ``num_points < 1``.
    """
    split = _check_split(split, allow_none=True)
    num_points = SHAPENETPART_NUM_POINTS if num_points is None else int(num_points)
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1 or None, got {num_points}")
    root = _txt_root(root)
    synsets = _read_categories(root)
    shapes = _split_shapes(root, split, synsets)
    clouds = np.empty((len(shapes), num_points, 7), dtype=np.float64)
    labels = np.asarray([label for _, label in shapes], dtype=np.int64)
    for i, (path, label) in enumerate(shapes):
        rows = _read_part_file(path)
        _check_parts(path, "column 7 (part id)", rows[None, :, 6].astype(np.int64), labels[i:i + 1])
        clouds[i] = rows[resample_indices(rows.shape[0], num_points)]
    return PointCloudSet(
        points=np.ascontiguousarray(clouds[..., :3], dtype=np.float32),
        labels=labels,
        class_names=list(SHAPENETPART_CLASSES),
        normals=np.ascontiguousarray(clouds[..., 3:6], dtype=np.float32),
        seg=clouds[..., 6].astype(np.int64),
    )


def _h5_files(root: Path, split: str) -> list[Path]:
    """``ply_data_{split}*.h5`` (``ply_data_*.h5`` for ``'all'``) in ``root``, in natural order;
    ``'trainval'``: train's files, then val's."""
    if split == "trainval":
        return _h5_files(root, "train") + _h5_files(root, "val")
    pattern = "ply_data_*.h5" if split == "all" else f"ply_data_{split}*.h5"
    files = sorted(root.glob(pattern), key=natural_key)
    if not files:
        others = sorted(p.name for p in root.glob("ply_data_*.h5"))
        found = f"; found only {', '.join(others)} (read split 'all' for those)" if others else ""
        raise DatasetError(f"{root / pattern}: no such HDF5 files (expected {H5_LAYOUT}){found}")
    return files


def read_shapenetpart_h5(root: str | Path, split: str) -> PointCloudSet:
    """Read one split of ShapeNetPart in the HDF5 layout (PointNet's ``shapenet_part_seg_hdf5_data``).

    Layout expected under ``root``::

        ply_data_train0.h5 ...     keys data (M, N, 3) float32 (N = 2048), label (M, 1) or (M,) integer
        ply_data_val0.h5 ...       category in SHAPENETPART_CLASSES order, pid (M, N) integer global part id
        ply_data_test0.h5 ...      0..49, optional normal (M, N, 3) float32
        ply_data_all0.h5 ...       (a release without an official split, e.g. pointtune's sample)

    Args:
        root: the directory above.
        split: ``'train'``, ``'val'`` or ``'test'`` (every ``ply_data_{split}*.h5``), ``'trainval'`` (train's
            files, then val's) or ``'all'`` (every ``ply_data_*.h5``); files are read in natural order
            (``...train2.h5`` before ``...train10.h5``).

    Returns:
        A :class:`PointCloudSet`: ``points`` ``(M, N, 3)`` float32, ``labels`` ``(M,)`` int64 into the 16
        :data:`SHAPENETPART_CLASSES`, ``seg`` ``(M, N)`` int64 global part ids, ``normals`` when every file
        has the ``normal`` key; files concatenated.

    Raises:
        DatasetError: unknown split, missing directory or files, a corrupt file, a missing key, wrong shapes
            or dtypes, point counts that differ between files, a label outside ``[0, 16)`` or a part id
            outside its category's range; one line naming the path.
    """
    split = _check_split(split, allow_none=False)
    root = require_dir(root, H5_LAYOUT)
    points, labels, normals, segs = [], [], [], []
    for path in _h5_files(root, split):
        arrays = read_h5(path, required=("data", "label", "pid"), optional=("normal",))
        data = check_clouds(path, "data", arrays["data"])
        if points and data.shape[1] != points[0].shape[1]:
            raise DatasetError(
                f"{path}: HDF5 key 'data' has {data.shape[1]} points per cloud, "
                f"expected {points[0].shape[1]} like the split's first file"
            )
        label = check_labels(path, "label", arrays["label"], data.shape[0], len(SHAPENETPART_CLASSES))
        pid = arrays["pid"]
        if pid.shape != data.shape[:2] or not np.issubdtype(pid.dtype, np.integer):
            raise DatasetError(
                f"{path}: HDF5 key 'pid' has shape {pid.shape} and dtype {pid.dtype}, "
                f"expected {data.shape[:2]} integers (one part id per point)"
            )
        pid = pid.astype(np.int64)
        _check_parts(path, "HDF5 key 'pid'", pid, label)
        normal = None
        if "normal" in arrays:
            normal = check_clouds(path, "normal", arrays["normal"], data.shape[0])
            if normal.shape != data.shape:
                raise DatasetError(f"{path}: HDF5 key 'normal' has shape {normal.shape}, expected {data.shape}")
        points.append(data)
        labels.append(label)
        segs.append(pid)
        normals.append(normal)
    has_normals = all(n is not None for n in normals)
    return PointCloudSet(
        points=np.concatenate(points),
        labels=np.concatenate(labels),
        class_names=list(SHAPENETPART_CLASSES),
        normals=np.concatenate(normals) if has_normals else None,
        seg=np.concatenate(segs),
    )
