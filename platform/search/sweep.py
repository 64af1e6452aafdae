"""A sweep: Ray Tune + OptunaSearch (TPE, study in SQLite) + ASHA, one TorchTrainer per trial, MLflow runs.

Data flow: :class:`SweepSpec` (validated, saved as ``<sweep dir>/sweep.yaml``) -> ``Tuner`` -> one
:func:`run_trial` driver per trial -> ``TorchTrainer`` (N workers) running the shared loop -> reports via
``TuneReportCallback`` -> ASHA and Optuna act on them. After ``fit`` (or ``resume``),
:func:`pointtune.search.report.finalize` closes the MLflow runs and writes the summary and plots.

Sweep directory layout::

    sweep.yaml      the spec (what `pointtune resume` reads)     space.yaml   the resolved search space
    optuna.db       the Optuna study (optuna-dashboard sqlite:///optuna.db)
    mlflow.db, mlartifacts/   default MLflow store
    tune/           Tune experiment state (Tuner.restore)         train/  Train runs and checkpoints
    summary.csv, best_config.yaml, optimization_history.png, param_importances.png
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pointtune.config import ConfigError, build_config
from pointtune.search.space import SearchSpace, load_search_space, load_space_tree

TUNE_NAME = "tune"
STUDY_NAME = "pointtune"


@dataclass
class SweepSpec:
    """Everything a sweep needs; saved to ``sweep.yaml`` so that ``pointtune resume`` can rebuild it."""

    method: str
    space_file: str
    sweep_dir: str
    trials: int = 8
    epochs: int | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    max_concurrent: int | None = None
    seed: int = 0
    address: str | None = None
    storage: str | None = None
    mlflow_uri: str | None = None
    grace_period: int = 1
    wait_for_resources: float = 0.0
    base: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str | None = None
    experiment_id: str | None = None
    tracking_uri: str | None = None
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The sweep directory."""
        return Path(self.sweep_dir)

    @property
    def storage_path(self) -> str:
        """Where Tune and Train keep state and checkpoints (shared storage on multi-node clusters)."""
        return self.storage or str(self.root.resolve())

    def fixed_overrides(self) -> dict[str, Any]:
        """Overrides every trial gets on top of its sampled values (``--set``, ``--epochs``, dataset flags)."""
        out = dict(self.overrides)
        if self.epochs is not None:
            out["train.epochs"] = self.epochs
        return out

    def save(self) -> None:
        """Write ``sweep.yaml``."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sweep.yaml").write_text(yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, sweep_dir: str | Path) -> SweepSpec:
        """Read ``<sweep_dir>/sweep.yaml``.

        Raises:
            ConfigError: the directory is not a sweep directory.
        """
        path = Path(sweep_dir) / "sweep.yaml"
        if not path.is_file():
            raise ConfigError(f"{sweep_dir}: not a pointtune sweep directory (no sweep.yaml)")
        spec = cls(**yaml.safe_load(path.read_text()))
        spec.sweep_dir = str(Path(sweep_dir).resolve())
        return spec

    def space(self) -> SearchSpace:
        """The resolved search space saved in the sweep directory."""
        return load_search_space(self.root / "space.yaml", self.method)


def trial_config(spec: SweepSpec, sampled: dict[str, Any]):
    """The :class:`ExperimentConfig` of a trial: base config + sampled values + the sweep's fixed overrides."""
    return build_config(spec.method, spec.base, {**sampled, **spec.fixed_overrides()}, source=f"trial {sampled}")


def run_trial(sampled: dict[str, Any], spec_dict: dict[str, Any]) -> None:
    """Tune driver of one trial: make (or find) its MLflow child run and run a ``TorchTrainer`` on it.

    Tune stops the driver when ASHA stops the trial; closing the MLflow run is done by the sweep after
    ``fit`` so that stopped trials are closed too.
    """
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from pointtune import tracking
    from pointtune.train.loop import train_loop_per_worker

    spec = SweepSpec(**spec_dict)
    space = spec.space()
    trial_id = tune.get_context().get_trial_id()
    exp = trial_config(spec, sampled)
    run_id = tracking.child_run(
        spec.tracking_uri, spec.experiment_id, spec.parent_run_id, trial_id,
        {**exp.to_dict(), "sampled": sampled},
    )
    res = spec.resources
    use_gpu = res["gpus_per_worker"] > 0
    per_worker = {"CPU": res["cpus_per_worker"], **({"GPU": res["gpus_per_worker"]} if use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": exp.to_dict(),
            "objective": [space.metric, space.mode],
            "mlflow": {"tracking_uri": spec.tracking_uri, "run_id": run_id},
            "cpus_per_worker": res["cpus_per_worker"],
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=int(res["workers"]), use_gpu=use_gpu, resources_per_worker=per_worker
        ),
        run_config=ray.train.RunConfig(
            name=f"trial_{trial_id}",
            storage_path=f"{spec.storage_path.rstrip('/')}/train",
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=space.metric, checkpoint_score_order=space.mode
            ),
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    try:
        trainer.fit()
    except Exception as err:  # noqa: BLE001 - report the root cause in one line, then fail the trial
        reason = _root_cause(err)
        tracking.set_tags(spec.tracking_uri, run_id, {"pointtune.failure": reason})
        tracking.end_run(spec.tracking_uri, run_id, "FAILED")
        raise RuntimeError(f"trial {trial_id} failed: {reason}") from None


def _root_cause(err: BaseException) -> str:
    """The innermost error of a Ray Train failure as ``Type: message`` (first line only)."""
    text = str(err)
    for line in reversed(text.splitlines()):
        if "Error:" in line and not line.strip().startswith(("File", "raise")):
            return line.strip()[:500]
    return (text.splitlines() or [type(err).__name__])[0][:500]


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_sweep(spec: SweepSpec) -> SearchSpace:
    """Validate everything that can be validated before Ray starts: the space, one trial config, the data.

    Raises:
        ConfigError, DatasetError: bad space, config or dataset; nothing has been started.
    """
    from pointtune.data import build_datasets

    space = load_search_space(spec.space_file, spec.method)
    if spec.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {spec.trials}")
    probe = trial_config(spec, {p.key: p.corners()[0] for p in space.params})
    build_datasets(probe.data)  # a missing or corrupt dataset fails here, not in every trial
    return space


def _tuner_parts(spec: SweepSpec, space: SearchSpace):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{spec.root.resolve()}/optuna.db")
    searcher = OptunaSearch(
        space=space.define_by_run, metric=space.metric, mode=space.mode,
        sampler=optuna.samplers.TPESampler(seed=spec.seed), storage=storage, study_name=STUDY_NAME,
    )
    epochs = trial_config(spec, {}).train.epochs
    scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(spec.grace_period, epochs))
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec_dict=asdict(spec)),
        {"CPU": spec.resources["driver_cpus"]},
    )
    return searcher, scheduler, trainable


def init_ray(address: str | None) -> None:
    """Connect to ``address`` (a running cluster, ``auto``) or start a local Ray instance."""
    import ray

    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")


def _plan_when_ready(spec: SweepSpec):
    """Plan per-trial resources from what the cluster has. With ``wait_for_resources`` > 0 (autoscaling
    clusters whose GPU nodes start at 0), first ask the autoscaler for one trial's workers and wait up to
    that many seconds for the plan to fit."""
    import time

    import ray

    from pointtune.search.resources import ResourceError, plan_resources

    def plan():
        have = ray.cluster_resources()
        return plan_resources(have.get("CPU", 0), have.get("GPU", 0), spec.workers, spec.gpus_per_worker,
                              spec.max_concurrent, spec.trials, spec.cpus_per_worker)

    if spec.wait_for_resources <= 0:
        return plan()
    from ray.autoscaler.sdk import request_resources

    worker = {"CPU": spec.cpus_per_worker or 1, **({"GPU": spec.gpus_per_worker} if spec.gpus_per_worker else {})}
    request_resources(bundles=[worker] * spec.workers * (spec.max_concurrent or 1))
    deadline = time.time() + spec.wait_for_resources
    while True:
        try:
            return plan()
        except ResourceError as err:
            if time.time() > deadline:
                raise ResourceError(f"{err} (after waiting {spec.wait_for_resources:g} s for the autoscaler)") from None
            print(f"[pointtune] waiting for the autoscaler: {err}", flush=True)
            time.sleep(10)


def run_sweep(spec: SweepSpec):
    """Validate, start Ray, plan resources, open the MLflow parent run, run the Tuner and finalize.

    Returns:
        The :class:`ray.tune.ResultGrid`.

    Raises:
        ConfigError, DatasetError, ResourceError: before any trial starts.
    """
    from ray import tune

    from pointtune import tracking
    from pointtune.search.report import finalize
    from pointtune.train.evaluate import PROTOCOL_NAME

    space = prepare_sweep(spec)
    spec.root.mkdir(parents=True, exist_ok=True)
    (spec.root / "space.yaml").write_text(yaml.safe_dump(_resolved_space(spec), sort_keys=False))
    init_ray(spec.address)
    plan = _plan_when_ready(spec)
    spec.resources = plan.as_dict()
    spec.tracking_uri = tracking.resolve_tracking_uri(spec.root, spec.mlflow_uri)
    spec.experiment_id = tracking.ensure_experiment(spec.tracking_uri, f"pointtune-{spec.method}", spec.root)
    probe = trial_config(spec, {})
    spec.parent_run_id = tracking.start_run(
        spec.tracking_uri, spec.experiment_id, spec.root.name,
        {tracking.KIND_TAG: "sweep", "pointtune.method": spec.method, "pointtune.git_commit": _git_commit()},
        {"method": spec.method, "dataset": probe.data.name, "data_root": probe.data.root,
         "search_space": spec.space_file, "objective": f"{space.mode} {space.metric}",
         "task": probe.method_cls.task.value, "protocol": PROTOCOL_NAME[probe.method_cls.task], "trials": spec.trials, "epochs": probe.train.epochs,
         "workers": spec.workers, "gpus_per_worker": spec.gpus_per_worker, "seed": spec.seed,
         "resources": plan.as_dict()},
    )
    tracking.log_artifact(spec.tracking_uri, spec.parent_run_id, spec.root / "space.yaml")
    spec.save()
    print(f"[pointtune] sweep {spec.root}: {spec.trials} trials, {plan.max_concurrent} at once, "
          f"{plan.workers} workers x {plan.cpus_per_worker:g} CPU / {plan.gpus_per_worker:g} GPU each", flush=True)
    searcher, scheduler, trainable = _tuner_parts(spec, space)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=spec.trials,
            max_concurrent_trials=plan.max_concurrent, metric=space.metric, mode=space.mode,
        ),
        run_config=tune.RunConfig(name=TUNE_NAME, storage_path=spec.storage_path, verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=0)),
    )
    results = tuner.fit()
    finalize(spec, space, results)
    return results


def resume_sweep(sweep_dir: str | Path):
    """Finish an interrupted sweep: ``Tuner.restore`` (errored trials resumed), then finalize.

    Raises:
        ConfigError: not a sweep directory, or no Tune state to restore.
    """
    from ray import tune

    from pointtune.search.report import finalize

    spec = SweepSpec.load(sweep_dir)
    space = spec.space()
    path = f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}"
    init_ray(spec.address)
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"{sweep_dir}: no Tune experiment state at {path} to resume")
    _, _, trainable = _tuner_parts(spec, space)
    print(f"[pointtune] resuming sweep {spec.root}", flush=True)
    tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    results = tuner.fit()
    finalize(spec, space, results)
    return results


def _resolved_space(spec: SweepSpec) -> dict[str, Any]:
    tree = load_space_tree(Path(spec.space_file))
    tree["method"] = spec.method
    return tree
