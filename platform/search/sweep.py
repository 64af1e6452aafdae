"""A sweep: Ray Tune + Optuna TPE (study in SQLite) + ASHA, or population-based training
(:mod:`pointtune.search.pbt`), every trial recorded in MLflow by the driver.

Data flow: :class:`SweepSpec` (validated before Ray starts, saved as ``<sweep dir>/sweep.yaml``) -> ``Tuner``
-> one :func:`run_trial` per trial, which trains in its own actor (one worker) or through a ``TorchTrainer``
(N workers, reports forwarded by ``TuneReportCallback``) -> Tune, where ASHA and Optuna act on each result
and :class:`~pointtune.search.records.MlflowRecorder` logs it. After ``fit`` (or ``resume``),
:func:`pointtune.search.report.finalize` writes the summary, the best config and the plots.

The sweep directory's layout is :class:`pointtune.layout.SweepDir`'s; what a sweep is (the spec as asked, the
runtime record, a trial's config) is :mod:`pointtune.search.spec`'s.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from pointtune.config import ConfigError, PlannedPrerequisite, plan_prerequisite
from pointtune.layout import trial_name
from pointtune.search.resources import TrialResources
from pointtune.search.space import SearchSpace, load_search_space, load_space_tree
from pointtune.search.spec import (OPTUNA_KEY, ROW_KEY, SAMPLERS, SCHEDULERS, STUDY_NAME, SweepRuntime, SweepSpec,
                                   study_storage, trial_config)

class SweepInterrupted(Exception):
    """The sweep stopped (Ctrl-C / SIGINT) before every trial ended: Tune saved its state, nothing was
    finalized, and ``pointtune resume`` finishes it. The message says how many trials ended and how to resume."""


def run_trial(config: dict[str, Any], spec: SweepSpec, runtime: SweepRuntime) -> None:
    """One Tune trial: build its experiment (the one place it is built; its first result carries it to the
    driver's records), then train in this actor (one worker) or through a ``TorchTrainer`` (several).

    A data-parallel trial whose Train run fails raises ``RuntimeError`` with the root cause in one line,
    which Tune records as the trial's error.
    """
    from ray import tune

    from pointtune.train.loop import LoopConfig, tune_trial_loop

    space = spec.space()
    plan = runtime.plan
    exp = trial_config(spec, config, space, runtime)
    if exp.train.threads is None:  # recorded, so that `pointtune train --config` reuses it
        exp.train.threads = max(1, int(plan.cpus_per_worker))
    trial_id = tune.get_context().get_trial_id()
    loop = LoopConfig(exp, space.metric, space.mode, secondary=space.secondary, cpus_per_worker=plan.cpus_per_worker,
                      verbose=spec.verbose, announce=True, trial_id=trial_id)
    if plan.single_process:
        tune_trial_loop(loop)
        return
    _fit_data_parallel(spec, plan, loop, trial_id)


def _fit_data_parallel(spec: SweepSpec, plan: TrialResources, loop, trial_id: str) -> None:
    from ray.tune.integration.ray_train import TuneReportCallback

    from pointtune.failures import failure_reason
    from pointtune.train.launch import make_trainer

    trainer = make_trainer(
        loop, workers=plan.workers, use_gpu=plan.gpus_per_worker > 0, name=trial_name(trial_id),
        storage_path=spec.layout.train, resources_per_worker=plan.worker_bundle(),
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


def prepare_sweep(spec: SweepSpec) -> tuple[SweepSpec, SearchSpace, PlannedPrerequisite | None, int]:
    """Validate everything that can be validated before Ray starts: the space, the numbers, one trial config,
    the data, and one forward pass of the model it builds (:func:`pointtune.preflight.preflight`).

    Returns:
        The spec as the sweep records it (relative path ``--set`` values made absolute, the trials' epoch
        count filled in), the space, and the run every trial needs first (SCL's stage 1 when no
        ``method.stage1_from`` is given: :func:`pointtune.config.plan_prerequisite`), which is then preflighted
        too, with the trial config's stand-in; None when there is none; and preflight's memory estimate per
        worker (bytes) at the largest batch size a trial can get (printed).

    Raises:
        ConfigError, DatasetError: bad space, config, dataset or model; nothing has been started.
        ResourceError: on a local instance (no ``--address``), a trial shape this machine cannot hold.
    """
    from pointtune.cluster import local_node, starts_local
    from pointtune.preflight import check_numbers, check_storage, check_tracking_uri, preflight
    from pointtune.search.resources import plan_resources

    check_numbers(asdict(spec), "sweep")
    check_storage(spec.storage)
    if starts_local(spec.address):  # this machine is the whole cluster: a shape that cannot fit is refused now
        plan_resources([local_node()], spec.workers, spec.gpus_per_worker, spec.max_concurrent, spec.trials,
                       spec.cpus_per_worker)
    if spec.scheduler not in (*SCHEDULERS, "fifo") or (spec.scheduler == "fifo") != bool(spec.rows):
        raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {spec.scheduler!r}")
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {spec.sampler!r}")
    if spec.sampler != "tpe" and not spec.searches:
        raise ConfigError(f"--sampler {spec.sampler}: only Optuna sweeps (--scheduler asha or none) have a sampler; "
                          f"--scheduler {spec.scheduler} has none")
    check_tracking_uri(spec.mlflow_uri)
    space = load_search_space(spec.space_file, spec.method)
    if "train.epochs" in space.searched():
        raise ConfigError(f"{space.source}: train.epochs: the epoch count is the sweep's budget (--epochs), not a "
                          "searched value")
    if spec.rows:
        spec, memory = _prepare_study(spec, space)
        return spec, space, None, memory
    probe = trial_config(spec, space.first_corner(), space)
    spec = replace(spec, overrides=_absolute_paths(spec.overrides, probe), epochs=probe.train.epochs)
    _check_epochs(spec)
    if spec.scheduler == "pbt":
        _check_pbt(spec, space, probe)
    _check_sources(spec, space)
    pre = plan_prerequisite(trial_config(spec, space.fixed_values(), space))  # from what every trial shares
    if pre is not None:
        _check_prerequisite(space, pre)
        preflight(pre.config, workers=0)
    probe_pre = plan_prerequisite(probe)
    checked = preflight(probe_pre.stand_in if probe_pre else probe, workers=spec.workers,
                        objective=[o.metric for o in space.objectives])
    batch = _largest_batch(space, probe)
    print(checked.describe_memory(batch), flush=True)
    return spec, space, pre, checked.memory_per_worker(batch)


def _largest_batch(space: SearchSpace, probe) -> int:
    """The largest ``train.batch_size`` a trial can get: the space's highest choice or bound when it searches
    it, else the probe trial's."""
    param = next((p for p in space.params if p.key == "train.batch_size" and p.type not in ("fixed", "same")), None)
    if param is None:
        return probe.train.batch_size
    return int(max(param.choices) if param.choices else param.high)


def _check_epochs(spec: SweepSpec) -> None:
    if spec.epochs < 1:
        raise ConfigError("train.epochs: a sweep needs at least 1 epoch per trial (0 is `pointtune train`'s "
                          "untrained baseline)")


def _prepare_study(spec: SweepSpec, space: SearchSpace) -> tuple[SweepSpec, int]:
    """A seed study's checks: every row builds a valid config whose model runs one forward pass, and needs no
    run trained first (its config names its stage-1 or pretrained run already). Returns the spec with the
    epoch count filled in (the first row's when not given) and the largest row's memory estimate per worker
    (bytes; printed).

    Raises:
        ConfigError: a row's config is invalid or needs a prerequisite run (names the row).
    """
    from pointtune.preflight import preflight

    probes = {name: trial_config(spec, {ROW_KEY: name, **space.first_corner()}, space) for name in spec.rows}
    spec = replace(spec, epochs=spec.epochs if spec.epochs is not None else next(iter(probes.values())).train.epochs)
    _check_epochs(spec)
    estimates = {}
    for name, probe in probes.items():
        pre = plan_prerequisite(probe)
        if pre is not None:
            raise ConfigError(f"study row {name}: {pre.key}: this config needs its {pre.name} run first; train it "
                              f"and pass its directory (--set {pre.key}=DIR)")
        checked = preflight(probe, workers=spec.workers, objective=space.metric)
        estimates[checked.memory_per_worker(probe.train.batch_size)] = checked.describe_memory(probe.train.batch_size)
    print(estimates[max(estimates)], flush=True)
    return spec, max(estimates)


def _absolute_paths(overrides: dict[str, Any], probe) -> dict[str, Any]:
    """``overrides`` with every text value replaced by what the config made of it (a relative
    ``method.stage1_from`` or ``method.pretrained`` made absolute), since trials build their configs in Ray's
    processes, whose working directory is not the command's."""
    resolved, out = probe.to_dict(), dict(overrides)
    for key, value in overrides.items():
        node = resolved
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(value, str) and isinstance(node, str) and node != value:
            out[key] = node
    return out


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


def _train_prerequisite(spec: SweepSpec, pre: PlannedPrerequisite) -> dict[str, str]:
    """Train the run every trial needs first, once, in ``<sweep dir>/<name>``, in this process (rerunning the
    sweep command resumes it); returns the override that hands its directory to every trial."""
    from pointtune.train.launch import train

    run_dir = spec.layout.prerequisite(pre.name)
    print(f"[pointtune] every trial needs the {pre.name} run: training it once in {run_dir} "
          f"({pre.config.train.epochs} epochs, in this process)", flush=True)
    train(pre.config, run_dir, workers=0, use_gpu=spec.gpus_per_worker > 0, mlflow_uri=spec.mlflow_uri)
    return {pre.key: str(run_dir.resolve())}


def _check_sources(spec: SweepSpec, space: SearchSpace) -> None:
    """The runs the trials start from (:attr:`Method.sources <pointtune.method.Method.sources>`, e.g.
    ``method.pretrained``) are copied once for every trial (:func:`_copy_sources`), so the space may not search
    those keys or the keys of their architecture.

    Raises:
        ConfigError: such a key is searched (names the key and the space file).
    """
    from pointtune.method import get_method

    keys = [key for pair in get_method(spec.method).sources.items() for key in pair if key]
    for param in space.params:
        if param.type != "fixed" and any(param.key == k or param.key.startswith(k + ".") for k in keys):
            raise ConfigError(f"{space.source}: {param.key}: the sweep copies the run its trials start from once, "
                              f"for all of them; fix this key (one sweep per pretrained run)")


def _copy_sources(spec: SweepSpec, space: SearchSpace, decided: dict[str, Any]) -> dict[str, Any]:
    """Copy the runs every trial starts from into ``<sweep dir>/sources`` once; returns the overrides that hand
    the copies, and their architecture, to every trial (:func:`pointtune.train.sources.resolve_sources`): the
    trials' configs, checkpoints and the sweep's ``best_config.yaml`` then do not depend on those runs.
    ``decided``: the overrides the sweep decided before (the prerequisite run it trained)."""
    from pointtune.train.sources import resolve_sources

    shared = trial_config(replace(spec, overrides={**spec.overrides, **decided}), space.fixed_values(), space)
    return resolve_sources(shared, spec.root)


def _check_pbt(spec: SweepSpec, space: SearchSpace, probe) -> None:
    """PBT needs a population (2+ trials), one objective, single-process trials, a perturbation before the last
    epoch and a checkpoint at every perturbation (``--pbt-interval``)."""
    from pointtune.search.pbt import pbt_scheduler

    if space.multi_objective:
        raise ConfigError(f"{space.source}: objective: --scheduler pbt ranks the population by one metric; give one "
                          f"objective or use --scheduler asha")
    if spec.trials < 2:
        raise ConfigError(f"--trials {spec.trials}: --scheduler pbt exploits the better trials of a population; "
                          f"give at least 2 trials")
    if spec.pbt_interval >= spec.epochs:
        raise ConfigError(f"--pbt-interval {spec.pbt_interval}: PBT perturbs every --pbt-interval epochs, which "
                          f"trials of --epochs {spec.epochs} never reach; give an interval below the epochs")
    pbt_scheduler(space, spec.pbt_interval, spec.epochs)  # the space marks what to perturb, consistently
    if spec.workers > 1:
        raise ConfigError("--scheduler pbt: trials exploit each other's checkpoints through Tune, which "
                          "data-parallel trials (--workers > 1) do not support yet; use --workers 1")
    for key in ("eval_every", "checkpoint_every"):
        every = getattr(probe.train, key)
        if spec.pbt_interval % every:
            raise ConfigError(f"train.{key}: PBT exploits the checkpoint of every --pbt-interval "
                              f"({spec.pbt_interval}) epochs, so it must divide it, got {every}")


def make_sampler(name: str, seed: int, startup_trials: int = 10):
    """The Optuna sampler ``--sampler NAME`` names (:data:`~pointtune.search.spec.SAMPLERS`), seeded; the
    model-based ones draw ``startup_trials`` random trials first (``--startup-trials``; Optuna's default 10).

    ``tpe``: Optuna's TPE (multivariate, with the constant liar for trials still running: Optuna 5's defaults);
    ``random``: independent uniform draws, the baseline a search must beat; ``gp``: Optuna's Gaussian-process
    sampler (log-EI on the parameters every trial shares; a parameter that exists only under a ``when``
    condition is drawn at random). With the same seed, TPE's and GP's start-up trials are random search's first
    trials: strategies compared at one seed share their start.

    Raises:
        ConfigError: an unknown name.
    """
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials, warn_independent_sampling=False)
    raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {name!r}")


def _tuner_parts(spec: SweepSpec, runtime: SweepRuntime, space: SearchSpace):
    """Searcher, scheduler, trainable and callbacks of a sweep (the same on ``resume``): an Optuna sampler
    (:func:`make_sampler`) with ASHA or without early stopping (``none``), Tune's random initial population +
    PBT (:mod:`pointtune.search.pbt`), or a seed study's grid run to the end.

    With several objectives the study is multi-objective (TPE's multi-objective variant, one direction per
    objective) and is told each trial's ``best/<metric>`` values, all read at the epoch the primary objective
    selected; ASHA (and the checkpoint Tune keeps) uses the primary objective alone."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from pointtune.search.pbt import pbt_scheduler
    from pointtune.search.records import MlflowRecorder, StudySearch, TrialResultLog, study_metric

    optuna.logging.set_verbosity(optuna.logging.INFO if spec.verbose else optuna.logging.WARNING)
    epochs = spec.epochs
    # Tune's max_concurrent_trials does not reach a BasicVariantGenerator passed in: a study gives it here. Without
    # it, every data-parallel trial's driver starts at once and all but one wait for their workers, then time out.
    # PBT's population must exist whole from the start (its trials are single-process: they wait for their CPUs
    # while Tune pauses the others at each synchronisation point). Created two at a time, a killed 4-trial sweep
    # held 2 trials, and on resume one of them was exploited into a config of the perturbed keys alone.
    limit = runtime.plan.max_concurrent
    if spec.scheduler == "pbt":
        searcher = BasicVariantGenerator(random_state=spec.seed)
        scheduler = pbt_scheduler(space, spec.pbt_interval, epochs, spec.seed)
    elif spec.scheduler == "fifo":
        searcher, scheduler = BasicVariantGenerator(max_concurrent=limit), FIFOScheduler()
    else:
        searcher = StudySearch(
            space=space.define_by_run, metric=study_metric(space), max_epochs=epochs,
            mode=[o.mode for o in space.objectives] if space.multi_objective else space.mode,
            sampler=make_sampler(spec.sampler, spec.seed, spec.startup_trials), storage=study_storage(spec.root),
            study_name=STUDY_NAME,
        )
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=min(spec.grace_period, epochs))
                     if spec.scheduler == "asha" else FIFOScheduler())
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec, runtime=runtime),
                                    runtime.plan.trial_bundle())
    recorder = MlflowRecorder(spec, runtime, space.metric, space.mode)
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
                              spec.max_concurrent, spec.trials, spec.cpus_per_worker, spec.memory_per_worker)

    if spec.wait_for_resources <= 0:
        return plan()
    from ray.autoscaler.sdk import request_resources

    worker = {"CPU": spec.cpus_per_worker or 1, **({"GPU": spec.gpus_per_worker} if spec.gpus_per_worker else {}),
              **({"memory": spec.memory_per_worker * 1e9} if spec.memory_per_worker else {})}
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
    """A Tune trial's directory name (:func:`pointtune.layout.trial_name`)."""
    return trial_name(trial.trial_id)


def _reporter(spec: SweepSpec, space: SearchSpace):
    """The console of a sweep: Tune's trial table (status, epoch, objective, searched values) every 30 s
    or when a trial changes state (:class:`~pointtune.search.status.StatusTable`), instead of a metric dump per
    report (``--verbose`` keeps Tune's own reporter); the rest of the contract is :mod:`pointtune.console`'s."""
    from pointtune.search.report import short_names
    from pointtune.search.status import StatusTable

    if spec.verbose:
        return None
    perturbed = [p.key for p in space.params if p.perturb is not None]
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic table reporter; the new engine prints every result
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    return StatusTable(
        metric_columns={"epoch": "epoch", **{o.metric: o.metric for o in space.objectives}},
        # the sampled values: summary.csv, MLflow, Optuna; PBT's perturbed ones change, so they are shown
        parameter_columns=(dict(zip(perturbed, short_names(perturbed))) if spec.scheduler == "pbt"
                           else {ROW_KEY: "row", "train.seed": "seed"} if spec.scheduler == "fifo"
                           else {OPTUNA_KEY: "optuna #"}),
        max_report_frequency=30, sort_by_metric=True,
    )


def _checkpoint_config(spec: SweepSpec, space: SearchSpace):
    """Which checkpoints of a single-process trial Tune keeps.

    ASHA: the best by the (primary) objective. PBT: the latest ``interval + 1``. A trial that exploits
    restores its donor's checkpoint of the synchronisation epoch when it next runs; meanwhile the donor may train on for
    up to one interval (the population then waits again), so that checkpoint must outlive as many newer ones.
    Keeping only one let the donor's next checkpoint delete it first ("Could not recover from checkpoint as
    it does not exist on storage anymore"). The best epoch of every trial is in MLflow anyway (records).
    """
    from ray import tune

    if spec.scheduler == "pbt":
        return tune.CheckpointConfig(num_to_keep=spec.pbt_interval + 1)
    return tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                 checkpoint_score_order=space.mode)


def _param_space(spec: SweepSpec, space: SearchSpace) -> dict[str, Any] | None:
    """Tune's ``param_space``: PBT's initial population, a seed study's grid of rows x seeds, or none (Optuna suggests each trial's values)."""
    from ray import tune

    from pointtune.search.pbt import population_space

    if spec.scheduler == "pbt":
        return population_space(space)
    if spec.scheduler == "fifo":
        return {ROW_KEY: tune.grid_search(list(spec.rows)), "train.seed": tune.grid_search(list(spec.seeds))}
    return None


def _tune(spec: SweepSpec, runtime: SweepRuntime, space: SearchSpace, restore: bool):
    """Run (or restore and finish) the Tuner; always withdraw the autoscaler request afterwards."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from pointtune.search.actor_deaths import tolerate_actor_deaths

    # Epochs that do not evaluate report no val/* value (train.eval_every); the objective was checked against
    # what the protocol reports before Ray started.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # A trial's one record of results is result.json, restored on resume (records.TrialResultLog); Tune's own
    # progress.csv and TensorBoard files are not, and held only the epochs after a restart.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    tolerate_actor_deaths()  # a trial whose actor died (e.g. killed by the memory monitor) fails alone
    searcher, scheduler, trainable, callbacks = _tuner_parts(spec, runtime, space)
    reporter = _reporter(spec, space)  # sets the quiet console's environment: a restored Tuner needs it too
    if restore:
        tuner = tune.Tuner.restore(spec.layout.tune, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_param_space(spec, space),
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler,
                num_samples=1 if spec.scheduler == "fifo" else spec.trials,  # a study: its grid once
                # PBT's and a study's BasicVariantGenerator hold their limit (_tuner_parts); Tune ignores this
                # one for them, with a warning
                max_concurrent_trials=(None if isinstance(searcher, BasicVariantGenerator)
                                       else runtime.plan.max_concurrent),
                metric=space.metric, mode=space.mode,
                reuse_actors=runtime.plan.single_process,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=spec.layout.TUNE_NAME, storage_path=spec.storage_path, verbose=2 if spec.verbose else 1,
                callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=0),
                progress_reporter=reporter,
                checkpoint_config=_checkpoint_config(spec, space),
            ),
        )
    try:
        return tuner.fit()
    finally:
        _release_request(spec)


def run_sweep(spec: SweepSpec):
    """Validate, start Ray, plan resources, open the MLflow parent run, record what was decided
    (``sweep.yaml``, ``runtime.yaml``), run the Tuner and finalize.

    Returns:
        The trial summaries (:class:`~pointtune.search.report.TrialSummary`), best first.

    Raises:
        ConfigError, DatasetError, ResourceError: before any trial starts.
    """
    from pointtune import tracking
    from pointtune.cluster import init_ray, node_resources
    from pointtune.protocols import protocol_name
    from pointtune.search.resources import memory_warning

    spec, space, pre, memory = prepare_sweep(spec)
    decided = _train_prerequisite(spec, pre) if pre is not None else {}
    prerequisite = dict(decided)
    if not spec.rows:  # a study's rows name their sources already (a sweep's rows: the sweep's copies)
        decided.update(_copy_sources(spec, space, decided))
    init_ray(spec.address, dashboard=spec.workers > 1, worker_start_timeout_s=spec.worker_start_timeout,
             verbose=spec.verbose)
    plan = _plan_when_ready(spec)
    _check_tracking(spec, len(node_resources()))
    warning = None if spec.memory_per_worker else memory_warning(plan, node_resources(), memory)
    if warning:
        print(warning, flush=True)
    layout = spec.layout
    spec.root.mkdir(parents=True, exist_ok=True)
    layout.space.write_text(yaml.safe_dump(_resolved_space(spec), sort_keys=False))
    uri = tracking.resolve_tracking_uri(spec.root, spec.mlflow_uri)
    experiment_id = tracking.ensure_experiment(uri, f"pointtune-{spec.method}", spec.root)
    probe = trial_config(spec, {ROW_KEY: next(iter(spec.rows))} if spec.rows else {})
    parent_run_id = tracking.start_run(
        uri, experiment_id, spec.root.name,
        {tracking.KIND_TAG: "study" if spec.rows else "sweep", "pointtune.method": spec.method,
         "pointtune.git_commit": _git_commit(), **_study_tags(spec, uri)},
        {"method": spec.method, "dataset": probe.data.name, "data_root": probe.data.root,
         "search_space": spec.space_file, "objective": space.describe_objective(),
         "task": probe.method_cls.task.value, "protocol": protocol_name(probe),
         "trials": spec.trials, "epochs": spec.epochs, "workers": spec.workers,
         "gpus_per_worker": spec.gpus_per_worker, "seed": spec.seed, "resources": plan.as_dict(),
         **({"scheduler": spec.scheduler, "sampler": spec.sampler, "startup_trials": spec.startup_trials}
            if spec.searches else
            {"scheduler": spec.scheduler} if not spec.rows else {}),
         **({f"prerequisite/{pre.name}": prerequisite[pre.key]} if pre else {}),
         **({"rows": ",".join(spec.rows), "seeds": ",".join(map(str, spec.seeds))} if spec.rows else {})},
    )
    runtime = SweepRuntime(plan.as_dict(), uri, experiment_id, parent_run_id, decided)
    tracking.log_artifact(uri, parent_run_id, layout.space)
    spec.save()
    runtime.save(layout)
    shape = "in its own actor" if plan.single_process else f"{plan.workers} Ray Train workers"
    kind = f"study of {len(spec.rows)} configs x {len(spec.seeds)} seeds" if spec.rows else "sweep"
    print(f"[pointtune] {kind} {spec.root}: {spec.trials} trials, {plan.max_concurrent} at once, each {shape} of "
          f"{plan.cpus_per_worker:g} CPU / {plan.gpus_per_worker:g} GPU", flush=True)
    results = _tune(spec, runtime, space, restore=False)
    return _finish(spec, runtime, space, results)


def _study_tags(spec: SweepSpec, uri: str) -> dict[str, str]:
    """A study's parent run names the sweep it was made from and that sweep's parent run (when the sweep's
    MLflow store is this one)."""
    if not spec.of:
        return {}
    tags = {"pointtune.study_of": spec.of}
    try:
        sweep_runtime = SweepRuntime.load(SweepSpec.load(spec.of).layout)
    except ConfigError:
        return tags
    if sweep_runtime.tracking_uri == uri:
        tags["pointtune.sweep_run"] = sweep_runtime.parent_run_id
    return tags


def resume_sweep(sweep_dir: str | Path, verbose: bool = False):
    """Finish an interrupted sweep: ``Tuner.restore`` (errored trials resumed), then finalize; ``verbose``:
    Ray's, Tune's and Optuna's own lines on the console even if the sweep ran without ``--verbose``.

    Returns:
        The trial summaries, best first.

    Raises:
        ConfigError: not a sweep directory, or no Tune state to restore (none, or the only one cut short by a
            kill: :func:`~pointtune.search.tune_state.repair_tune_state`).
    """
    from ray import tune

    from pointtune.cluster import init_ray
    from pointtune.search.tune_state import repair_tune_state

    spec = SweepSpec.load(sweep_dir)
    spec = replace(spec, verbose=spec.verbose or verbose)
    runtime = SweepRuntime.load(spec.layout)
    space = spec.space()
    if not tune.Tuner.can_restore(spec.layout.tune):  # a file check: refused before Ray starts
        raise ConfigError(f"{sweep_dir}: no Tune experiment state at {spec.layout.tune} to resume")
    for repaired in repair_tune_state(spec.layout.tune):
        print(f"[pointtune] {repaired}", flush=True)
    init_ray(spec.address, dashboard=spec.workers > 1, worker_start_timeout_s=spec.worker_start_timeout,
             verbose=spec.verbose)
    print(f"[pointtune] resuming sweep {spec.root}", flush=True)
    results = _tune(spec, runtime, space, restore=True)
    return _finish(spec, runtime, space, results)


def _finish(spec: SweepSpec, runtime: SweepRuntime, space: SearchSpace, results):
    """Finalize a sweep whose trials all ended; raise :class:`SweepInterrupted` for one that was stopped
    (Tune returns after a SIGINT, its saved state holding trials not yet run or running): then nothing is
    marked finished, stopped or best, the parent run is tagged INTERRUPTED and stays open for ``resume``."""
    from ray.tune import ExperimentAnalysis

    from pointtune import tracking
    from pointtune.search.report import finalize

    # The state Tune saved (before it stopped the trials, which then read TERMINATED in memory).
    saved = ExperimentAnalysis(spec.layout.tune).trials
    ended = sum(t.status in ("TERMINATED", "ERROR") for t in saved)
    if ended < spec.trials:
        tracking.set_tags(runtime.tracking_uri, runtime.parent_run_id, {"pointtune.status": "INTERRUPTED"})
        raise SweepInterrupted(f"sweep interrupted with {ended} of {spec.trials} trials ended; Tune saved its "
                               f"state and nothing was summarized; finish it with: pointtune resume {spec.root}")
    return finalize(spec, runtime, space, results)


def _resolved_space(spec: SweepSpec) -> dict[str, Any]:
    tree = load_space_tree(Path(spec.space_file))
    tree["method"] = spec.method
    return tree
