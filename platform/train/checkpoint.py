"""Training state on disk: model, optimizer, scheduler, AMP scaler, epoch, best score and RNG states.

One checkpoint is a directory holding ``state.pt`` (this module), ``metrics.json`` (the epoch's metrics, so
that the best checkpoint of a run can be chosen without loading models) and optional evaluation artefacts
(``confusion.npy``; ``spectrum.npy``, the normalised feature spectrum of the feature protocols,
:mod:`pointtune.protocols.spectrum`; ``scene_*.npy``, the validation points behind the scene renders of the
``scene_seg`` protocol, :mod:`pointtune.protocols.scene_seg`). Ray Train moves these directories to the run's
storage; in local mode (``num_workers=0``) Ray keeps no copy, so :class:`LocalCheckpoints` keeps the latest and
the best.

This module is also the one reader of the format: :func:`load_method` rebuilds a method from any checkpoint
the project writes (a local run's ``checkpoints/best``, a multi-worker run's ``train/checkpoint_*``, a sweep
trial's, a sweep's best), :func:`find_checkpoint` says which checkpoint directory a path designates,
:func:`read_checkpoint` reads and checks one ``state.pt`` and :func:`load_checkpoint` does both.
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

from pointtune.config import ConfigError, ExperimentConfig, build_config
from pointtune.method import Method, get_method, method_names

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"


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


# --------------------------------------------------------------------------------------------------------
# Reading checkpoints back: the one reader of the format, for every place a checkpoint is loaded from.
# --------------------------------------------------------------------------------------------------------

RUN_CHECKPOINTS = "checkpoints"  # a local run's LocalCheckpoints root, under the run directory
RAY_TRAIN_DIR = "train"  # where Ray Train keeps a multi-worker run's checkpoints (launch.py: RunConfig name)
SWEEP_FILE = "sweep.yaml"
_EXPECTED = "expected a checkpoint directory (holding state.pt), its state.pt, a run directory or a sweep directory"


class CheckpointNotFoundError(ConfigError, FileNotFoundError):
    """Nothing exists where a checkpoint was named: a :class:`~pointtune.config.ConfigError` (one line naming
    the path) that is also a :class:`FileNotFoundError`, for callers that handle missing files."""


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


def _is_uri(path: str | Path) -> bool:
    return "://" in str(path)


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


def _recorded_objective(kept: list) -> str | None:
    """The objective the loop recorded in the checkpoints' metrics (as ``best/<metric>``), if any."""
    for checkpoint in sorted(kept, key=lambda k: -k.metrics.get("epoch", 0)):
        names = [k.removeprefix("best/") for k in checkpoint.metrics if k.startswith("best/")]
        if names:
            return names[0]
    return None


def _run_objective(run_dir: Path) -> list[tuple[str, str]]:
    """The objective ``(metric, mode)`` of the ``pointtune train`` run in ``run_dir`` (its protocol's default,
    from the ``config.yaml`` the run wrote), or none when there is no readable config."""
    from pointtune.config import config_from_file, load_yaml
    from pointtune.protocols import default_objective

    config = run_dir / "config.yaml"
    if not config.is_file():
        return []
    try:
        exp = config_from_file(load_yaml(config)["method"]["name"], config)
    except (ConfigError, KeyError, TypeError):
        return []
    return [default_objective(exp)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _choose(kept: list, known: list[tuple[str, str]] = ()) -> str:
    """The best of the checkpoint directories ``kept`` by the run's objective: the metric the loop recorded as
    ``best/<metric>``, maximised or minimised as the first of ``known`` objectives naming it says (a sweep's
    objective, a run's protocol), else maximised; ties go to the later epoch. When no checkpoint recorded a
    finite objective, the latest one."""
    from pointtune.search.checkpoints import best_checkpoint

    metric = _recorded_objective(kept)
    if metric is not None:
        mode = next((m for name, m in known if name == metric), "max")
        best = best_checkpoint(kept, metric, mode)
        if best is not None:
            return best.path
    return max(kept, key=lambda k: (k.metrics.get("epoch", 0), k.path)).path


def _sweep_best(sweep_dir: Path) -> str:
    """The best checkpoint (local path or storage URI) of the best trial of the sweep in ``sweep_dir``, by the
    sweep's objective, from Tune's saved state (Ray is not started).

    Raises:
        ConfigError: a bad ``sweep.yaml``, an unreadable Tune experiment, or no trial left a checkpoint.
    """
    from dataclasses import asdict

    from ray.tune import ExperimentAnalysis, ResultGrid

    from pointtune.search.report import summarize
    from pointtune.search.sweep import TUNE_NAME, SweepSpec, trial_config

    spec = SweepSpec.load(sweep_dir)
    space = spec.space()
    tune_path = f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}"
    try:
        grid = ResultGrid(ExperimentAnalysis(tune_path, default_metric=space.metric, default_mode=space.mode))
    except (ValueError, FileNotFoundError, OSError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"{sweep_dir}: cannot read the sweep's Tune experiment at {tune_path} ({reason})") from None
    rows = summarize(grid, space, trial_config(spec, {}).train.epochs, asdict(spec))
    found = next((r.best_checkpoint for r in rows if r.best_checkpoint), None)
    if found is None:
        raise ConfigError(f"{sweep_dir}: no trial of this sweep left a checkpoint")
    return found


def _sweep_trial(trial_dir: Path) -> str | None:
    """The best checkpoint of a sweep trial named by its directory (``<sweep>/tune/trial_<id>`` or
    ``<sweep>/train/trial_<id>``), wherever the trial kept its checkpoints, by the sweep's objective; ``None``
    when ``trial_dir`` is not such a directory of a sweep directory."""
    from pointtune.search.checkpoints import kept_checkpoints, trial_checkpoint_dirs
    from pointtune.search.sweep import TUNE_NAME, SweepSpec

    sweep_dir = trial_dir.parent.parent
    if not (trial_dir.name.startswith("trial_") and trial_dir.parent.name in (TUNE_NAME, RAY_TRAIN_DIR)
            and (sweep_dir / SWEEP_FILE).is_file()):
        return None
    spec = SweepSpec.load(sweep_dir)
    space = spec.space()
    trial_id = trial_dir.name.removeprefix("trial_")
    tune_trial = sweep_dir / TUNE_NAME / trial_dir.name
    kept = trial_checkpoint_dirs(spec.storage_path, trial_id, str(tune_trial) if tune_trial.is_dir() else None)
    kept += [k for k in kept_checkpoints(str(trial_dir)) if k.path not in {c.path for c in kept}]
    if not kept:
        raise ConfigError(f"{trial_dir}: this trial left no checkpoint")
    return _choose(kept, [(space.metric, space.mode)])


def find_checkpoint(path: str | Path) -> Path | str:
    """The checkpoint directory that ``path`` designates, without loading it.

    ``path`` may be:

    * a checkpoint directory (holding ``state.pt``) or that ``state.pt`` (a storage URI is taken as one);
    * a ``pointtune train`` run directory: local mode's ``checkpoints/best`` (``checkpoints/latest`` when no
      epoch reported the objective); with ``--workers N``, the best of Ray Train's ``train/checkpoint_*`` by the
      run's objective (its protocol's, from the run's ``config.yaml``), read from every checkpoint's
      ``metrics.json``;
    * a sweep directory (holding ``sweep.yaml``): the best trial's best checkpoint;
    * a sweep trial's directory (``<sweep>/tune/trial_<id>``, ``<sweep>/train/trial_<id>``) or any directory
      of ``checkpoint_*`` directories: the best of them by the objective.

    A local ``state.pt`` found so is checked to be a ``torch.save`` archive; :func:`read_checkpoint` checks
    the rest.

    Returns:
        The checkpoint directory: an absolute :class:`~pathlib.Path`, or a storage URI string (``s3://...``)
        when ``path`` is one or the sweep keeps its trials in remote storage.

    Raises:
        CheckpointNotFoundError: nothing exists at ``path``.
        ConfigError: nothing usable at ``path`` (another file, a directory of none of these kinds, a sweep or
            run without checkpoints), or its ``state.pt`` is not a file torch wrote; one line naming the path.
    """
    if _is_uri(path):
        uri = str(path).rstrip("/")
        return uri.removesuffix(f"/{STATE_FILE}")
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
    local = path / RUN_CHECKPOINTS
    if (local / "best" / STATE_FILE).is_file():
        return _check_torch_archive(local / "best" / STATE_FILE)
    if (path / SWEEP_FILE).is_file():
        found = _sweep_best(path)
        return found if _is_uri(found) else find_checkpoint(found)
    trial = _sweep_trial(path)
    if trial is not None:
        return trial if _is_uri(trial) else find_checkpoint(trial)
    from pointtune.search.checkpoints import kept_checkpoints

    for where in (path / RAY_TRAIN_DIR, path):  # a multi-worker run's Ray Train checkpoints, or a directory of them
        kept = kept_checkpoints(str(where)) if where.is_dir() else []
        if kept:
            return find_checkpoint(_choose(kept, _run_objective(path) or _run_objective(path.parent)))
    if (local / "latest" / STATE_FILE).is_file():
        return _check_torch_archive(local / "latest" / STATE_FILE)
    if (path / RUN_CHECKPOINTS).is_dir() or (path / "config.yaml").is_file():
        raise ConfigError(f"{path}: this run directory holds no checkpoint yet (none in {local} or "
                          f"{path / RAY_TRAIN_DIR})")
    raise ConfigError(f"{path}: not a checkpoint ({_EXPECTED})")


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path | str, dict[str, Any]]:
    """The checkpoint that ``path`` designates (:func:`find_checkpoint`) and its training state, checked by
    :func:`read_checkpoint` (fetched to a temporary directory first when it lies in remote storage).

    Returns:
        ``(checkpoint directory (a local path or a storage URI), state)``.

    Raises:
        CheckpointNotFoundError, ConfigError: see :func:`find_checkpoint` and :func:`read_checkpoint`.
    """
    checkpoint = find_checkpoint(path)
    if not _is_uri(checkpoint):
        return checkpoint, read_checkpoint(checkpoint, map_location)
    import tempfile

    from pointtune.search.checkpoints import fetch

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
    where = f"{checkpoint}/{STATE_FILE}" if _is_uri(checkpoint) else str(Path(checkpoint) / STATE_FILE)
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
