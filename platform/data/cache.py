"""On-disk cache of built splits, shared by every trial and worker on a machine.

Reading a dataset, filtering classes, carving the validation split and (``data.sampling=fps``)
farthest-point subsampling every cloud is the same work for every trial of a sweep and every worker of a
trial: 10 s or more for 344 ModelNet40 clouds with FPS on 2 cores. :func:`cached_splits` does it once per
machine and keeps the result as one ``.npz`` file per data configuration.

Key: every ``data.*`` field that changes the stored clouds (all but ``augment`` and ``normalize``, which
act per item), a format version, and, for datasets on disk, the root path with the size and modification
time of every entry at its top level and one level below (new, removed or rewritten files change the key).
Location: ``<pointtune cache>/datasets``, the cache being ``$POINTTUNE_CACHE_DIR`` or ``~/.cache/pointtune``. ``data.cache=false`` builds
afresh. Files are written to a temporary name and renamed, so concurrent trials never read half a file.

Point-cloud datasets only: scene datasets (``s3dis``, ``scannet``) are never cached (``data.cache`` is ignored
for them): their splits are lists of rooms that the loaders read quickly from ``.npy`` files (or lazily,
``data.lazy``), and grid sampling and cropping happen per item. The scene knobs, which a point-cloud config
always holds at their defaults, are left out of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pointtune.data.config import SCENE_ONLY, DataConfig
from pointtune.data.pointcloud import PointCloudSet

FORMAT = 1
SPLITS = ("train", "val", "test")
# Fields that do not change the stored clouds: per-item ones, and the scene knobs (at their defaults here).
_PER_ITEM = {"augment", "normalize", "cache", *SCENE_ONLY}


def pointtune_cache() -> Path:
    """pointtune's cache folder on this machine: ``$POINTTUNE_CACHE_DIR``, else ``~/.cache/pointtune``."""
    return Path(os.environ.get("POINTTUNE_CACHE_DIR") or Path.home() / ".cache" / "pointtune")


def cache_dir() -> Path:
    """Where built splits are kept: ``<pointtune cache>/datasets``."""
    return pointtune_cache() / "datasets"


def _source_stamp(root: str | None) -> list:
    """``(name, size, mtime)`` of every entry of ``root`` and of its subdirectories (not deeper)."""
    if not root or not Path(root).is_dir():
        return []
    stamp = []
    for entry in sorted(Path(root).iterdir()):
        stat = entry.stat()
        stamp.append((entry.name, stat.st_size, stat.st_mtime_ns))
        if entry.is_dir():
            stamp += [(f"{entry.name}/{e.name}", e.stat().st_size, e.stat().st_mtime_ns) for e in sorted(entry.iterdir())]
    return stamp


def cache_key(cfg: DataConfig) -> str:
    """A hex digest that changes whenever the stored splits of ``cfg`` would (see the module docstring)."""
    fields = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _PER_ITEM}
    payload = json.dumps([FORMAT, fields, _source_stamp(cfg.root)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _save(path: Path, splits: dict[str, PointCloudSet]) -> None:
    arrays = {"class_names": np.array(json.dumps(splits["train"].class_names))}
    for name, split in splits.items():
        arrays[f"{name}/points"], arrays[f"{name}/labels"] = split.points, split.labels
        for extra in ("normals", "seg"):
            if getattr(split, extra) is not None:
                arrays[f"{name}/{extra}"] = getattr(split, extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
        np.savez(fh, **arrays)
    os.replace(fh.name, path)


def _load(path: Path) -> dict[str, PointCloudSet]:
    with np.load(path) as data:
        names = json.loads(str(data["class_names"]))
        return {
            split: PointCloudSet(
                data[f"{split}/points"], data[f"{split}/labels"], names,
                data[f"{split}/normals"] if f"{split}/normals" in data else None,
                data[f"{split}/seg"] if f"{split}/seg" in data else None,
            )
            for split in SPLITS
        }


def cached_splits(cfg: DataConfig, build: Callable[[], dict[str, PointCloudSet]]) -> dict[str, PointCloudSet]:
    """The ``{"train", "val", "test"}`` splits of ``cfg``: from the cache, or from ``build()`` (then cached).

    A cache file that cannot be read (truncated, another format) is rebuilt; errors of ``build()`` (bad
    data) propagate and nothing is cached.
    """
    if not cfg.cache:
        return build()
    path = cache_dir() / f"{cfg.name}-{cache_key(cfg)}.npz"
    if path.is_file():
        try:
            return _load(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # rebuilt and rewritten below
    splits = build()
    try:
        _save(path, splits)
    except OSError as err:  # a read-only home, a full disk: train anyway
        print(f"[pointtune] dataset cache not written ({path}: {err.strerror or err})", flush=True)
    return splits
