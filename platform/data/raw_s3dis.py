"""Raw S3DIS v1.2 aligned (Armeni et al. 2016) to the ``Area_<a>_<room>.npy`` layout of
:func:`pointtune.data.scenes.read_s3dis_room_npy`.

Raw layout under ``--raw`` (or its ``Stanford3dDataset_v1.2_Aligned_Version/``):
``Area_<a>/<room>/Annotations/<class>_<n>.txt``, one point a line ``x y z r g b``. Rows are concatenated in
the order :func:`~pointtune.data.scenes.read_s3dis_room_txt` reads them, so both layouts give the same rows.

The Stanford release has a known corrupt line: ``Area_5/hallway_6/Annotations/ceiling_1.txt`` line 180389
holds a stray character where a space belongs (numpy reads 5 columns). :func:`read_annotation` repairs such a
line by reading every character that cannot be part of a number as a space, keeps it when that gives 6 finite
numbers, and skips it otherwise; either way it prints a line naming the file and line number.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from pointtune.data._io import natural_key
from pointtune.data.errors import DatasetError
from pointtune.data.staged import PrepareItem, PrepareReport, note, run_items, save_npy
from pointtune.data.scenes import S3DIS_TXT_LAYOUT, _annotation_class

__all__ = ["RAW_S3DIS_DIR", "MAX_BAD_LINES", "read_annotation", "read_raw_room", "prepare_s3dis"]

#: The top directory of the Stanford archive ``Stanford3dDataset_v1.2_Aligned_Version.zip``.
RAW_S3DIS_DIR = "Stanford3dDataset_v1.2_Aligned_Version"
#: Lines of one annotation file that may be repaired or skipped before the file is taken as corrupt.
MAX_BAD_LINES = 10
_NOT_NUMERIC = re.compile(r"[^0-9eE+\-.\s]")
_AREA = re.compile(r"^Area_\d+$")


def _parse_row(text: str) -> list[float] | None:
    """The 6 finite numbers of a line, or ``None``."""
    values = text.split()
    if len(values) != 6:
        return None
    try:
        row = [float(v) for v in values]
    except ValueError:
        return None
    return row if np.isfinite(row).all() else None


def _read_repairing(path: Path) -> np.ndarray:
    """Line-by-line reading of an annotation file with the repair of the module docstring."""
    rows, bad = [], 0
    with open(path, encoding="latin-1") as f:  # one character a byte: a stray byte never fails decoding
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = _parse_row(line)
            if row is not None:
                rows.append(row)
                continue
            bad += 1
            if bad > MAX_BAD_LINES:
                raise DatasetError(f"{path}: more than {MAX_BAD_LINES} lines are not 'x y z r g b' (line {number}: "
                                   f"{line.strip()[:60]!r}); the file is corrupt")
            row = _parse_row(_NOT_NUMERIC.sub(" ", line))
            if row is not None:
                rows.append(row)
                note(f"{path}: line {number}: repaired (a stray character read as a space): {line.strip()[:60]!r}")
            else:
                note(f"{path}: line {number}: skipped, not 6 numbers x y z r g b: {line.strip()[:60]!r}")
    if not rows:
        raise DatasetError(f"{path}: no 'x y z r g b' lines")
    return np.asarray(rows, dtype=np.float64)


def read_annotation(path: Path) -> np.ndarray:
    """``(K, 6)`` float64 rows ``x y z r g b`` of one annotation file: numpy's fast reader, and on a parse
    error the repairing line reader of the module docstring.

    Raises:
        DatasetError: an unreadable or empty file, or more than :data:`MAX_BAD_LINES` bad lines (naming the
            file and line).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": checked below
            rows = np.loadtxt(path, dtype=np.float64, ndmin=2, comments=None)
        if rows.shape[0] and rows.shape[1] == 6 and np.isfinite(rows).all():
            return rows
    except (ValueError, UnicodeDecodeError):
        pass
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({' '.join(str(err).split())})") from None
    return _read_repairing(path)


def read_raw_room(room: Path) -> np.ndarray:
    """``(N, 7)`` float32 rows ``x y z r g b label`` of one raw room (labels in
    :data:`~pointtune.data.scenes.S3DIS_CLASSES` order, ``stairs`` read as clutter).

    Raises:
        DatasetError: no annotation files, a file whose name is not an S3DIS class, or any error of
            :func:`read_annotation`.
    """
    files = sorted((room / "Annotations").glob("*.txt"), key=natural_key)
    if not files:
        raise DatasetError(f"{room / 'Annotations'}: holds no <class>_<n>.txt annotation files")
    blocks = []
    for path in files:
        rows = read_annotation(path)
        blocks.append(np.column_stack([rows, np.full(len(rows), _annotation_class(path), dtype=np.float64)]))
    return np.concatenate(blocks).astype(np.float32)


def _rooms(raw: Path) -> list[Path]:
    """Every ``Area_<a>/<room>/`` with an ``Annotations`` directory, in natural order."""
    base = raw / RAW_S3DIS_DIR if (raw / RAW_S3DIS_DIR).is_dir() else raw
    areas = sorted((p for p in base.iterdir() if p.is_dir() and _AREA.match(p.name)), key=natural_key)
    return [room for area in areas for room in sorted(area.iterdir(), key=natural_key)
            if (room / "Annotations").is_dir()]


def _write_room(room: Path, out: Path) -> bool:
    save_npy(out / f"{room.parent.name}_{room.name}.npy", read_raw_room(room))
    return True


def prepare_s3dis(raw: Path, out: Path, progress: bool = True) -> PrepareReport:
    """Write ``Area_<a>_<room>.npy`` for every raw room under ``raw`` into ``out``.

    Raises:
        DatasetError: no rooms under ``raw``, or any error of :func:`read_raw_room`.
    """
    rooms = _rooms(raw)
    if not rooms:
        raise DatasetError(f"{raw}: holds no Area_<a>/<room>/Annotations/ rooms (expected {S3DIS_TXT_LAYOUT}, "
                           f"possibly under {RAW_S3DIS_DIR}/)")
    items = [PrepareItem(f"{r.parent.name}_{r.name}", out / f"{r.parent.name}_{r.name}.npy",
                         lambda r=r: _write_room(r, out)) for r in rooms]
    return PrepareReport("s3dis", *run_items(items, "s3dis rooms", progress), out, "rooms")
