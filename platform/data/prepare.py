"""``pointtune data prepare``: a dataset's raw release to the layout pointtune's readers take.

* ``scannet``: ScanNet v2 ``[scans/]<scene>/`` meshes and annotations to ``<scene>_vert.npy``,
  ``<scene>_sem_label.npy`` and ``<scene>_ins_label.npy`` (:data:`~pointtune.data.scenes.SCANNET_LAYOUT`;
  :mod:`pointtune.data.raw_scannet`).
* ``s3dis``: ``[Stanford3dDataset_v1.2_Aligned_Version/]Area_<a>/<room>/Annotations/`` to ``Area_<a>_<room>.npy``
  (:data:`~pointtune.data.scenes.S3DIS_NPY_LAYOUT`; :mod:`pointtune.data.raw_s3dis`).
* ``modelnet40``: ``[ModelNet40/]<class>/{train,test}/*.off`` meshes sampled to the ``modelnet40_ply_hdf5_2048``
  layout (:data:`~pointtune.data.modelnet.H5_LAYOUT`; :mod:`pointtune.data.raw_modelnet`).

Every run is resumable: each item (scene, room, shape) is written under a temporary name and renamed when
complete (:func:`pointtune.data.staged.save_npy`), and a rerun skips the items whose final file exists. A progress bar counts items;
the last line says what was written. Pointcept's preprocessed ScanNet and S3DIS need no preparing: the readers
take them as they are (:data:`~pointtune.data.scenes.POINTCEPT_LAYOUT`).
"""

from __future__ import annotations

from pathlib import Path

from pointtune.data import raw_modelnet, raw_s3dis, raw_scannet
from pointtune.data.errors import DatasetError
from pointtune.data.staged import PrepareReport

__all__ = ["PREPARE_DATASETS", "prepare"]

#: The datasets ``pointtune data prepare`` converts.
PREPARE_DATASETS = ("scannet", "s3dis", "modelnet40")


def prepare(dataset: str, raw: str | Path, out: str | Path, progress: bool = True, **options) -> PrepareReport:
    """Convert the raw release of ``dataset`` under ``raw`` into pointtune's layout under ``out``.

    Args:
        dataset: one of :data:`PREPARE_DATASETS`.
        raw: the extracted raw release (module docstring).
        out: the output directory (created).
        progress: show a progress bar.
        options: the dataset's own options (``modelnet40``: ``num_points``, ``seed``).

    Returns:
        A :class:`PrepareReport` (its :meth:`~PrepareReport.line` is the final line the CLI prints).

    Raises:
        DatasetError: an unknown dataset, a missing ``raw`` directory, or any error of the dataset's
            converter, one line naming the file.
    """
    converters = {"scannet": raw_scannet.prepare_scannet, "s3dis": raw_s3dis.prepare_s3dis,
                  "modelnet40": raw_modelnet.prepare_modelnet40}
    if dataset not in converters:
        raise DatasetError(f"data prepare: unknown dataset {dataset!r} (expected one of {', '.join(PREPARE_DATASETS)})")
    raw = Path(raw).expanduser()
    if not raw.is_dir():
        raise DatasetError(f"{raw}: no such directory (expected the raw {dataset} release)")
    out = Path(out).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"{out}: cannot create the output directory ({' '.join(str(err).split())})") from None
    return converters[dataset](raw, out, progress=progress, **options)
