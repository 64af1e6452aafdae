"""What a sweep is: :class:`SweepSpec`, the sweep as asked (``sweep.yaml``), and :class:`SweepRuntime`, what was
known only when it started (``runtime.yaml``); both frozen, each written once. From them and a trial's
sampled values, :func:`trial_config` builds the trial's experiment, the one place that does.

Everything that reads a sweep (the trials, the records, the report, ``pointtune best`` / ``resume``) imports
this module, not the orchestration in :mod:`pointtune.search.sweep`.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pointtune.cluster import DEFAULT_WORKER_START_TIMEOUT_S
from pointtune.config import ConfigError, ExperimentConfig, build_config, load_yaml
from pointtune.layout import SweepDir
from pointtune.search.resources import TrialResources
from pointtune.search.space import SearchSpace, load_search_space

STUDY_NAME = "pointtune"
OPTUNA_KEY = "optuna_trial"  # Optuna trial number, carried in each Tune trial's config (a cross-link)
ROW_KEY = "row"  # a seed study's trial: the name of the configuration (row) it retrains
SCHEDULERS = ("asha", "none", "pbt")  # what `pointtune sweep --scheduler` offers (a seed study's is "fifo")
SAMPLERS = ("tpe", "random", "gp")  # the Optuna samplers `--sampler` offers (asha and none sweeps)


def sampled_params(config: dict[str, Any] | None) -> dict[str, Any]:
    """A Tune trial's config without pointtune's bookkeeping keys: the values the trial was given."""
    return {k: v for k, v in (config or {}).items() if k != OPTUNA_KEY}


@dataclass(frozen=True)
class SweepSpec:
    """The sweep as asked: method, space, budget, resources and fixed overrides; saved to ``sweep.yaml`` so
    that ``pointtune resume`` rebuilds it. ``epochs`` is the trials' epoch count (filled from the experiment
    config when the sweep starts if not given); ``overrides`` are the ``--set`` values (paths made absolute).

    ``scheduler``: ``asha`` (Optuna suggests, ASHA stops early), ``none`` (Optuna suggests, every trial runs
    all its epochs), ``pbt`` (population-based training) or ``fifo``: a seed study (:mod:`pointtune.search.study`), the grid of ``rows`` (name -> a whole config,
    each trial's base instead of ``base``) x ``seeds`` (``train.seed``, the space's one parameter), every trial
    run to the end. ``of``: the sweep a study was made from (its directory), if any. ``sampler``: the Optuna
    sampler of ``asha`` and ``none`` sweeps (:data:`SAMPLERS`, :func:`pointtune.search.sweep.make_sampler`);
    ``startup_trials``: how many random trials a model-based sampler (TPE, GP) draws before it models the results.
    ``memory_per_worker``: GB of Ray's ``memory`` resource each worker holds (None: memory is not planned).
    """

    method: str
    space_file: str
    sweep_dir: str
    trials: int = 8
    epochs: int | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    memory_per_worker: float | None = None
    max_concurrent: int | None = None
    seed: int = 0
    address: str | None = None
    storage: str | None = None
    mlflow_uri: str | None = None
    grace_period: int = 1
    scheduler: str = "asha"
    sampler: str = "tpe"
    startup_trials: int = 10
    pbt_interval: int = 1
    wait_for_resources: float = 0.0
    worker_start_timeout: float = DEFAULT_WORKER_START_TIMEOUT_S
    verbose: bool = False
    base: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    of: str | None = None

    @property
    def searches(self) -> bool:
        """Whether an Optuna study suggests the trials (``asha``, ``none``; PBT and seed studies have none)."""
        return self.scheduler in ("asha", "none")

    @property
    def root(self) -> Path:
        """The sweep directory."""
        return Path(self.sweep_dir)

    @property
    def layout(self) -> SweepDir:
        """Where everything of this sweep lives (:class:`pointtune.layout.SweepDir`)."""
        return SweepDir(self.root, self.storage)

    @property
    def storage_path(self) -> str:
        """Where Tune and Train keep state and checkpoints (:attr:`pointtune.layout.SweepDir.storage_path`)."""
        return self.layout.storage_path

    def fixed_overrides(self) -> dict[str, Any]:
        """Overrides every trial gets on top of its sampled values (``--set``, ``--epochs``, dataset flags)."""
        out = dict(self.overrides)
        if self.epochs is not None:
            out["train.epochs"] = self.epochs
        return out

    def save(self) -> None:
        """Write ``sweep.yaml``."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.layout.spec.write_text(yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepSpec:
        """Read ``<sweep_dir>/sweep.yaml``.

        Raises:
            ConfigError: not a sweep directory, or a ``sweep.yaml`` with an unknown or missing key or a bad
                number (one line naming the file and the key).
        """
        from pointtune.preflight import load_sweep_yaml_checked

        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        tree = load_sweep_yaml_checked(SweepDir(Path(sweep_dir)).spec, [f.name for f in fields(cls)], required)
        return cls(**{**tree, "sweep_dir": str(Path(sweep_dir).resolve())})

    def space(self) -> SearchSpace:
        """The resolved search space saved in the sweep directory."""
        return load_search_space(self.layout.space, self.method)


@dataclass(frozen=True)
class SweepRuntime:
    """What a sweep learned when it started, written once to ``runtime.yaml`` (:meth:`save`) and read by
    every trial, record and report after that.

    Attributes:
        resources: the per-trial resources planned from the cluster's nodes (:class:`TrialResources`).
        tracking_uri, experiment_id, parent_run_id: the MLflow store, experiment and the sweep's parent run.
        overrides: config keys every trial gets that the sweep decided itself (the prerequisite run it trained,
            ``method.stage1_from``; the copies of the checkpoints trials start from).
    """

    resources: dict[str, float]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def plan(self) -> TrialResources:
        """The per-trial resources."""
        return TrialResources(**self.resources)

    def save(self, layout: SweepDir) -> None:
        """Write ``runtime.yaml``."""
        layout.runtime.write_text(yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, layout: SweepDir) -> SweepRuntime:
        """Read ``runtime.yaml``.

        Raises:
            ConfigError: missing (the sweep never started its trials) or not a valid record; names the file.
        """
        if not layout.runtime.is_file():
            raise ConfigError(f"{layout.root}: this sweep never started its trials (no {layout.runtime.name})")
        tree = load_yaml(layout.runtime)
        try:
            return cls(**tree)
        except TypeError as err:
            raise ConfigError(f"{layout.runtime}: not a sweep's runtime record ({err})") from None


def trial_config(spec: SweepSpec, sampled: dict[str, Any], space: SearchSpace | None = None,
                 runtime: SweepRuntime | None = None) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a trial: base config (a seed study's: its row's config) + sampled
    values + the sweep's fixed overrides + the runtime's (``runtime``: none before the sweep starts). A PBT
    population draws every parameter: those whose ``when`` conditions fail are left out here (``space``: the
    sweep's, default the one saved in the sweep directory).

    Raises:
        ConfigError: the values do not make a valid config (names the key).
    """
    sampled = sampled_params(sampled)
    base = spec.rows[sampled.pop(ROW_KEY)] if spec.rows else spec.base
    space = space or spec.space()
    if spec.scheduler == "pbt":
        sampled = space.active_values(sampled)
    sampled = space.resolve(sampled)
    overrides = {**sampled, **spec.fixed_overrides(), **(runtime.overrides if runtime else {})}
    return build_config(spec.method, base, overrides, source=f"trial {sampled}")


def study_storage(sweep_dir: str | Path):
    """The Optuna storage of a sweep (``<sweep dir>/optuna.db``)."""
    import optuna

    return optuna.storages.RDBStorage(SweepDir(Path(sweep_dir)).optuna_url)
