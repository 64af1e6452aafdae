"""Checkpoints on disk: writing a training state, reading one back, and finding the ones a run kept.

A checkpoint is a directory (:mod:`pointtune.layout`) holding ``state.pt`` (model, optimizer, AMP scaler,
epoch, the model selection with the selected epoch's weights, RNG states, experiment, class names),
``metrics.json`` (the epoch's metrics, so that the checkpoints a run kept can be told apart without loading
models) and optional evaluation arrays (``confusion.npy``; ``spectrum.npy``, the normalised feature spectrum
of the feature protocols, :mod:`pointtune.protocols.spectrum`; ``scene_*.npy``, the validation points behind
the scene renders of the ``scene_seg`` protocol). Ray Train and Tune move these directories to the run's
storage and keep the best by the objective and the latest; in local mode (``num_workers=0``) Ray keeps no copy,
so :class:`LocalCheckpoints` keeps the latest and the best.

:func:`read_checkpoint` reads and checks one ``state.pt``; :func:`kept_checkpoints` lists the checkpoints
under a directory of any storage, :func:`best_checkpoint` picks the one of the epoch the loop selected.
Rebuilding a method from a path is :mod:`pointtune.train.load`'s.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pointtune.config import ConfigError
from pointtune.layout import METRICS_FILE, STATE_FILE, join


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA, if present) RNG states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` and its ``metrics`` (finite numbers) to
    ``directory/metrics.json`` (the directory is created); return the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    metrics = {k: v for k, v in state.get("metrics", {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
    (directory / METRICS_FILE).write_text(json.dumps(metrics))
    return directory


def load_state(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read ``directory/state.pt``.

    Raises:
        FileNotFoundError: the directory holds no ``state.pt``; the message names it.
    """
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a pointtune checkpoint (no {STATE_FILE})")
    return torch.load(path, map_location=map_location, weights_only=False)


class LocalCheckpoints:
    """Latest and best checkpoint directories under ``root`` for local (in-process) runs.

    ``root/latest`` is replaced every epoch; ``root/best`` whenever the objective improves.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def latest(self) -> Path:
        """Directory of the most recent checkpoint."""
        return self.root / "latest"

    @property
    def best(self) -> Path:
        """Directory of the checkpoint with the best objective so far."""
        return self.root / "best"

    def commit(self, staged: Path, is_best: bool) -> Path:
        """Move a freshly written checkpoint directory into ``latest`` (and copy it to ``best``)."""
        if is_best:
            shutil.rmtree(self.best, ignore_errors=True)
            shutil.copytree(staged, self.best)
        shutil.rmtree(self.latest, ignore_errors=True)
        shutil.move(str(staged), self.latest)
        return self.latest


class CheckpointNotFoundError(ConfigError, FileNotFoundError):
    """Nothing exists where a checkpoint was named: a :class:`~pointtune.config.ConfigError` (one line naming
    the path) that is also a :class:`FileNotFoundError`, for callers that handle missing files."""


def read_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The training state in ``directory/state.pt`` (a checkpoint directory, not resolved further), checked to
    be a pointtune checkpoint: a ``torch.save`` file holding a dict with ``model`` (a state dict),
    ``experiment`` (with ``method.name``) and ``class_names``.

    Raises:
        CheckpointNotFoundError: the directory holds no ``state.pt``.
        ConfigError: a file torch cannot load (a text or random file, a truncated file), or a dict without
            those entries; one line naming the file.
    """
    import pickle

    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(f"{path}: no such file (a checkpoint directory holds {STATE_FILE})")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError, KeyError,
            AttributeError, ImportError, TypeError, IndexError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(f"{path}: not a pointtune checkpoint (torch cannot load it: {reason})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: not a pointtune checkpoint (holds a {type(state).__name__}, not a dict)")
    experiment = state.get("experiment")
    method = experiment.get("method") if isinstance(experiment, dict) else None
    missing = [k for k in ("model", "class_names") if k not in state]
    if not isinstance(method, dict) or not isinstance(method.get("name"), str) or missing:
        what = missing[0] if missing else "experiment.method.name"
        raise ConfigError(f"{path}: not a pointtune checkpoint (no {what!r} entry)")
    if not isinstance(state["model"], dict):
        raise ConfigError(f"{path}: not a pointtune checkpoint ('model' is a {type(state['model']).__name__}, "
                          "not a state dict)")
    return state


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
            with fs.open_input_stream(join(info.path, METRICS_FILE)) as fh:
                metrics = json.loads(fh.read())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict):
            found.append(KeptCheckpoint(info.path if "://" not in base else base.split("://")[0] + "://" + info.path,
                                        metrics))
    return found


def best_checkpoint(kept: list[KeptCheckpoint]) -> KeptCheckpoint | None:
    """The kept checkpoint of the epoch the loop selected: ``best/epoch`` as the newest kept checkpoint
    reported it (:mod:`pointtune.objective`; Ray keeps that checkpoint, by the same rule). When it is no longer
    kept (a PBT trial keeps only its latest checkpoints, and one that exploited carries its donor's
    selection) or nothing selected an epoch yet, the newest kept checkpoint. ``None`` when ``kept`` is empty."""
    if not kept:
        return None
    newest = max(kept, key=lambda k: (k.metrics.get("epoch", 0), k.path))
    selected = newest.metrics.get("best/epoch")
    return next((k for k in kept if selected and k.metrics.get("epoch") == selected), newest)


def checkpoints_of(bases: list[str]) -> list[KeptCheckpoint]:
    """Every kept checkpoint directly under any of ``bases`` (e.g. :meth:`pointtune.layout.SweepDir.trial_dirs`)."""
    return [kept for base in bases for kept in kept_checkpoints(base)]


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



def experiment_of(checkpoint: str, scratch: Path) -> dict[str, Any]:
    """The experiment config (nested dict) a checkpoint (local path or storage URI; fetched into ``scratch``)
    was trained with."""
    return load_state(fetch(checkpoint, scratch))["experiment"]
