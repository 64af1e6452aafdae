"""The checkpoints a sweep trial left, wherever its storage is (a local directory, NFS, ``s3://``, ``gs://``).

A single-process trial's checkpoints are kept by Tune in its trial directory (``<storage>/tune/<trial>/``); a
multi-worker trial's by Ray Train in ``<storage>/train/trial_<id>/``. Both are directories named
``checkpoint_*`` holding ``state.pt`` and ``metrics.json`` (:mod:`pointtune.train.checkpoint`), and each
store keeps the best one by the objective and the latest. :func:`best_checkpoint` picks the best of those
from their ``metrics.json``, on ties the later epoch (as Ray's checkpoint managers do).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pointtune.train.checkpoint import METRICS_FILE


@dataclass(frozen=True)
class KeptCheckpoint:
    """A checkpoint directory (local path or storage URI) and the metrics of the epoch it holds."""

    path: str
    metrics: dict[str, float]


def _fs(uri: str):
    """``(pyarrow filesystem, path within it)`` of a local path or a storage URI."""
    import pyarrow.fs

    if "://" not in uri:
        return pyarrow.fs.LocalFileSystem(), str(Path(uri).resolve())
    return pyarrow.fs.FileSystem.from_uri(uri)


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def kept_checkpoints(base: str) -> list[KeptCheckpoint]:
    """The ``checkpoint_*`` directories directly under ``base`` (a local path or a storage URI) that hold a
    ``metrics.json``; a checkpoint still being written, or not one of ours, is skipped."""
    import pyarrow.fs

    fs, path = _fs(base)
    try:
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except (OSError, ValueError):
        return []
    found = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type != pyarrow.fs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        try:
            with fs.open_input_stream(_join(info.path, METRICS_FILE)) as fh:
                metrics = json.loads(fh.read())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict):
            found.append(KeptCheckpoint(info.path if "://" not in base else base.split("://")[0] + "://" + info.path,
                                        metrics))
    return found


def trial_checkpoint_dirs(storage_path: str, trial_id: str, trial_path: str | None) -> list[KeptCheckpoint]:
    """Every kept checkpoint of a sweep trial: in its Tune trial directory (single-process trials) and its Ray
    Train run directory ``<storage path>/train/trial_<id>`` (data-parallel trials).

    Args:
        storage_path: the sweep's storage path (``SweepSpec.storage_path``).
        trial_id: Tune's trial id.
        trial_path: the trial's directory in the storage (``Trial.path`` / ``Result.path``), if known.
    """
    bases = [trial_path, _join(_join(storage_path, "train"), f"trial_{trial_id}")]
    return [kept for base in filter(None, bases) for kept in kept_checkpoints(base)]


def best_checkpoint(kept: list[KeptCheckpoint], metric: str, mode: str) -> KeptCheckpoint | None:
    """The kept checkpoint with the best ``metric`` (``mode`` max or min); ties go to the later epoch."""
    scored = [k for k in kept if isinstance(k.metrics.get(metric), (int, float)) and math.isfinite(k.metrics[metric])]
    if not scored:
        return None
    sign = 1 if mode == "max" else -1
    return max(scored, key=lambda k: (sign * k.metrics[metric], k.metrics.get("epoch", 0)))


def fetch(uri: str, local: Path) -> Path:
    """A local directory with the checkpoint at ``uri``: the path itself when it is local, else a copy in
    ``local``."""
    import pyarrow.fs

    if "://" not in uri:
        return Path(uri)
    fs, path = _fs(uri)
    local.mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    return local

