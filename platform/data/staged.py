"""What every converter of ``pointtune data prepare`` (:mod:`pointtune.data.prepare`) shares: items written under
a temporary name and renamed when complete, skipped by a rerun, counted by a progress bar.

* ``scannet``: ScanNet v2 ``[scans/]<scene>/`` meshes and annotations to ``<scene>_vert.npy``,
  ``<scene>_sem_label.npy`` and ``<scene>_ins_label.npy`` (:data:`~pointtune.data.scenes.SCANNET_LAYOUT`;
  :mod:`pointtune.data.raw_scannet`).
* ``s3dis``: ``[Stanford3dDataset_v1.2_Aligned_Version/]Area_<a>/<room>/Annotations/`` to ``Area_<a>_<room>.npy``
  (:data:`~pointtune.data.scenes.S3DIS_NPY_LAYOUT`; :mod:`pointtune.data.raw_s3dis`).
* ``modelnet40``: ``[ModelNet40/]<class>/{train,test}/*.off`` meshes sampled to the ``modelnet40_ply_hdf5_2048``
  layout (:data:`~pointtune.data.modelnet.H5_LAYOUT`; :mod:`pointtune.data.raw_modelnet`).

Every run is resumable: each item (scene, room, shape) is written under a temporary name and renamed when
complete (:func:`save_npy`), and a rerun skips the items whose final file exists. A progress bar counts items;
the last line says what was written. Pointcept's preprocessed ScanNet and S3DIS need no preparing: the readers
take them as they are (:data:`~pointtune.data.scenes.POINTCEPT_LAYOUT`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointtune.data.errors import DatasetError

__all__ = ["PrepareItem", "PrepareReport", "run_items", "save_npy", "note"]


def note(message: str) -> None:
    """Print one ``[pointtune]`` line about the data being prepared (a repaired line, a skipped scene)."""
    print(f"[pointtune] {message}", flush=True)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (``.npy``) so that ``path`` exists only once it is complete: it is written
    as ``<name>.part`` beside it and renamed (atomic on one file system).

    Raises:
        DatasetError: the file cannot be written (naming it).
    """
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(part, path)
    except OSError as err:
        raise DatasetError(f"{path}: cannot write ({' '.join(str(err).split())})") from None


@dataclass(frozen=True)
class PrepareItem:
    """One unit of work of a preparation.

    Attributes:
        name: what the progress bar and errors call it (``scene0000_00``, ``Area_1_office_1``).
        done: the file whose existence marks the item finished (written last, by :func:`save_npy`).
        make: writes the item's files and returns True, or returns False when the item has nothing to write
            (it printed why); raises :class:`DatasetError` naming the raw file at fault.
    """

    name: str
    done: Path
    make: Callable[[], bool]


@dataclass(frozen=True)
class PrepareReport:
    """What a preparation did: ``written`` items made now, ``skipped`` items already finished, ``left_out``
    items with nothing to write, into ``out``; ``what`` names the items (``scenes``, ``rooms``, ``shapes``)."""

    dataset: str
    written: int
    skipped: int
    left_out: int
    out: Path
    what: str

    def line(self) -> str:
        """The final one-line summary."""
        left = f", {self.left_out} left out" if self.left_out else ""
        return (f"[pointtune] data prepare {self.dataset}: wrote {self.written} {self.what} to {self.out} "
                f"({self.skipped} already there{left})")


def run_items(items: Sequence[PrepareItem], desc: str, progress: bool = True) -> tuple[int, int, int]:
    """Make every item whose ``done`` file does not exist, with a progress bar.

    Returns:
        ``(written, skipped, left_out)`` counts: made now, already finished, nothing to write.

    Raises:
        DatasetError: the first item's error (earlier items stay finished, so a rerun resumes after them).
    """
    from tqdm import tqdm

    written = skipped = left_out = 0
    for item in tqdm(items, desc=desc, unit="item", disable=not progress, leave=False):
        if item.done.is_file():
            skipped += 1
        elif item.make():
            written += 1
        else:
            left_out += 1
    return written, skipped, left_out
