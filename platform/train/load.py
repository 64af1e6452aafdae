"""From a path to a checkpoint, and from a checkpoint to its method: the one reader for every place a trained
model is loaded (``--from``, ``pointtune robustness``, a fine-tuned run's encoder, tests).

:func:`find_checkpoint` says which checkpoint directory a path designates (a checkpoint, a ``pointtune train``
run, a sweep, a sweep trial; :mod:`pointtune.layout`), :func:`load_method` rebuilds the method from the
checkpoint's own contents (its saved experiment and weights: nothing else needs to exist).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pointtune.config import ConfigError, ExperimentConfig, build_config
from pointtune.layout import STATE_FILE, RunDir, SweepDir, is_uri, trial_name, trial_of
from pointtune.method import Method, get_method, method_names
from pointtune.train.checkpoint import (CheckpointNotFoundError, best_checkpoint, checkpoints_of, fetch,
                                        kept_checkpoints, read_checkpoint)

_EXPECTED = "expected a checkpoint directory (holding state.pt), its state.pt, a run directory or a sweep directory"


@dataclass
class LoadedCheckpoint:
    """A method rebuilt from a checkpoint (:func:`load_method`).

    Attributes:
        method: the rebuilt :class:`~pointtune.method.Method`, its saved weights loaded, in eval mode, on the
            device ``map_location`` named.
        experiment: the run's validated :class:`~pointtune.config.ExperimentConfig`, as saved.
        class_names: the labelled dataset's classes (``method.num_classes`` of them), in label order.
        epoch: epochs the saved model was trained for (1 after the first epoch; ``metrics["epoch"]``).
        metrics: the metrics reported with the checkpoint (``val/*``, ``best/<objective>``, ...).
        path: the checkpoint directory read: a local :class:`~pathlib.Path`, or a storage URI (``s3://...``)
            for a sweep kept in remote storage.
    """

    method: Method
    experiment: ExperimentConfig
    class_names: list[str]
    epoch: int
    metrics: dict[str, Any]
    path: Path | str


def _check_torch_archive(state: Path) -> Path:
    """The directory of ``state`` if it is a ``torch.save`` archive (a zip holding ``*/data.pkl``).

    Raises:
        ConfigError: it is not (a text or random file, a truncated archive); names the file.
    """
    try:
        with zipfile.ZipFile(state) as archive:
            ok = any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        ok = False
    if not ok:
        raise ConfigError(f"{state}: not a pointtune checkpoint (torch cannot load it: not an archive written by "
                          "torch.save)")
    return state.parent


def _sweep_best(sweep: SweepDir) -> str:
    """The best checkpoint (local path or storage URI) of the sweep's best trial, as the sweep recorded it in
    ``best.json`` when it ended (or ``pointtune best`` did).

    Raises:
        ConfigError: no ``best.json`` (the sweep has not ended), or one that names no checkpoint.
    """
    if not sweep.best.is_file():
        raise ConfigError(f"{sweep.root}: this sweep has not ended (no {sweep.best.name}); `pointtune best "
                          f"{sweep.root}` records its best trial so far")
    try:
        checkpoint = json.loads(sweep.best.read_text()).get("checkpoint")
    except (ValueError, AttributeError):
        checkpoint = None
    if not checkpoint:
        raise ConfigError(f"{sweep.best}: names no checkpoint (no trial of this sweep left one)")
    return checkpoint


def _trial_best(sweep_dir: Path, trial_id: str) -> str:
    """The checkpoint of the epoch a sweep trial's loop selected, wherever the trial kept its checkpoints.

    Raises:
        ConfigError: the trial left no checkpoint.
    """
    sweep = SweepDir.open(sweep_dir)
    best = best_checkpoint(checkpoints_of(sweep.trial_dirs(trial_id)))
    if best is None:
        raise ConfigError(f"{sweep_dir}: trial {trial_id} left no checkpoint")
    return best.path


def find_checkpoint(path: str | Path) -> Path | str:
    """The checkpoint directory that ``path`` designates, without loading it.

    ``path`` may be:

    * a checkpoint directory (holding ``state.pt``) or that ``state.pt`` (a storage URI is taken as one);
    * a ``pointtune train`` run directory: local mode's ``checkpoints/best`` (``checkpoints/latest`` when no
      epoch reported the objective); with ``--workers N``, the one of Ray Train's ``train/checkpoint_*`` whose
      epoch the loop selected (``best/epoch``, :func:`~pointtune.train.checkpoint.best_checkpoint`);
    * a sweep directory (holding ``sweep.yaml``): the best trial's best checkpoint, as ``best.json`` says;
    * a sweep trial's directory (``<sweep>/tune/trial_<id>``, ``<sweep>/train/trial_<id>``) or any directory
      of ``checkpoint_*`` directories: the one of the epoch the loop selected.

    A local ``state.pt`` found so is checked to be a ``torch.save`` archive; :func:`read_checkpoint` checks
    the rest.

    Returns:
        The checkpoint directory: an absolute :class:`~pathlib.Path`, or a storage URI string (``s3://...``)
        when ``path`` is one or the sweep keeps its trials in remote storage.

    Raises:
        CheckpointNotFoundError: nothing exists at ``path``.
        ConfigError: nothing usable at ``path`` (another file, a directory of none of these kinds, a sweep or
            run without checkpoints, a sweep that has not ended), or its ``state.pt`` is not a file torch wrote;
            one line naming the path.
    """
    if is_uri(path):
        return str(path).rstrip("/").removesuffix(f"/{STATE_FILE}")
    path = Path(path).expanduser().absolute()
    if not path.exists():
        where = path if path.name == STATE_FILE else path / STATE_FILE
        raise CheckpointNotFoundError(f"{where}: no such file" + ("" if where == path else
                                                                 f" ({path} does not exist; {_EXPECTED})"))
    if path.is_file():
        if path.name != STATE_FILE:
            raise ConfigError(f"{path}: not a checkpoint ({_EXPECTED})")
        return _check_torch_archive(path)
    if (path / STATE_FILE).is_file():
        return _check_torch_archive(path / STATE_FILE)
    run = RunDir(path)
    if (run.checkpoints / "best" / STATE_FILE).is_file():
        return _check_torch_archive(run.checkpoints / "best" / STATE_FILE)
    if SweepDir(path).is_sweep():
        found = _sweep_best(SweepDir(path))
        return found if is_uri(found) else find_checkpoint(found)
    trial = trial_of(path)
    if trial is not None and path.name == trial_name(trial[1]):
        found = _trial_best(*trial)
        return found if is_uri(found) else find_checkpoint(found)
    for where in (run.ray_train, path):  # a multi-worker run's Ray Train checkpoints, or a directory of them
        best = best_checkpoint(kept_checkpoints(str(where)) if where.is_dir() else [])
        if best is not None:
            return find_checkpoint(best.path)
    if (run.checkpoints / "latest" / STATE_FILE).is_file():
        return _check_torch_archive(run.checkpoints / "latest" / STATE_FILE)
    if run.is_run():
        raise ConfigError(f"{path}: this run directory holds no checkpoint yet (none in {run.checkpoints} or "
                          f"{run.ray_train})")
    raise ConfigError(f"{path}: not a checkpoint ({_EXPECTED})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path | str, dict[str, Any]]:
    """The checkpoint that ``path`` designates (:func:`find_checkpoint`) and its training state, checked by
    :func:`~pointtune.train.checkpoint.read_checkpoint` (fetched to a temporary directory first when it lies in remote storage).

    Returns:
        ``(checkpoint directory (a local path or a storage URI), state)``.

    Raises:
        CheckpointNotFoundError, ConfigError: see :func:`find_checkpoint` and :func:`read_checkpoint`.
    """
    checkpoint = find_checkpoint(path)
    if not is_uri(checkpoint):
        return checkpoint, read_checkpoint(checkpoint, map_location)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return checkpoint, read_checkpoint(fetch(str(checkpoint), Path(tmp) / "checkpoint"), map_location)


def load_method(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the method saved in the checkpoint that ``path`` designates, with its weights.

    Only the checkpoint is read: a method that started from another run's weights (a fine-tuned encoder, SCL's
    stage 2) builds its architecture from its own saved config (:attr:`Method.sources
    <pointtune.method.Method.sources>`), and its weights are all in the checkpoint.

    Args:
        path: anything :func:`find_checkpoint` accepts: a checkpoint directory or its ``state.pt``, a
            ``pointtune train`` run directory (local or ``--workers N``), a sweep directory or one of its trial
            directories, or a checkpoint's storage URI.
        map_location: where the tensors are loaded and the method is placed (``"cpu"``, ``"cuda:0"``).

    Returns:
        A :class:`LoadedCheckpoint`: the method (weights loaded, eval mode), its experiment config, class
        names, epoch, metrics and the checkpoint directory read.

    Raises:
        CheckpointNotFoundError: nothing exists at ``path``.
        ConfigError: one line naming the path: not a checkpoint or a directory holding one, a file torch cannot
            load or without the entries of a pointtune checkpoint, a saved config that is no longer valid, an
            unknown method, or weights that do not match the rebuilt model.
    """
    checkpoint, state = load_checkpoint(path, map_location)
    where = f"{checkpoint}/{STATE_FILE}" if is_uri(checkpoint) else str(Path(checkpoint) / STATE_FILE)
    name = state["experiment"]["method"]["name"]
    try:
        get_method(name)
    except KeyError:
        raise ConfigError(f"{where}: cannot rebuild its {name!r} model (no such method here; known: "
                          f"{', '.join(method_names())})") from None
    try:
        experiment = build_config(name, state["experiment"], source=f"{where}: saved config")
    except ConfigError as err:
        raise ConfigError(f"{where}: cannot rebuild its {name!r} model ({err})") from None
    class_names = [str(c) for c in state["class_names"]]
    try:
        method = experiment.method_cls(experiment.method, len(class_names), experiment.train.epochs)
        method.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        reason = " ".join(str(msg).split())[:300]
        raise ConfigError(f"{where}: cannot rebuild its {name!r} model ({type(err).__name__}: {reason})") from None
    if isinstance(map_location, (str, torch.device)):
        method.to(map_location)
    method.eval()
    metrics = dict(state.get("metrics") or {})
    epoch = int(metrics.get("epoch", int(state.get("epoch", -1)) + 1))
    return LoadedCheckpoint(method, experiment, class_names, epoch, metrics, checkpoint)
