"""File helpers shared by the readers: checked directories, list files and HDF5 arrays.

Every failure is a :class:`~pointtune.data.errors.DatasetError` whose one-line message names the path.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pointtune.data.errors import DatasetError

SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is ``'train'`` or ``'test'``; else raise DatasetError."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    return split


def require_dir(root: str | Path, layout: str) -> Path:
    """``root`` as a Path if it is a directory; else DatasetError naming it and the ``layout`` expected."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"{path}: no such dataset directory (expected {layout})")
    return path


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file; else DatasetError naming it and ``what`` it should hold."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing file (expected {what})")
    return path


def read_lines(path: Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file that must exist (``what`` describes it in errors)."""
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read {what} ({_one_line(err)})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def natural_key(path: Path) -> list:
    """Sort key putting ``ply_data_train2.h5`` before ``ply_data_train10.h5``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name)]


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def read_h5(
    path: Path, required: tuple[str, ...] = ("data", "label"), optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Read whole datasets from one HDF5 file.

    Args:
        path: the ``.h5`` file.
        required: keys that must exist (e.g. ``data``, ``label``).
        optional: keys read when present.

    Returns:
        ``{key: array}`` for every required key and every optional key that exists.

    Raises:
        DatasetError: missing file, a file h5py cannot open (corrupt or truncated: h5py's ``OSError`` is
            caught), or a missing required key; the message names ``path``.
    """
    import h5py

    require_file(path, f"an HDF5 file with keys {', '.join(required)}")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in required if k not in f]
            if missing:
                raise DatasetError(
                    f"{path}: missing HDF5 key {missing[0]!r} (expected keys {', '.join(required)}; "
                    f"found {', '.join(sorted(f.keys())) or 'none'})"
                )
            return {k: np.asarray(f[k][()]) for k in (*required, *optional) if k in f}
    except DatasetError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path}: cannot read HDF5 file ({_one_line(err)})") from None


def check_clouds(path: Path, key: str, array: np.ndarray, count: int | None = None) -> np.ndarray:
    """``array`` as float32 if it is ``(M, N, 3)`` (``M == count`` when given); else DatasetError."""
    if array.ndim != 3 or array.shape[-1] != 3 or (count is not None and array.shape[0] != count):
        want = "(M, N, 3)" if count is None else f"({count}, N, 3)"
        raise DatasetError(f"{path}: HDF5 key {key!r} has shape {array.shape}, expected {want}")
    if not np.issubdtype(array.dtype, np.number):
        raise DatasetError(f"{path}: HDF5 key {key!r} has dtype {array.dtype}, expected float")
    return array.astype(np.float32, copy=False)


def check_labels(path: Path, key: str, array: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    """``array`` (``(M,)`` or ``(M, 1)``) as ``(M,)`` int64 with values in ``[0, num_classes)``; else
    DatasetError naming ``path``."""
    if array.shape not in ((count,), (count, 1)) or not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(
            f"{path}: HDF5 key {key!r} has shape {array.shape} and dtype {array.dtype}, "
            f"expected ({count},) or ({count}, 1) integers"
        )
    labels = array.reshape(count).astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{path}: HDF5 key {key!r} holds labels in [{labels.min()}, {labels.max()}], "
            f"expected [0, {num_classes - 1}] ({num_classes} classes)"
        )
    return labels
