"""Where everything of a run and of a sweep lives on disk: the one owner of those paths, and of how a run, a
sweep or a sweep trial is recognised from a path.

A checkpoint directory (written by the loop, :mod:`pointtune.train.checkpoint`)::

    state.pt        model, optimizer, scaler, epoch, model selection, RNG states, experiment, class names
    metrics.json    the epoch's metrics (finite numbers), read without loading the model
    confusion.npy, spectrum.npy, scene_*.npy   evaluation arrays for the MLflow artifacts

A ``pointtune train`` run directory (:class:`RunDir`)::

    config.yaml     the experiment        metrics.jsonl  one JSON line per epoch   summary.json  the outcome
    checkpoints/latest, checkpoints/best  local mode (``--workers 0``)
    train/checkpoint_*                    Ray Train's checkpoints (``--workers N``)
    sources/<key>/  copies of the checkpoints the run started from (``method.pretrained``, ...)
    mlflow.db, mlartifacts/               the default MLflow store
    <prerequisite>/                       a run the method needs first (SCL's ``stage1``)

A sweep directory (:class:`SweepDir`)::

    sweep.yaml      the sweep as asked (what ``pointtune resume`` reads)    space.yaml  the resolved search space
    runtime.yaml    what was known only when the sweep started (resources, MLflow ids, prerequisite runs)
    optuna.db       the Optuna study           mlflow.db, mlartifacts/   the default MLflow store
    tune/           Tune's experiment state and single-process trials' checkpoints (``tune/trial_<id>``)
    train/          data-parallel trials' Ray Train runs and checkpoints (``train/trial_<id>``)
                    (with ``--storage``, tune/ and train/ live in ``<storage>/<sweep dir name>/`` instead)
    sources/<key>/  copies of the checkpoints every trial starts from     <prerequisite>/  SCL's ``stage1`` run
    summary.csv, summary.txt, best.json, best_config.yaml, optimization_history.png, param_importances.png,
    pareto_front.png (a sweep with several objectives)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"
SWEEP_FILE = "sweep.yaml"
RUN_CONFIG = "config.yaml"
TRIAL_PREFIX = "trial_"


def is_uri(path: str | Path) -> bool:
    """Whether ``path`` is a storage URI (``s3://...``, ``gs://...``) rather than a local path."""
    return "://" in str(path)


def join(base: str, *names: str) -> str:
    """``base/name/...`` for a local path or a storage URI alike."""
    return "/".join([base.rstrip("/"), *names])


def trial_name(trial_id: str) -> str:
    """``trial_<Tune trial id>``: the name of a trial's Tune directory, of its Ray Train run and its MLflow run."""
    return f"{TRIAL_PREFIX}{trial_id}"


@dataclass(frozen=True)
class RunDir:
    """The directory of one ``pointtune train`` run (see the module docstring)."""

    RAY_TRAIN_NAME = "train"  # Ray Train's run name (RunConfig.name), also a sweep's data-parallel trials' parent
    root: Path

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def metrics(self) -> Path:
        """One JSON line of metrics per epoch, written by rank 0."""
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        """Local mode's ``latest`` and ``best`` checkpoints (:class:`pointtune.train.checkpoint.LocalCheckpoints`)."""
        return self.root / "checkpoints"

    @property
    def ray_train(self) -> Path:
        """Ray Train's run directory with ``--workers N`` (its ``checkpoint_*``)."""
        return self.root / self.RAY_TRAIN_NAME

    @property
    def sources(self) -> Path:
        """Copies of the checkpoints the run starts from (a sweep's: of those every trial starts from)."""
        return self.root / "sources"

    def source(self, key: str) -> Path:
        """Where the copy of the checkpoint that config key ``key`` (``method.pretrained``) names is kept."""
        return self.sources / key.rsplit(".", 1)[-1]

    def prerequisite(self, name: str) -> Path:
        """The directory of the run this run's method needs first (``stage1``)."""
        return self.root / name

    def is_run(self) -> bool:
        """Whether the directory looks like a ``pointtune train`` run (a config or checkpoints of one)."""
        return self.config.is_file() or self.checkpoints.is_dir()


@dataclass(frozen=True)
class SweepDir:
    """The directory of one sweep (see the module docstring).

    Attributes:
        root: the sweep directory (local: ``sweep.yaml``, the studies, the summary).
        storage: ``--storage`` (a path or URI under which ``<root name>/tune`` and ``/train`` live), or ``None``.
    """

    TUNE_NAME = "tune"  # Tune's experiment name (RunConfig.name)
    root: Path
    storage: str | None = None

    @classmethod
    def open(cls, root: str | Path) -> SweepDir:
        """The sweep directory ``root`` with the ``storage`` its ``sweep.yaml`` names (``None`` when it names
        none or cannot be read: the spec's own reader reports a bad file)."""
        import yaml

        root = Path(root).resolve()
        try:
            storage = (yaml.safe_load((root / SWEEP_FILE).read_text()) or {}).get("storage")
        except (OSError, yaml.YAMLError, AttributeError):
            storage = None
        return cls(root, storage if isinstance(storage, str) else None)

    @property
    def spec(self) -> Path:
        return self.root / SWEEP_FILE

    @property
    def space(self) -> Path:
        return self.root / "space.yaml"

    @property
    def runtime(self) -> Path:
        return self.root / "runtime.yaml"

    @property
    def optuna_db(self) -> Path:
        return self.root / "optuna.db"

    @property
    def optuna_url(self) -> str:
        """The study's storage URL (``optuna-dashboard`` takes it)."""
        return f"sqlite:///{self.optuna_db.resolve()}"

    @property
    def storage_path(self) -> str:
        """Where Tune and Ray Train keep state and checkpoints: ``<storage>/<sweep dir name>`` with
        ``--storage`` (shared storage on multi-node clusters, one folder per sweep), else the sweep directory."""
        if self.storage:
            return join(self.storage, self.root.name)
        return str(self.root.resolve())

    @property
    def tune(self) -> str:
        """Tune's experiment directory (``Tuner.restore`` reads it)."""
        return join(self.storage_path, self.TUNE_NAME)

    @property
    def train(self) -> str:
        """The parent of data-parallel trials' Ray Train runs."""
        return join(self.storage_path, RunDir.RAY_TRAIN_NAME)

    def trial_dirs(self, trial_id: str, tune_trial_path: str | None = None) -> list[str]:
        """Where a trial keeps checkpoints: its Tune trial directory (single-process trials; ``tune_trial_path``
        when Tune gave one, e.g. ``Trial.path``) and its Ray Train run (data-parallel trials)."""
        return [tune_trial_path or join(self.tune, trial_name(trial_id)), join(self.train, trial_name(trial_id))]

    @property
    def summary_csv(self) -> Path:
        return self.root / "summary.csv"

    @property
    def summary_txt(self) -> Path:
        return self.root / "summary.txt"

    @property
    def best(self) -> Path:
        """The best trial and its best checkpoint, written when the sweep ends or by ``pointtune best``."""
        return self.root / "best.json"

    @property
    def best_config(self) -> Path:
        return self.root / "best_config.yaml"

    def plot(self, name: str) -> Path:
        """``<root>/<name>.png``."""
        return self.root / f"{name}.png"

    def prerequisite(self, name: str) -> Path:
        """The one run every trial needs first (``stage1``), trained before the trials."""
        return self.root / name

    def is_sweep(self) -> bool:
        return self.spec.is_file()


def trial_of(path: Path) -> tuple[Path, str] | None:
    """``(sweep dir, trial id)`` when ``path`` is, or lies inside, a sweep trial's directory in a local sweep
    (``<sweep>/tune/trial_<id>/...`` or ``<sweep>/train/trial_<id>/...``); else ``None``."""
    for parent in [path, *path.parents]:
        up = parent.parent
        if (parent.name.startswith(TRIAL_PREFIX) and up.name in (SweepDir.TUNE_NAME, RunDir.RAY_TRAIN_NAME)
                and SweepDir(up.parent).is_sweep()):
            return up.parent, parent.name.removeprefix(TRIAL_PREFIX)
    return None


def run_of(path: Path) -> Path | None:
    """The ``pointtune train`` run directory that ``path`` (a checkpoint directory) lies in: the parent of its
    ``checkpoints/`` or ``train/`` directory, when that holds the run's config; else ``None``."""
    for parent in [path, *path.parents]:
        if parent.name in ("checkpoints", RunDir.RAY_TRAIN_NAME) and RunDir(parent.parent).config.is_file():
            return parent.parent
    return None
