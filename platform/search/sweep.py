"""A sweep: Ray Tune + Optuna TPE (study in SQLite) + ASHA, or population-based training
(:mod:`pointtune.search.pbt`), every trial recorded in MLflow by the driver.

Data flow: :class:`SweepSpec` (validated before Ray starts, saved as ``<sweep dir>/sweep.yaml``) -> ``Tuner``
-> one :func:`run_trial` per trial, which trains in its own actor (one worker) or through a ``TorchTrainer``
(N workers, reports forwarded by ``TuneReportCallback``) -> Tune, where ASHA and Optuna act on each result
and :class:`~pointtune.search.records.MlflowRecorder` logs it. After ``fit`` (or ``resume``),
:func:`pointtune.search.report.finalize` writes the summary, the best config and the plots.

Sweep directory layout::

    sweep.yaml      the spec (what `pointtune resume` reads)     space.yaml   the resolved search space
    optuna.db       the Optuna study (optuna-dashboard sqlite:///optuna.db)
    mlflow.db, mlartifacts/   default MLflow store
    tune/           Tune experiment state (Tuner.restore) and single-process trials' checkpoints
    train/          data-parallel trials' Train runs and checkpoints
    (with --storage, tune/ and train/ live in <storage>/<sweep dir name>/ instead)
    summary.csv, best_config.yaml, optimization_history.png, param_importances.png
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from pointtune.cluster import DEFAULT_WORKER_START_TIMEOUT_S
from pointtune.config import ConfigError, PlannedPrerequisite, build_config, plan_prerequisite
from pointtune.search.resources import TrialResources
from pointtune.search.space import SearchSpace, load_search_space, load_space_tree

TUNE_NAME = "tune"
STUDY_NAME = "pointtune"
OPTUNA_KEY = "optuna_trial"  # Optuna trial number, carried in each Tune trial's config (a cross-link)


def sampled_params(config: dict[str, Any] | None) -> dict[str, Any]:
    """A Tune trial's config without pointtune's bookkeeping keys: the values the trial was given."""
    return {k: v for k, v in (config or {}).items() if k != OPTUNA_KEY}


class SweepInterrupted(Exception):
    """The sweep stopped (Ctrl-C / SIGINT) before every trial ended: Tune saved its state, nothing was
    finalized, and ``pointtune resume`` finishes it. The message says how many trials ended and how to resume."""


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
    scheduler: str = "asha"
    pbt_interval: int = 1
    wait_for_resources: float = 0.0
    worker_start_timeout: float = DEFAULT_WORKER_START_TIMEOUT_S
    verbose: bool = False
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
        """Where Tune and Train keep state and checkpoints: ``<storage>/<sweep dir name>`` with ``--storage``
        (shared storage on multi-node clusters, one folder per sweep), else the sweep directory."""
        if self.storage:
            return f"{self.storage.rstrip('/')}/{self.root.name}"
        return str(self.root.resolve())

    @property
    def plan(self) -> TrialResources:
        """The per-trial resources planned when the sweep started."""
        return TrialResources(**self.resources)

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
            ConfigError: not a sweep directory, or a ``sweep.yaml`` with an unknown or missing key or a bad
                number (one line naming the file and the key).
        """
        from pointtune.preflight import load_sweep_yaml_checked

        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        spec = cls(**load_sweep_yaml_checked(Path(sweep_dir) / "sweep.yaml", [f.name for f in fields(cls)], required))
        spec.sweep_dir = str(Path(sweep_dir).resolve())
        return spec

    def space(self) -> SearchSpace:
        """The resolved search space saved in the sweep directory."""
        return load_search_space(self.root / "space.yaml", self.method)


def trial_config(spec: SweepSpec, sampled: dict[str, Any], space: SearchSpace | None = None):
    """The :class:`ExperimentConfig` of a trial: base config + sampled values + the sweep's fixed overrides.
    A PBT population draws every parameter: those whose ``when`` conditions fail are left out here (``space``:
    the sweep's, default the one saved in the sweep directory)."""
    sampled = sampled_params(sampled)
    space = space or spec.space()
    if spec.scheduler == "pbt":
        sampled = space.active_values(sampled)
    sampled = space.resolve(sampled)
    return build_config(spec.method, spec.base, {**sampled, **spec.fixed_overrides()}, source=f"trial {sampled}")


def study_storage(sweep_dir: str | Path):
    """The Optuna storage of a sweep (``<sweep dir>/optuna.db``)."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(sweep_dir).resolve()}/optuna.db")


def run_trial(config: dict[str, Any], spec_dict: dict[str, Any]) -> None:
    """One Tune trial: train in this actor (one worker) or through a ``TorchTrainer`` (several).

    A data-parallel trial whose Train run fails raises ``RuntimeError`` with the root cause in one line,
    which Tune records as the trial's error.
    """
    from ray import tune

    from pointtune.train.loop import LoopConfig, tune_trial_loop

    spec = SweepSpec(**spec_dict)
    if not spec.verbose:
        logging.getLogger("ray").setLevel(logging.WARNING)  # e.g. "Checkpoint successfully created" per epoch
    space = spec.space()
    plan = spec.plan
    exp = trial_config(spec, config, space)
    if exp.train.threads is None:  # recorded, so that `pointtune train --config` reuses it
        exp.train.threads = max(1, int(plan.cpus_per_worker))
    loop = LoopConfig(exp.to_dict(), space.metric, space.mode, cpus_per_worker=plan.cpus_per_worker,
                      verbose=spec.verbose)
    if plan.single_process:
        tune_trial_loop(loop)
        return
    _fit_data_parallel(spec, plan, loop, tune.get_context().get_trial_id())


def _fit_data_parallel(spec: SweepSpec, plan: TrialResources, loop, trial_id: str) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from pointtune.failures import failure_reason
    from pointtune.train.launch import make_trainer

    trainer = make_trainer(
        loop, workers=plan.workers, use_gpu=plan.gpus_per_worker > 0, name=f"trial_{trial_id}",
        storage_path=f"{spec.storage_path.rstrip('/')}/train", resources_per_worker=plan.worker_bundle(),
        callbacks=[TuneReportCallback()], verbose=spec.verbose,
    )
    try:
        trainer.fit()
    except Exception as err:  # noqa: BLE001 - one line with the root cause; Tune records the trial as failed
        cause = getattr(err, "controller_failure", None)  # ray.train.ControllerError
        if type(cause).__name__ == "WorkerGroupStartupTimeoutError":
            reason = (f"its {plan.workers} workers x {plan.worker_bundle()} could not be placed within "
                      f"{spec.worker_start_timeout:g} s (--worker-start-timeout)")
        else:
            reason = failure_reason(err)
        raise RuntimeError(reason) from None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare_sweep(spec: SweepSpec) -> tuple[SearchSpace, PlannedPrerequisite | None]:
    """Validate everything that can be validated before Ray starts: the space, the numbers, one trial config,
    the data, and one forward pass of the model it builds (:func:`pointtune.preflight.preflight`).

    Returns:
        The space, and the run every trial needs first (SCL's stage 1 when no ``method.stage1_from`` is given:
        :func:`pointtune.config.plan_prerequisite`), which is then preflighted too, with the trial config's
        stand-in; None when there is none.

    Raises:
        ConfigError, DatasetError: bad space, config, dataset or model; nothing has been started.
    """
    from pointtune.preflight import check_numbers, check_tracking_uri, preflight

    check_numbers(asdict(spec), "sweep")
    if spec.scheduler not in ("asha", "pbt"):
        raise ConfigError(f"--scheduler must be asha or pbt, got {spec.scheduler!r}")
    check_tracking_uri(spec.mlflow_uri)
    space = load_search_space(spec.space_file, spec.method)
    probe = trial_config(spec, space.first_corner(), space)
    _resolve_paths(spec, probe)
    if probe.train.epochs < 1:
        raise ConfigError("train.epochs: a sweep needs at least 1 epoch per trial (0 is `pointtune train`'s "
                          "untrained baseline)")
    if spec.scheduler == "pbt":
        _check_pbt(spec, space, probe)
    pre = plan_prerequisite(trial_config(spec, space.fixed_values(), space))  # from what every trial shares
    if pre is not None:
        _check_prerequisite(space, pre)
        preflight(pre.config, workers=0)
    probe_pre = plan_prerequisite(probe)
    preflight(probe_pre.stand_in if probe_pre else probe, workers=spec.workers, objective=space.metric)
    return space, pre


def _resolve_paths(spec: SweepSpec, probe) -> None:
    """Replace every text ``--set`` value by what the config made of it (a relative ``method.stage1_from`` or
    ``method.pretrained`` made absolute here), since trials build their configs in Ray's processes, whose
    working directory is not the command's."""
    resolved = probe.to_dict()
    for key, value in spec.overrides.items():
        node = resolved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(value, str) and isinstance(node, str) and node != value:
            spec.overrides[key] = node


def _check_prerequisite(space: SearchSpace, pre: PlannedPrerequisite) -> None:
    """The one prerequisite run serves every trial, trained from what they share (the sweep's config and the
    space's fixed values), so the space may not search the keys only it reads (``own_keys``).

    Raises:
        ConfigError: such a key is searched (names the key and the space file).
    """
    for param in space.params:
        if param.type != "fixed" and any(param.key == k or param.key.startswith(k + ".") for k in pre.own_keys):
            raise ConfigError(f"{space.source}: {param.key}: the sweep trains one {pre.name} run for every trial, "
                              f"from the values they share; fix this key, or train the {pre.name} run first and "
                              f"pass --set {pre.key}=<its directory>")


def _train_prerequisite(spec: SweepSpec, pre: PlannedPrerequisite) -> None:
    """Train the run every trial needs first, once, in ``<sweep dir>/<name>``, in this process (rerunning the
    sweep command resumes it), and hand its directory to every trial (``spec.overrides[pre.key]``)."""
    from pointtune.train.launch import train

    run_dir = spec.root / pre.name
    print(f"[pointtune] every trial needs the {pre.name} run: training it once in {run_dir} "
          f"({pre.config.train.epochs} epochs, in this process)", flush=True)
    train(pre.config, run_dir, workers=0, use_gpu=spec.gpus_per_worker > 0, mlflow_uri=spec.mlflow_uri)
    spec.overrides[pre.key] = str(run_dir.resolve())


def _check_pbt(spec: SweepSpec, space: SearchSpace, probe) -> None:
    """PBT needs single-process trials and a checkpoint at every perturbation (``--pbt-interval``)."""
    from pointtune.search.pbt import pbt_scheduler

    pbt_scheduler(space, spec.pbt_interval, probe.train.epochs)  # the space marks what to perturb, consistently
    if spec.workers > 1:
        raise ConfigError("--scheduler pbt: trials exploit each other's checkpoints through Tune, which "
                          "data-parallel trials (--workers > 1) do not support yet; use --workers 1")
    for key in ("eval_every", "checkpoint_every"):
        every = getattr(probe.train, key)
        if spec.pbt_interval % every:
            raise ConfigError(f"train.{key}: PBT exploits the checkpoint of every --pbt-interval "
                              f"({spec.pbt_interval}) epochs, so it must divide it, got {every}")


def _tuner_parts(spec: SweepSpec, space: SearchSpace):
    """Searcher, scheduler, trainable and callbacks of a sweep (the same on ``resume``): Optuna TPE + ASHA,
    or Tune's random initial population + PBT (:mod:`pointtune.search.pbt`)."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from pointtune.search.pbt import pbt_scheduler
    from pointtune.search.records import MlflowRecorder, StudySearch, TrialResultLog

    optuna.logging.set_verbosity(optuna.logging.INFO if spec.verbose else optuna.logging.WARNING)
    epochs = trial_config(spec, {}).train.epochs
    if spec.scheduler == "pbt":
        searcher = BasicVariantGenerator(random_state=spec.seed)
        scheduler = pbt_scheduler(space, spec.pbt_interval, epochs, spec.seed)
    else:
        searcher = StudySearch(
            space=space.define_by_run, metric=space.metric, mode=space.mode, max_epochs=epochs,
            sampler=optuna.samplers.TPESampler(seed=spec.seed), storage=study_storage(spec.root),
            study_name=STUDY_NAME,
        )
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(spec.grace_period, epochs))
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec_dict=asdict(spec)), spec.plan.trial_bundle())
    recorder = MlflowRecorder(asdict(spec), space.metric, space.mode, epochs)
    return searcher, scheduler, trainable, [recorder, TrialResultLog()]


def _plan_when_ready(spec: SweepSpec):
    """Plan per-trial resources from the nodes the cluster has and, on a ``ray up`` head, the node types its
    autoscaler may add. With ``wait_for_resources`` > 0 (autoscaling clusters whose GPU nodes start at 0),
    first ask the autoscaler for the workers of the concurrent trials and wait up to that many seconds for the
    plan to fit (the request is released by :func:`_release_request`)."""
    from pointtune.cluster import addable_nodes, node_resources, planning_nodes
    from pointtune.search.resources import ResourceError, plan_resources

    addable = addable_nodes()
    if addable:
        print(f"[pointtune] planning with the {len(addable)} node(s) the autoscaler may start; pending trials ask "
              f"for them (raise --worker-start-timeout above their boot time)", flush=True)

    def plan():
        return plan_resources(planning_nodes(node_resources(), addable), spec.workers, spec.gpus_per_worker,
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


def _release_request(spec: SweepSpec) -> None:
    """Withdraw the autoscaler request of ``--wait-for-resources`` so idle GPU nodes can scale down."""
    if spec.wait_for_resources > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])


def _check_tracking(spec: SweepSpec, nodes: int) -> None:
    """Refuse the default SQLite store in the sweep directory on a multi-node cluster.

    Raises:
        ConfigError: more than one node and no ``--mlflow-uri`` / ``MLFLOW_TRACKING_URI``.
    """
    if nodes > 1 and not (spec.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        raise ConfigError(
            f"--mlflow-uri: this cluster has {nodes} nodes; a SQLite store on the driver's disk is lost with the "
            f"node: pass --mlflow-uri http://127.0.0.1:5000 (the tracking server of clusters/*.yaml) or an "
            f"explicit sqlite:/// URI on storage that outlives the cluster"
        )


def _trial_name(trial) -> str:
    """``trial_<Tune trial id>``: the name of a trial's directory, of its Train run and of its MLflow run."""
    return f"trial_{trial.trial_id}"


def _reporter(spec: SweepSpec, space: SearchSpace):
    """The console of a sweep: Tune's trial table (status, epoch, objective, searched values) every 30 s
    or when a trial changes state, instead of a metric dump per report (``--verbose`` keeps Tune's own)."""
    from ray import tune

    from pointtune.search.report import short_names

    if spec.verbose:
        return None
    perturbed = [p.key for p in space.params if p.perturb is not None]
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic table reporter; the new engine prints every result
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return tune.CLIReporter(
        metric_columns={"epoch": "epoch", space.metric: space.metric},
        # the sampled values: summary.csv, MLflow, Optuna; PBT's perturbed ones change, so they are shown
        parameter_columns=(dict(zip(perturbed, short_names(perturbed))) if spec.scheduler == "pbt"
                           else {OPTUNA_KEY: "optuna #"}),
        max_report_frequency=30, sort_by_metric=True,
    )


def _checkpoint_config(spec: SweepSpec, space: SearchSpace):
    """Which checkpoints of a single-process trial Tune keeps.

    ASHA: the best by the objective. PBT: the latest ``interval + 1``. A trial that exploits restores its
    donor's checkpoint of the synchronisation epoch when it next runs; meanwhile the donor may train on for
    up to one interval (the population then waits again), so that checkpoint must outlive as many newer ones.
    Keeping only one let the donor's next checkpoint delete it first ("Could not recover from checkpoint as
    it does not exist on storage anymore"). The best epoch of every trial is in MLflow anyway (records).
    """
    from ray import tune

    if spec.scheduler == "pbt":
        return tune.CheckpointConfig(num_to_keep=spec.pbt_interval + 1)
    return tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                 checkpoint_score_order=space.mode)


def _tune(spec: SweepSpec, space: SearchSpace, restore: bool):
    """Run (or restore and finish) the Tuner; always withdraw the autoscaler request afterwards."""
    from ray import tune

    from pointtune.search.actor_deaths import tolerate_actor_deaths
    from pointtune.search.pbt import population_space

    # Epochs that do not evaluate report no val/* value (train.eval_every); the objective was checked against
    # what the protocol reports before Ray started.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    tolerate_actor_deaths()  # a trial whose actor died (e.g. killed by the memory monitor) fails alone
    searcher, scheduler, trainable, callbacks = _tuner_parts(spec, space)
    path = f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}"
    if restore:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=population_space(space) if spec.scheduler == "pbt" else None,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=spec.trials,
                max_concurrent_trials=spec.plan.max_concurrent, metric=space.metric, mode=space.mode,
                reuse_actors=spec.plan.single_process,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=TUNE_NAME, storage_path=spec.storage_path, verbose=2 if spec.verbose else 1,
                callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=0),
                progress_reporter=_reporter(spec, space),
                checkpoint_config=_checkpoint_config(spec, space),
            ),
        )
    try:
        return tuner.fit()
    finally:
        _release_request(spec)


def run_sweep(spec: SweepSpec):
    """Validate, start Ray, plan resources, open the MLflow parent run, run the Tuner and finalize.

    Returns:
        The trial summaries (:class:`~pointtune.search.report.TrialSummary`), best first.

    Raises:
        ConfigError, DatasetError, ResourceError: before any trial starts.
    """
    from pointtune import tracking
    from pointtune.cluster import init_ray, node_resources
    from pointtune.protocols import protocol_name

    space, pre = prepare_sweep(spec)
    if pre is not None:
        _train_prerequisite(spec, pre)
    init_ray(spec.address, dashboard=spec.workers > 1, worker_start_timeout_s=spec.worker_start_timeout,
             verbose=spec.verbose)
    plan = _plan_when_ready(spec)
    _check_tracking(spec, len(node_resources()))
    spec.resources = plan.as_dict()
    spec.root.mkdir(parents=True, exist_ok=True)
    (spec.root / "space.yaml").write_text(yaml.safe_dump(_resolved_space(spec), sort_keys=False))
    spec.tracking_uri = tracking.resolve_tracking_uri(spec.root, spec.mlflow_uri)
    spec.experiment_id = tracking.ensure_experiment(spec.tracking_uri, f"pointtune-{spec.method}", spec.root)
    probe = trial_config(spec, {})
    spec.parent_run_id = tracking.start_run(
        spec.tracking_uri, spec.experiment_id, spec.root.name,
        {tracking.KIND_TAG: "sweep", "pointtune.method": spec.method, "pointtune.git_commit": _git_commit()},
        {"method": spec.method, "dataset": probe.data.name, "data_root": probe.data.root,
         "search_space": spec.space_file, "objective": f"{space.mode} {space.metric}",
         "task": probe.method_cls.task.value, "protocol": protocol_name(probe),
         "trials": spec.trials, "epochs": probe.train.epochs, "workers": spec.workers,
         "gpus_per_worker": spec.gpus_per_worker, "seed": spec.seed, "resources": plan.as_dict(),
         **({f"prerequisite/{pre.name}": spec.overrides[pre.key]} if pre else {})},
    )
    tracking.log_artifact(spec.tracking_uri, spec.parent_run_id, spec.root / "space.yaml")
    spec.save()
    shape = "in its own actor" if plan.single_process else f"{plan.workers} Ray Train workers"
    print(f"[pointtune] sweep {spec.root}: {spec.trials} trials, {plan.max_concurrent} at once, each {shape} of "
          f"{plan.cpus_per_worker:g} CPU / {plan.gpus_per_worker:g} GPU", flush=True)
    results = _tune(spec, space, restore=False)
    return _finish(spec, space, results)


def resume_sweep(sweep_dir: str | Path):
    """Finish an interrupted sweep: ``Tuner.restore`` (errored trials resumed), then finalize.

    Returns:
        The trial summaries, best first.

    Raises:
        ConfigError: not a sweep directory, or no Tune state to restore.
    """
    from ray import tune

    from pointtune.cluster import init_ray

    spec = SweepSpec.load(sweep_dir)
    space = spec.space()
    path = f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}"
    init_ray(spec.address, dashboard=spec.workers > 1, worker_start_timeout_s=spec.worker_start_timeout,
             verbose=spec.verbose)
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"{sweep_dir}: no Tune experiment state at {path} to resume")
    print(f"[pointtune] resuming sweep {spec.root}", flush=True)
    results = _tune(spec, space, restore=True)
    return _finish(spec, space, results)


def _finish(spec: SweepSpec, space: SearchSpace, results):
    """Finalize a sweep whose trials all ended; raise :class:`SweepInterrupted` for one that was stopped
    (Tune returns after a SIGINT, its saved state holding trials not yet run or running): then nothing is
    marked finished, stopped or best, the parent run is tagged INTERRUPTED and stays open for ``resume``."""
    from ray.tune import ExperimentAnalysis

    from pointtune import tracking
    from pointtune.search.report import finalize

    # The state Tune saved (before it stopped the trials, which then read TERMINATED in memory).
    saved = ExperimentAnalysis(f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}").trials
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in saved)
    if ended < spec.trials:
        tracking.set_tags(spec.tracking_uri, spec.parent_run_id, {"pointtune.status": "INTERRUPTED"})
        raise SweepInterrupted(f"sweep interrupted with {ended} of {spec.trials} trials ended; Tune saved its "
                               f"state and nothing was summarized; finish it with: pointtune resume {spec.root}")
    return finalize(spec, space, results)


def _resolved_space(spec: SweepSpec) -> dict[str, Any]:
    tree = load_space_tree(Path(spec.space_file))
    tree["method"] = spec.method
    return tree
