"""Readers for indoor scenes with per-point semantic labels: S3DIS and ScanNet v2.

Every reader returns *scene samples*: plain dicts of numpy arrays, row-aligned, one row per point::

    coord    (N, 3) float32   x y z in metres, as stored (S3DIS: the aligned building frame, so values of
                              tens of metres; ScanNet: the scan's frame, z up). Not centred or shifted:
                              that is :class:`pointtune.data.scene_transforms.CenterShift`'s job.
    color    (N, 3) float32   r g b in [0, 255] as stored (not rescaled; ChromaticNormalize divides by 255)
    segment  (N,)   int64     semantic class in [0, C) of the dataset's class list, or IGNORE_INDEX (-1)
    instance (N,)   int64     optional: instance id (S3DIS: the annotation file's index within its room,
                              ScanNet: the ``_ins_label`` id as stored, 0 = none); absent when unknown
    normal   (N, 3) float32   optional unit normals (only Pointcept's layout has them)

:class:`SceneSet` holds named scenes (in memory, or loaded on access with ``lazy=True``) with their class
names. :func:`s3dis_splits` and :func:`scannet_splits` give ``(train, val, test)`` scene sets; the validation
scenes never overlap the test scenes, so model selection never sees the test split.

Every failure is a :class:`~pointtune.data.errors.DatasetError` whose one-line message names the file (and,
for a bad row of a text file, its line number; for an array file, its row).
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pointtune.data._io import natural_key, read_lines, require_dir, require_file
from pointtune.data.errors import DatasetError

__all__ = [
    "IGNORE_INDEX",
    "S3DIS_CLASSES",
    "S3DIS_CLASS_ALIASES",
    "S3DIS_TXT_LAYOUT",
    "S3DIS_NPY_LAYOUT",
    "SCANNET20_CLASSES",
    "SCANNET20_NYU40_IDS",
    "NYU40_TO_SCANNET20",
    "SCANNET_LAYOUT",
    "POINTCEPT_LAYOUT",
    "SceneSet",
    "read_pointcept_scene",
    "read_s3dis_room_pointcept",
    "s3dis_layout",
    "scannet_layout",
    "read_s3dis_room_txt",
    "read_s3dis_room_npy",
    "read_s3dis",
    "s3dis_areas",
    "s3dis_splits",
    "S3DIS_LAYOUTS",
    "read_scannet_scene",
    "read_scannet",
    "scannet_scene_names",
    "scannet_splits",
    "SCANNET_SPLIT_FILES",
    "seeded_scene_split",
]

#: The label of points that no loss or metric counts (ScanNet's unmapped NYU40 classes, padding points).
IGNORE_INDEX = -1

#: The 13 S3DIS classes in their usual label order (that of the Stanford release's ``class_names`` and of
#: the common ``Area_<a>_<room>.npy`` preprocessing: ceiling = 0 ... clutter = 12). PointNeXt's and
#: AMContrast3D's configs *print* table/chair and sofa/bookcase swapped, but their labels are these.
S3DIS_CLASSES = [
    "ceiling", "floor", "wall", "beam", "column", "window", "door",
    "table", "chair", "sofa", "bookcase", "board", "clutter",
]

#: Annotation-file class names that are read as another class. S3DIS has one: the few ``stairs_<n>.txt``
#: objects (Area 2 and Area 4) are clutter, as in the 13-class benchmark and every common preprocessing.
S3DIS_CLASS_ALIASES = {"stairs": "clutter"}

#: The 20 classes of the ScanNet v2 semantic-segmentation benchmark, in label order.
SCANNET20_CLASSES = [
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
    "otherfurniture",
]
#: The NYU40 id of each :data:`SCANNET20_CLASSES` entry (the benchmark's ``VALID_CLASS_IDS``).
SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
#: ``(41,)`` int64 lookup: NYU40 id 0..40 -> ScanNet-20 label, :data:`IGNORE_INDEX` for 0 (unannotated)
#: and the 20 NYU40 classes the benchmark leaves out.
NYU40_TO_SCANNET20 = np.full(41, IGNORE_INDEX, dtype=np.int64)
NYU40_TO_SCANNET20[list(SCANNET20_NYU40_IDS)] = np.arange(len(SCANNET20_NYU40_IDS))
NYU40_TO_SCANNET20.setflags(write=False)

S3DIS_TXT_LAYOUT = (
    "the S3DIS v1.2 aligned layout Area_<a>/<room>/Annotations/<class>_<n>.txt, one point a line 'x y z r g b'"
)
S3DIS_NPY_LAYOUT = "the preprocessed S3DIS layout Area_<a>_<room>.npy, (N, 7) rows x y z r g b label"
SCANNET_LAYOUT = (
    "ScanNet v2 per-scene arrays <scene>_vert.npy (N, 6) x y z r g b and <scene>_sem_label.npy (N,) NYU40 "
    "ids (or the _vert_all / _sem_label_all / _ins_label_all names), optional scannetv2_{train,val}.txt"
)

POINTCEPT_LAYOUT = (
    "Pointcept's preprocessed layout <split>/<scene>/coord.npy (N, 3), color.npy (N, 3) 0..255, segment20.npy "
    "(ScanNet) or segment.npy (N,) class ids with -1 ignored, optional normal.npy (N, 3) and instance.npy (N,)"
)
#: The file marking a directory as one scene of :data:`POINTCEPT_LAYOUT`.
POINTCEPT_COORD = "coord.npy"
#: Pointcept's ScanNet split directories read here: its ``train`` scenes and its ``val`` scenes (the official
#: lists; ``test`` is unlabelled and not read).
POINTCEPT_SCANNET_SPLITS = ("train", "val")

_S3DIS_TXT_ROW = "6 numbers per line: x y z r g b"
_ANNOTATION = re.compile(r"^([A-Za-z]+)_(\d+)\.txt$")
_AREA_DIR = re.compile(r"^Area_(\d+)$")
_AREA_NPY = re.compile(r"^Area_(\d+)_(.+)\.npy$")

Scene = dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------- SceneSet


class SceneSet:
    """Named scenes of one dataset split, with the dataset's class names.

    Args:
        names: one unique name per scene (S3DIS: ``Area_1_hallway_1``; ScanNet: ``scene0000_00``).
        scenes: per scene either its sample dict (module docstring) or a zero-argument callable returning it
            (a lazily read scene: read on every access, nothing kept; make it picklable, e.g. a
            ``functools.partial`` of a reader, so the set travels to Ray workers).
        class_names: the label names; ``segment`` values are in ``[0, len(class_names))`` or
            :data:`IGNORE_INDEX`.

    Raises:
        ValueError: ``names`` and ``scenes`` of different lengths, or a repeated name.
    """

    def __init__(self, names: Sequence[str], scenes: Sequence[Scene | Callable[[], Scene]], class_names: Sequence[str]):
        names = [str(n) for n in names]
        if len(names) != len(scenes):
            raise ValueError(f"SceneSet needs one name per scene, got {len(names)} names and {len(scenes)} scenes")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"SceneSet: scene name {repeated[0]!r} is repeated")
        self.names = names
        self.class_names = [str(c) for c in class_names]
        self._scenes = list(scenes)

    def __len__(self) -> int:
        """Number of scenes."""
        return len(self._scenes)

    def __getitem__(self, index: int) -> Scene:
        """The sample dict of scene ``index`` (negative counts from the end). Treat its arrays as read-only:
        an in-memory set returns its own arrays (the scene transforms never modify their input).

        Raises:
            IndexError: ``index`` out of range.
            DatasetError: a lazily read scene whose files are unusable.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"scene index {index} out of range for a set of {len(self)} scenes")
        scene = self._scenes[index]
        return scene() if callable(scene) else scene

    @property
    def num_classes(self) -> int:
        """``len(class_names)``."""
        return len(self.class_names)

    @property
    def lazy(self) -> bool:
        """Whether any scene is read on access rather than held in memory."""
        return any(callable(s) for s in self._scenes)

    def index(self, name: str) -> int:
        """Position of the scene called ``name``.

        Raises:
            KeyError: no such scene.
        """
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"no scene named {name!r} (scenes: {', '.join(self.names[:10])}"
                           f"{', ...' if len(self) > 10 else ''})") from None

    def subset(self, indices: Sequence[int] | np.ndarray) -> SceneSet:
        """The scenes at ``indices`` (in that order), sharing their arrays / callables and class names.

        Raises:
            IndexError: an index out of range.
        """
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        for i in idx:
            if not -len(self) <= i < len(self):
                raise IndexError(f"scene index {i} out of range for a set of {len(self)} scenes")
        return SceneSet([self.names[i] for i in idx], [self._scenes[i] for i in idx], self.class_names)

    def num_points(self) -> np.ndarray:
        """``(M,)`` int64 points per scene (reads every lazy scene)."""
        return np.asarray([self[i]["coord"].shape[0] for i in range(len(self))], dtype=np.int64)

    def label_counts(self) -> np.ndarray:
        """``(C,)`` int64: points of every class over all scenes; :data:`IGNORE_INDEX` points are not counted
        (reads every lazy scene)."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for i in range(len(self)):
            seg = self[i]["segment"]
            counts += np.bincount(seg[seg >= 0], minlength=self.num_classes)[: self.num_classes]
        return counts

    def __repr__(self) -> str:
        return f"SceneSet({len(self)} scenes, {self.num_classes} classes{', lazy' if self.lazy else ''})"


def _make_scene(path: Path, coord: np.ndarray, color: np.ndarray, segment: np.ndarray,
                instance: np.ndarray | None = None) -> Scene:
    """A sample dict with the module's dtypes; DatasetError naming ``path`` for a non-finite coordinate or
    colour (the row is named)."""
    coord = np.ascontiguousarray(coord, dtype=np.float32)
    color = np.ascontiguousarray(color, dtype=np.float32)
    bad = ~(np.isfinite(coord).all(axis=1) & np.isfinite(color).all(axis=1))
    if bad.any():
        raise DatasetError(f"{path}: row {int(np.flatnonzero(bad)[0])} holds a non-finite coordinate or colour")
    scene = {"coord": coord, "color": color, "segment": np.ascontiguousarray(segment, dtype=np.int64)}
    if instance is not None:
        scene["instance"] = np.ascontiguousarray(instance, dtype=np.int64)
    return scene


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


# ----------------------------------------------------------------------------------------------- S3DIS text


def _first_bad_line(path: Path, columns: int, what: str, fallback: str) -> DatasetError:
    """The DatasetError for the first line of text file ``path`` that does not hold ``columns`` finite
    numbers (1-based line number); ``fallback`` describes the parse error when every line looks right."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            values = line.split()
            if not values:
                continue
            if len(values) != columns:
                return DatasetError(f"{path}: line {number}: {len(values)} values, expected {what}")
            for value in values:
                try:
                    ok = np.isfinite(float(value))
                except ValueError:
                    return DatasetError(f"{path}: line {number}: non-numeric value {value[:40]!r}, expected {what}")
                if not ok:
                    return DatasetError(f"{path}: line {number}: non-finite value {value[:40]!r}, expected {what}")
    return DatasetError(f"{path}: cannot parse {what} ({fallback})")


def _read_numeric_rows(path: Path, columns: int, what: str) -> np.ndarray:
    """``(K, columns)`` float64 rows of a whitespace-separated text file with at least one row; every
    problem is a DatasetError naming ``path`` and the offending line."""
    require_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
    except (ValueError, UnicodeDecodeError) as err:
        raise _first_bad_line(path, columns, what, _one_line(err)) from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read {what} ({_one_line(err)})") from None
    if rows.shape[0] == 0:
        raise DatasetError(f"{path}: empty file, expected {what}")
    if rows.shape[1] != columns or not np.isfinite(rows).all():
        raise _first_bad_line(path, columns, what, f"shape {rows.shape}")
    return rows


def _annotation_class(path: Path) -> int:
    """The S3DIS label of annotation file ``<class>_<n>.txt`` (aliases applied); DatasetError naming the
    file when the name has another form or the class is not an S3DIS class."""
    match = _ANNOTATION.match(path.name)
    if match is None:
        raise DatasetError(f"{path}: annotation file name is not <class>_<n>.txt")
    name = S3DIS_CLASS_ALIASES.get(match.group(1), match.group(1))
    if name not in S3DIS_CLASSES:
        raise DatasetError(
            f"{path}: class {match.group(1)!r} (from the file name) is not one of the 13 S3DIS classes "
            f"{', '.join(S3DIS_CLASSES)} (stairs is read as clutter)"
        )
    return S3DIS_CLASSES.index(name)


def read_s3dis_room_txt(room: str | Path) -> Scene:
    """Read one room of S3DIS v1.2 aligned in the original annotation layout.

    Layout: ``<room>/Annotations/<class>_<n>.txt``, one object per file, one point per line
    ``x y z r g b`` (metres, colour 0..255); the class comes from the file name (:data:`S3DIS_CLASSES`,
    ``stairs`` read as clutter, :data:`S3DIS_CLASS_ALIASES`). The room-level ``<room>/<room>.txt`` beside
    ``Annotations`` is not read (it holds the same points without labels). Files are concatenated in natural
    name order (``beam_1``, ``board_2``, ``board_10``, ...), the order of the common ``.npy``
    preprocessing, so both layouts give the same rows.

    Reading text is slow (1 to 2 s per million points on one core); the ``.npy`` layout is the one to train from.
    The Stanford release has one known corrupt line (a stray control character in
    ``Area_5/hallway_6/Annotations/ceiling_1.txt``): it is reported with its line number, fix it by hand.

    Args:
        room: the room directory.

    Returns:
        A sample (module docstring): ``coord`` (N, 3), ``color`` (N, 3) in [0, 255], ``segment`` (N,) in
        0..12, ``instance`` (N,) the index of the point's annotation file in that order (0..K-1).

    Raises:
        DatasetError: a missing room or ``Annotations`` directory, no annotation files, a file name whose
            class is not an S3DIS class, a line without 6 numbers (naming the file and the line number), a
            non-finite value, or an empty file.
    """
    room = require_dir(room, S3DIS_TXT_LAYOUT)
    annotations = require_dir(room / "Annotations", f"{S3DIS_TXT_LAYOUT} (room {room.name} lacks Annotations/)")
    files = sorted(annotations.glob("*.txt"), key=natural_key)
    if not files:
        raise DatasetError(f"{annotations}: holds no <class>_<n>.txt annotation files (expected {S3DIS_TXT_LAYOUT})")
    labels = [_annotation_class(path) for path in files]
    blocks = [_read_numeric_rows(path, 6, _S3DIS_TXT_ROW) for path in files]
    sizes = [len(b) for b in blocks]
    rows = np.concatenate(blocks)
    segment = np.repeat(np.asarray(labels, dtype=np.int64), sizes)
    instance = np.repeat(np.arange(len(files), dtype=np.int64), sizes)
    return _make_scene(annotations, rows[:, :3], rows[:, 3:6], segment, instance)


# ------------------------------------------------------------------------------------------------ S3DIS npy


def _load_npy(path: Path, what: str) -> np.ndarray:
    """``np.load`` of an existing ``.npy`` file (no pickles); DatasetError naming ``path`` otherwise."""
    require_file(path, what)
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DatasetError(f"{path}: cannot read a .npy array ({what}): {_one_line(err)}") from None


def _check_integer_labels(path: Path, labels: np.ndarray, high: int, what: str, low: int = 0) -> np.ndarray:
    """``labels`` as int64 if every value is an integer in ``[low, high]``; else DatasetError naming the first
    bad row of ``path``."""
    if labels.dtype.kind not in "iub" and labels.size:
        bad = ~np.isfinite(labels) | (labels != np.round(labels))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{path}: row {row} has {what} {labels[row]!r}, not an integer")
    as_int = labels.astype(np.int64)
    bad = (as_int < low) | (as_int > high)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"{path}: row {row} has {what} {as_int[row]}, expected {low}..{high}")
    return as_int


def read_s3dis_room_npy(path: str | Path) -> Scene:
    """Read one room of S3DIS in the common preprocessed layout.

    Layout: ``Area_<a>_<room>.npy``, an ``(N, 7)`` array (any float or int dtype) with rows
    ``x y z r g b label``: metres as stored in the aligned release (not shifted), colour 0..255, label in
    0..12 in :data:`S3DIS_CLASSES` order (PointNet's ``collect_indoor3d_data`` without the min shift;
    PointNeXt's and AMContrast3D's ``s3disfull/raw``).

    Returns:
        A sample (module docstring): ``coord``, ``color`` in [0, 255], ``segment``; no ``instance``.

    Raises:
        DatasetError: a missing or unreadable file, a shape other than ``(N, 7)`` with ``N >= 1``, a label
            that is not an integer in 0..12, or a non-finite value (naming the row).
    """
    path = Path(path).expanduser()
    rows = _load_npy(path, S3DIS_NPY_LAYOUT)
    if rows.ndim != 2 or rows.shape[1] != 7 or rows.shape[0] == 0 or not np.issubdtype(rows.dtype, np.number):
        raise DatasetError(f"{path}: array of {rows.dtype} {rows.shape}, expected (N, 7) rows x y z r g b label")
    segment = _check_integer_labels(path, rows[:, 6], len(S3DIS_CLASSES) - 1, "S3DIS label")
    return _make_scene(path, rows[:, :3], rows[:, 3:6], segment)


# ------------------------------------------------------------------------------------------------ Pointcept


def _pointcept_array(path: Path, n: int | None, columns: int | None, what: str) -> np.ndarray:
    """A numeric ``.npy`` array of shape ``(n, columns)`` (``columns=None``: ``(n,)`` or ``(n, 1)``, returned
    flat; ``n=None``: any ``n >= 1``); DatasetError naming ``path`` otherwise."""
    array = _load_npy(path, what)
    rows = array.shape[0] if array.ndim else 0
    want = (n if n is not None else rows)
    shapes = ((want, columns),) if columns is not None else ((want,), (want, 1))
    if array.shape not in shapes or rows == 0 or not np.issubdtype(array.dtype, np.number):
        raise DatasetError(f"{path}: array of {array.dtype} {array.shape}, expected {what}")
    return array if columns is not None else array.reshape(want)


def read_pointcept_scene(scene_dir: str | Path, segment_files: Sequence[str], num_classes: int) -> Scene:
    """Read one scene of Pointcept's preprocessed layout (:data:`POINTCEPT_LAYOUT`; Wu et al., Pointcept).

    Layout of ``scene_dir``: ``coord.npy`` (N, 3) metres, ``color.npy`` (N, 3) 0..255 (any numeric dtype), the
    first existing of ``segment_files`` (N,) or (N, 1) class ids in ``[0, num_classes)`` with -1 for ignored
    points, optional ``normal.npy`` (N, 3) and ``instance.npy`` (N,) (-1 = none, as Pointcept stores it).

    Returns:
        A sample (module docstring) with ``normal`` and ``instance`` when their files exist.

    Raises:
        DatasetError: a missing directory, ``coord.npy``, ``color.npy`` or segment file, an unreadable array, a
            wrong shape, a class id that is not an integer in ``-1..num_classes-1`` (naming the row), or a
            non-finite value.
    """
    scene_dir = require_dir(scene_dir, POINTCEPT_LAYOUT)
    coord_path = scene_dir / POINTCEPT_COORD
    coord = _pointcept_array(coord_path, None, 3, "(N, 3) x y z")
    n = coord.shape[0]
    color = _pointcept_array(scene_dir / "color.npy", n, 3, f"({n}, 3) r g b like {POINTCEPT_COORD}")
    seg_path = next((scene_dir / f for f in segment_files if (scene_dir / f).is_file()), scene_dir / segment_files[0])
    segment = _pointcept_array(seg_path, n, None, f"({n},) class ids ({' or '.join(segment_files)})")
    segment = _check_integer_labels(seg_path, segment, num_classes - 1, "class id", low=IGNORE_INDEX)
    instance = None
    if (scene_dir / "instance.npy").is_file():
        instance = _pointcept_array(scene_dir / "instance.npy", n, None, f"({n},) instance ids")
        if not np.issubdtype(instance.dtype, np.integer):
            raise DatasetError(f"{scene_dir / 'instance.npy'}: array of {instance.dtype}, expected integer ids")
    scene = _make_scene(coord_path, coord, color, segment, instance)
    if (scene_dir / "normal.npy").is_file():
        normal = _pointcept_array(scene_dir / "normal.npy", n, 3, f"({n}, 3) unit normals")
        scene["normal"] = np.ascontiguousarray(normal, dtype=np.float32)
    return scene


def read_s3dis_room_pointcept(room: str | Path) -> Scene:
    """Read one S3DIS room of Pointcept's layout, ``Area_<a>/<room>/{coord,color,segment}.npy``
    (:func:`read_pointcept_scene` with ``segment.npy`` in :data:`S3DIS_CLASSES` order; coordinates as
    Pointcept stored them, rotated to the room's alignment angle when its preprocessing was asked to).

    Raises:
        DatasetError: as :func:`read_pointcept_scene`.
    """
    return read_pointcept_scene(room, ("segment.npy",), len(S3DIS_CLASSES))


# --------------------------------------------------------------------------------------------- S3DIS areas

S3DIS_LAYOUTS = ("auto", "npy", "txt")


def _room_reader(room: Path, layout: str) -> Callable[[], Scene]:
    """The reader of one room directory: Pointcept's arrays when ``layout`` is ``auto`` and the room holds
    ``coord.npy``, else the annotation files."""
    if layout == "auto" and (room / POINTCEPT_COORD).is_file():
        return functools.partial(read_s3dis_room_pointcept, room)
    return functools.partial(read_s3dis_room_txt, room)


def s3dis_layout(root: str | Path, area: int) -> str:
    """The layout ``layout="auto"`` reads for ``area`` under ``root``: ``'npy'`` (``Area_<a>_<room>.npy``
    files), ``'pointcept'`` (room directories holding ``coord.npy``), ``'txt'`` (annotation directories) or
    ``'none'`` (no such area).

    Raises:
        DatasetError: ``root`` is not a directory.
    """
    root = require_dir(root, f"{S3DIS_TXT_LAYOUT} or {S3DIS_NPY_LAYOUT}")
    if next(root.glob(f"Area_{area}_*.npy"), None) is not None:
        return "npy"
    if next(root.glob(f"Area_{area}/*/{POINTCEPT_COORD}"), None) is not None:
        return "pointcept"
    return "txt" if (root / f"Area_{area}").is_dir() else "none"


def _s3dis_rooms(root: Path, area: int, layout: str) -> list[tuple[str, Callable[[], Scene]]]:
    """``(name, reader)`` of every room of ``area`` under ``root`` in natural order: its
    ``Area_<a>_<room>.npy`` files (layout ``npy``, or ``auto`` when there are any) or the room directories
    of ``Area_<a>/`` (``txt``, or ``auto`` without ``.npy`` files)."""
    npys = sorted(root.glob(f"Area_{area}_*.npy"), key=natural_key)
    if layout == "npy" or (layout == "auto" and npys):
        if not npys:
            raise DatasetError(f"{root}: no Area_{area}_<room>.npy files (expected {S3DIS_NPY_LAYOUT})")
        return [(p.stem, functools.partial(read_s3dis_room_npy, p)) for p in npys]
    area_dir = root / f"Area_{area}"
    if not area_dir.is_dir():
        raise DatasetError(f"{area_dir}: no such area directory (expected {S3DIS_TXT_LAYOUT} or {S3DIS_NPY_LAYOUT})")
    rooms = sorted((p for p in area_dir.iterdir() if p.is_dir()), key=natural_key)
    if not rooms:
        raise DatasetError(f"{area_dir}: holds no room directories (expected {S3DIS_TXT_LAYOUT})")
    return [(f"Area_{area}_{p.name}", _room_reader(p, layout)) for p in rooms]


def s3dis_areas(root: str | Path) -> list[int]:
    """Sorted area numbers present under ``root``: every ``Area_<a>/`` directory or ``Area_<a>_*.npy`` file.

    Raises:
        DatasetError: ``root`` is not a directory.
    """
    root = require_dir(root, f"{S3DIS_TXT_LAYOUT} or {S3DIS_NPY_LAYOUT}")
    areas = set()
    for p in root.iterdir():
        match = _AREA_DIR.match(p.name) if p.is_dir() else _AREA_NPY.match(p.name)
        if match:
            areas.add(int(match.group(1)))
    return sorted(areas)


def read_s3dis(root: str | Path, areas: Sequence[int] | None = None, layout: str = "auto",
               lazy: bool = False) -> SceneSet:
    """Read the rooms of some S3DIS areas.

    Args:
        root: a directory holding ``Area_<a>/<room>/Annotations/`` (:func:`read_s3dis_room_txt`) and/or
            ``Area_<a>_<room>.npy`` files (:func:`read_s3dis_room_npy`).
        areas: area numbers, read in this order; ``None``: every area present (:func:`s3dis_areas`).
        layout: ``'npy'``, ``'txt'`` (the annotation layout) or ``'auto'`` (default): per area, its ``.npy``
            files when it has any, else its room directories, each read as Pointcept's layout
            (:func:`read_s3dis_room_pointcept`) when it holds ``coord.npy``, else as annotations.
        lazy: read each room on access instead of now (the full dataset, 271 rooms and about 270 million points,
            takes about 9 GB in memory; lazy reading suits the ``.npy`` layout).

    Returns:
        A :class:`SceneSet` named ``Area_<a>_<room>`` (the same names for both layouts) with
        :data:`S3DIS_CLASSES`.

    Raises:
        DatasetError: a missing ``root``, an unknown ``layout``, an area with no rooms in the chosen layout
            (naming the missing ``Area_<a>`` directory), no areas at all, or (unless ``lazy``) any error of
            the room readers.
    """
    if layout not in S3DIS_LAYOUTS:
        raise DatasetError(f"unknown S3DIS layout {layout!r} (expected one of {', '.join(S3DIS_LAYOUTS)})")
    root = require_dir(root, f"{S3DIS_TXT_LAYOUT} or {S3DIS_NPY_LAYOUT}")
    if areas is None:
        areas = s3dis_areas(root)
        if not areas:
            raise DatasetError(f"{root}: holds no S3DIS areas (expected {S3DIS_TXT_LAYOUT} or {S3DIS_NPY_LAYOUT})")
    rooms = [room for area in areas for room in _s3dis_rooms(root, int(area), layout)]
    names = [name for name, _ in rooms]
    scenes = [read if lazy else read() for _, read in rooms]
    return SceneSet(names, scenes, S3DIS_CLASSES)


def seeded_scene_split(count: int, fraction: float, seed: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``count`` scenes into kept and held-out positions, seeded.

    ``round(fraction * count)`` (half up) scenes are held out, at least one when ``fraction > 0`` and at most
    ``count - 1`` (a single scene is always kept); which ones is a permutation from
    ``numpy.random.default_rng([seed, stream])``, the same on every machine and call.

    Args:
        count: number of scenes (>= 0).
        fraction: in ``[0, 1)``.
        seed: non-negative.
        stream: a further key, so that two splits of the same scenes are independent.

    Returns:
        ``(kept, held)``: sorted int64 positions, disjoint, covering ``range(count)``.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)`` or a negative ``seed`` or ``count``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if seed < 0 or count < 0:
        raise ValueError(f"seed and count must be >= 0, got seed={seed}, count={count}")
    n_held = min(max(int(np.floor(fraction * count + 0.5)), 1 if fraction > 0 else 0), max(count - 1, 0))
    is_held = np.zeros(count, dtype=bool)
    is_held[np.random.default_rng([seed, stream]).permutation(count)[:n_held]] = True
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)


def s3dis_splits(root: str | Path, test_area: int | None = 5, val_area: int | None = None,
                 val_fraction: float = 0.1, seed: int = 0, layout: str = "auto",
                 lazy: bool = False) -> tuple[SceneSet, SceneSet, SceneSet]:
    """S3DIS train / validation / test scenes, split by area.

    * test: the rooms of ``test_area`` (Area 5 is the standard test area; ``None``: no test split, e.g. for a
      copy without it such as the pointtune sample).
    * validation: the rooms of ``val_area`` if given, else ``round(val_fraction * rooms)`` (at least one)
      rooms of the training areas chosen by :func:`seeded_scene_split` (``seed``); never the test area.
      AMContrast3D's and PointNeXt's code select checkpoints on Area 5 itself, which this does not do.
    * train: every other room of every area present under ``root``.

    Args:
        root, layout, lazy: as for :func:`read_s3dis`.
        test_area: the test area number or ``None``.
        val_area: a validation area (must differ from ``test_area``) or ``None`` for a seeded room split.
        val_fraction: share of training rooms held out when ``val_area`` is ``None``, in ``[0, 1)``.
        seed: the room split's seed.

    Returns:
        ``(train, val, test)`` :class:`SceneSet` objects (``test`` empty when ``test_area`` is ``None``).

    Raises:
        DatasetError: ``val_area == test_area``, a missing test or validation area, no training area left,
            or any error of :func:`read_s3dis`.
        ValueError: ``val_fraction`` outside ``[0, 1)`` or a negative ``seed``.
    """
    if val_area is not None and val_area == test_area:
        raise DatasetError(f"S3DIS validation area {val_area} is the test area: choose another, "
                           "or null for a seeded room split")
    present = s3dis_areas(root)
    held = {a for a in (test_area, val_area) if a is not None}
    train_areas = [a for a in present if a not in held]
    if not train_areas:
        raise DatasetError(f"{Path(root).expanduser()}: no S3DIS area left for training (areas present: "
                           f"{', '.join(map(str, present)) or 'none'}; test area {test_area}, "
                           f"validation area {val_area})")
    test = read_s3dis(root, [test_area], layout, lazy) if test_area is not None else SceneSet([], [], S3DIS_CLASSES)
    train = read_s3dis(root, train_areas, layout, lazy)
    if val_area is not None:
        return train, read_s3dis(root, [val_area], layout, lazy), test
    kept, val = seeded_scene_split(len(train), val_fraction, seed)
    return train.subset(kept), train.subset(val), test


# ------------------------------------------------------------------------------------------------- ScanNet

_VERT_SUFFIXES = ("_vert.npy", "_vert_all.npy")
_SEM_SUFFIXES = ("_sem_label.npy", "_sem_label_all.npy")
_INS_SUFFIXES = ("_ins_label.npy", "_ins_label_all.npy")
SCANNET_SPLIT_FILES = {"train": "scannetv2_train.txt", "val": "scannetv2_val.txt"}


def _scene_file(root: Path, scene: str, suffixes: tuple[str, ...]) -> Path | None:
    """The first existing ``root/<scene><suffix>``, or ``None``."""
    for suffix in suffixes:
        if (root / f"{scene}{suffix}").is_file():
            return root / f"{scene}{suffix}"
    return None


def _pointcept_scenes(root: Path, split: str) -> list[str]:
    """Names of the scene directories of ``root/<split>/`` that hold ``coord.npy`` (Pointcept's layout)."""
    names = (p.parent.name for p in root.glob(f"{split}/*/{POINTCEPT_COORD}"))
    return sorted(names, key=lambda s: natural_key(Path(s)))


def _pointcept_scene_dir(root: Path, scene: str) -> Path | None:
    """``root/<split>/<scene>`` of Pointcept's layout for the first split of :data:`POINTCEPT_SCANNET_SPLITS`
    holding it, or ``None``."""
    for split in POINTCEPT_SCANNET_SPLITS:
        if (root / split / scene / POINTCEPT_COORD).is_file():
            return root / split / scene
    return None


def scannet_layout(root: str | Path) -> str:
    """The layout of the ScanNet copy under ``root``: ``'pointcept'`` (:data:`POINTCEPT_LAYOUT`: ``train/`` or
    ``val/`` scene directories holding ``coord.npy``), ``'arrays'`` (:data:`SCANNET_LAYOUT`) or ``'none'``.

    Raises:
        DatasetError: ``root`` is not a directory.
    """
    root = require_dir(root, SCANNET_LAYOUT)
    if any(next(root.glob(f"{s}/*/{POINTCEPT_COORD}"), None) for s in POINTCEPT_SCANNET_SPLITS):
        return "pointcept"
    return "arrays" if any(next(root.glob(f"*{s}"), None) for s in _VERT_SUFFIXES) else "none"


def read_scannet_scene(root: str | Path, scene: str) -> Scene:
    """Read one ScanNet v2 scene from its per-scene arrays, or from Pointcept's layout.

    Layout under ``root`` (either suffix; the ``_all`` names are the pointtune sample's, every mesh vertex)::

        <scene>_vert.npy       | <scene>_vert_all.npy        (N, 6) x y z r g b: metres, colour 0..255
        <scene>_sem_label.npy  | <scene>_sem_label_all.npy   (N,) NYU40 ids 0..40 (0 = unannotated)
        <scene>_ins_label.npy  | <scene>_ins_label_all.npy   optional (N,) instance ids (0 = none)

    NYU40 ids map to the 20 benchmark classes with :data:`NYU40_TO_SCANNET20`; 0 and the other 20 NYU40
    classes become :data:`IGNORE_INDEX`.

    When ``root/train/<scene>/`` or ``root/val/<scene>/`` holds ``coord.npy`` (Pointcept's layout,
    :data:`POINTCEPT_LAYOUT`), that directory is read with :func:`read_pointcept_scene`: ``segment20.npy``
    (already the 20 classes, -1 ignored; else ``segment.npy``), with ``normal`` and ``instance`` when present.

    Returns:
        A sample (module docstring): ``coord``, ``color`` in [0, 255], ``segment`` in 0..19 or -1, and
        ``instance`` when the instance file exists.

    Raises:
        DatasetError: a missing ``root``, vertex or label file; an unreadable array; a vertex array that is
            not ``(N, 6)``; a label array that is not ``N`` integers; an id outside 0..40 (naming the row).
    """
    root = require_dir(root, SCANNET_LAYOUT)
    pointcept = _pointcept_scene_dir(root, scene)
    if pointcept is not None:
        return read_pointcept_scene(pointcept, ("segment20.npy", "segment.npy"), len(SCANNET20_CLASSES))
    vert_path = _scene_file(root, scene, _VERT_SUFFIXES) or root / f"{scene}{_VERT_SUFFIXES[0]}"
    sem_path = _scene_file(root, scene, _SEM_SUFFIXES) or root / f"{scene}{_SEM_SUFFIXES[0]}"
    vert = _load_npy(vert_path, f"scene {scene}'s (N, 6) x y z r g b vertices ({SCANNET_LAYOUT})")
    if vert.ndim != 2 or vert.shape[1] != 6 or vert.shape[0] == 0 or not np.issubdtype(vert.dtype, np.number):
        raise DatasetError(f"{vert_path}: array of {vert.dtype} {vert.shape}, expected (N, 6) rows x y z r g b")
    n = vert.shape[0]
    sem = _load_npy(sem_path, f"scene {scene}'s ({n},) NYU40 labels ({SCANNET_LAYOUT})")
    if sem.shape not in ((n,), (n, 1)) or not np.issubdtype(sem.dtype, np.number):
        raise DatasetError(f"{sem_path}: array of {sem.dtype} {sem.shape}, expected ({n},) NYU40 ids (one per "
                           f"vertex of {vert_path.name})")
    nyu40 = _check_integer_labels(sem_path, sem.reshape(n), len(NYU40_TO_SCANNET20) - 1, "NYU40 id")
    instance = None
    ins_path = _scene_file(root, scene, _INS_SUFFIXES)
    if ins_path is not None:
        ins = _load_npy(ins_path, f"scene {scene}'s ({n},) instance ids")
        if ins.shape not in ((n,), (n, 1)) or not np.issubdtype(ins.dtype, np.integer):
            raise DatasetError(f"{ins_path}: array of {ins.dtype} {ins.shape}, expected ({n},) integer instance ids")
        instance = ins.reshape(n)
    return _make_scene(vert_path, vert[:, :3], vert[:, 3:6], NYU40_TO_SCANNET20[nyu40], instance)


def scannet_scene_names(root: str | Path) -> list[str]:
    """Sorted names of every scene with a vertex file (``<scene>_vert.npy`` or ``<scene>_vert_all.npy``)
    under ``root``, and of every scene directory of Pointcept's ``train/`` and ``val/``.

    Raises:
        DatasetError: ``root`` is not a directory.
    """
    root = require_dir(root, SCANNET_LAYOUT)
    names = set()
    for suffix in _VERT_SUFFIXES:
        names.update(p.name[: -len(suffix)] for p in root.glob(f"*{suffix}"))
    for split in POINTCEPT_SCANNET_SPLITS:
        names.update(_pointcept_scenes(root, split))
    return sorted(names, key=lambda s: natural_key(Path(s)))


def _no_scenes(root: Path) -> DatasetError:
    return DatasetError(f"{root}: holds no <scene>_vert.npy or <scene>_vert_all.npy files (expected {SCANNET_LAYOUT})")


def read_scannet(root: str | Path, scenes: Sequence[str] | None = None, lazy: bool = False) -> SceneSet:
    """Read ScanNet v2 scenes (:func:`read_scannet_scene`).

    Args:
        root: the directory of per-scene arrays.
        scenes: scene names, read in this order; ``None``: every scene found (:func:`scannet_scene_names`).
        lazy: read each scene on access instead of now (the 1513 labelled scans take about 9 GB in memory).

    Returns:
        A :class:`SceneSet` with :data:`SCANNET20_CLASSES`.

    Raises:
        DatasetError: a missing ``root``, no scenes at all, or (unless ``lazy``; then on access) any error of
            :func:`read_scannet_scene`; with ``lazy`` a missing vertex file is still reported now.
    """
    root = require_dir(root, SCANNET_LAYOUT)
    if scenes is None:
        scenes = scannet_scene_names(root)
        if not scenes:
            raise _no_scenes(root)
    scenes = [str(s) for s in scenes]
    if lazy:
        for scene in scenes:
            if _scene_file(root, scene, _VERT_SUFFIXES) is None and _pointcept_scene_dir(root, scene) is None:
                require_file(root / f"{scene}{_VERT_SUFFIXES[0]}", f"scene {scene}'s vertices ({SCANNET_LAYOUT})")
        return SceneSet(scenes, [functools.partial(read_scannet_scene, root, s) for s in scenes], SCANNET20_CLASSES)
    return SceneSet(scenes, [read_scannet_scene(root, s) for s in scenes], SCANNET20_CLASSES)


def _split_list(path: Path) -> list[str]:
    """Scene names of a ``scannetv2_*.txt`` list (one a line)."""
    names = read_lines(path, "one ScanNet scene name a line, e.g. scene0000_00")
    if not names:
        raise DatasetError(f"{path}: lists no scenes (expected one ScanNet scene name a line)")
    for number, name in enumerate(names, start=1):
        if len(name.split()) != 1:
            raise DatasetError(f"{path}: line {number}: {name[:60]!r} is not one scene name")
    return names


def scannet_splits(root: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                   lazy: bool = False, verbose: bool = True) -> tuple[SceneSet, SceneSet, SceneSet]:
    """ScanNet v2 train / validation / test scenes.

    With ``scannetv2_train.txt`` and ``scannetv2_val.txt`` in ``root`` (the official lists, one scene a
    line): test = the official *val* scenes (the split papers report, since the benchmark's test labels are
    hidden), train = the official train scenes minus a seeded validation share (:func:`seeded_scene_split`
    with ``val_fraction``, stream 0) used for model selection, so the reported split is never used to select.

    Pointcept's layout without the lists: its ``train/`` scenes are the official train scenes and its ``val/``
    scenes the official val scenes, split as above.

    Without both lists (e.g. the pointtune sample): every scene found is split by pointtune, seeded, and a
    line is printed saying so: ``test_fraction`` of the scenes (at least one when > 0; 0: no test split) to
    test (stream 1), then ``val_fraction`` of the rest to validation (stream 0).

    Args:
        root, lazy: as for :func:`read_scannet`.
        val_fraction, test_fraction: shares in ``[0, 1)``.
        seed: the seed of both seeded splits.
        verbose: print the line about a seeded split.

    Returns:
        ``(train, val, test)`` :class:`SceneSet` objects.

    Raises:
        DatasetError: only one of the two lists, an unreadable list, a listed scene without files, no scenes,
            or any error of :func:`read_scannet`.
        ValueError: a fraction outside ``[0, 1)`` or a negative ``seed``.
    """
    root = require_dir(root, SCANNET_LAYOUT)
    lists = {split: root / name for split, name in SCANNET_SPLIT_FILES.items()}
    present = [split for split, path in lists.items() if path.is_file()]
    if len(present) == 1:
        missing = next(path for path in lists.values() if not path.is_file())
        require_file(missing, "the official ScanNet split list beside " + lists[present[0]].name)
    pointcept = not present and scannet_layout(root) == "pointcept"
    if present:
        train_names, test_names = _split_list(lists["train"]), _split_list(lists["val"])
    elif pointcept:
        train_names, test_names = (_pointcept_scenes(root, s) for s in POINTCEPT_SCANNET_SPLITS)
    if present or pointcept:
        kept, val = seeded_scene_split(len(train_names), val_fraction, seed)
    else:
        names = scannet_scene_names(root)
        if not names:
            raise _no_scenes(root)
        rest, held = seeded_scene_split(len(names), test_fraction, seed, stream=1)
        test_names, train_names = [names[i] for i in held], [names[i] for i in rest]
        kept, val = seeded_scene_split(len(train_names), val_fraction, seed)
        if verbose:
            print(f"[pointtune] ScanNet under {root}: no {' / '.join(SCANNET_SPLIT_FILES.values())}, so the "
                  f"{len(names)} scenes are split by pointtune (seed {seed}): {len(kept)} train, "
                  f"{len(val)} validation, {len(test_names)} test", flush=True)
    train = read_scannet(root, train_names, lazy)
    test = read_scannet(root, test_names, lazy) if test_names else SceneSet([], [], SCANNET20_CLASSES)
    return train.subset(kept), train.subset(val), test
