"""What a sweep records, written where the truth is: in the Tune driver, from what Tune received.

- :class:`MlflowRecorder` (a Tune ``Callback``): opens a trial's MLflow child run when the trial starts,
  logs every result at the moment Tune receives it (so an epoch is in MLflow exactly when, and only if, Tune
  has it: a worker never logs on its own), and closes the run when the trial ends: ``FINISHED`` (ran its
  epochs), ``KILLED`` with ``pointtune.stopped_by`` (the scheduler stopped it early) or ``FAILED`` with
  ``pointtune.failure`` (the error). Workers never import MLflow.
- :class:`StudySearch` (Ray's ``OptunaSearch``): records a trial that the scheduler stopped as ``PRUNED``
  in the Optuna study (with the epoch it reached and its last value), not as complete with a truncated value,
  tells a multi-objective study the values of :func:`study_metric`, and cross-links the stores: each Optuna
  trial carries ``tune_trial_id`` and ``mlflow_run_id``, each Tune config ``optuna_trial`` (its Optuna trial
  number).

Both are pickled with Tune's experiment state and come back on ``pointtune resume``: they hold only plain
values and reopen clients lazily.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import optuna
from ray.tune import Callback
from ray.tune.logger import JsonLoggerCallback
from ray.tune.search.optuna import OptunaSearch

from pointtune import tracking
from pointtune.failures import failure_reason
from pointtune.layout import trial_name
from pointtune.search.spec import OPTUNA_KEY, ROW_KEY, STUDY_NAME, SweepRuntime, SweepSpec, sampled_params, study_storage
from pointtune.train.session import EXPERIMENT_KEY

# Result keys that are pointtune metrics (Tune adds its own bookkeeping: pid, hostname, time_total_s, ...).
METRIC_PREFIXES = ("train/", "val/", "test/", "best/", "cost/", "sched/")
METRIC_KEYS = ("epoch", "lr")
# A trial run's tags that say how its trial ended: moved aside (``<tag>.previous``) when resume restarts it.
OUTCOME_TAGS = ("pointtune.status", "pointtune.failure", "pointtune.stopped_by", "pointtune.artifacts")


def metric_items(result: dict[str, Any]) -> dict[str, float]:
    """The pointtune metrics of a Tune result: finite numbers under :data:`METRIC_PREFIXES` or
    :data:`METRIC_KEYS`."""
    return {
        k: float(v) for k, v in result.items()
        if (k.startswith(METRIC_PREFIXES) or k in METRIC_KEYS)
        and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def study_metric(space) -> str | list[str]:
    """The result key(s) a sweep's Optuna study is told (:class:`StudySearch`, and
    :func:`pointtune.search.report.reconcile_study` after the sweep): one objective, its metric (the trial's
    last value; the per-epoch values are the trial's intermediate values); several, ``best/<metric>`` of each
    (``space.objectives`` order: every value at the epoch the primary objective selected, as the loop reports
    them; Optuna keeps no intermediate values for multi-objective trials)."""
    if space.multi_objective:
        return [f"best/{o.metric}" for o in space.objectives]
    return space.metric


def study_values(result: dict[str, Any] | None, metric: str | list[str]) -> float | list[float] | None:
    """The value (or values, for a list ``metric``) of :func:`study_metric` in a Tune result; ``None`` when
    one is missing or not a finite number."""
    keys = metric if isinstance(metric, list) else [metric]
    values = [(result or {}).get(k) for k in keys]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    values = [float(v) for v in values]
    return values if isinstance(metric, list) else values[0]


def stopped_early(result: dict[str, Any] | None, max_epochs: int) -> bool:
    """Whether a trial that ended without error ended before its last epoch (ASHA stopped it)."""
    return bool(result) and int(result.get("epoch", 0)) < max_epochs


class TrialResultLog(JsonLoggerCallback):
    """Tune's ``result.json`` logger (every result a trial reported: what ``ResultGrid`` and the summary
    read), which keeps a trial's earlier results when ``pointtune resume`` restarts it in a new driver.

    Tune restores the file from the storage only for a trial it holds a checkpoint for; a data-parallel
    trial's checkpoints are Ray Train's, so a resumed one (e.g. after a worker was killed) started a fresh
    file and its earlier epochs vanished from Tune's record (issue 12). Here the file is restored whenever the
    storage has one and this driver has not started its own copy yet (Tune's file-logger hook).
    """

    def _restore_from_remote(self, file_name: str, trial) -> None:
        import pyarrow.fs

        local = Path(trial.local_path, file_name)
        if local.exists():  # this driver writes it already (e.g. a PBT restart): it is the newest copy
            return
        remote = Path(trial.storage.trial_fs_path, file_name).as_posix()
        filesystem = trial.storage.storage_filesystem
        if filesystem.get_file_info(remote).type == pyarrow.fs.FileType.NotFound:
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(remote, local.as_posix(), source_filesystem=filesystem)


class MlflowRecorder(Callback):
    """The one writer of a sweep's trial runs in MLflow: as a Tune callback, one child run per trial written
    from what Tune received (see module doc); after the trials, the ranks (:meth:`rank`), the runs of trials
    Tune never knew (:meth:`close_lost`) and later evaluations of a trial (:meth:`log_evaluation`).

    Args:
        spec, runtime: the sweep (storage, epochs, scheduler; MLflow store, experiment and parent run).
        metric, mode: the objective.
    """

    def __init__(self, spec: SweepSpec, runtime: SweepRuntime, metric: str, mode: str):
        self.spec, self.runtime, self.metric, self.mode = spec, runtime, metric, mode
        self.run_ids: dict[str, str] = {}
        self.logged: dict[str, set[int]] = {}  # the epochs each trial's run holds

    @property
    def _uri(self) -> str:
        return self.runtime.tracking_uri

    def _target(self, run_id: str) -> dict[str, str]:
        return {"tracking_uri": self._uri, "run_id": run_id}

    def _run_id(self, trial) -> str:
        if trial.trial_id not in self.run_ids:
            self.on_trial_start(0, [], trial)
        return self.run_ids[trial.trial_id]

    def find_run(self, trial_id: str) -> str | None:
        """The MLflow run id of Tune trial ``trial_id``, or ``None``."""
        return tracking.find_child_run(self._uri, self.runtime.experiment_id, self.runtime.parent_run_id, trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        """Open (or, after a restart, reopen) the trial's child run and say so once per trial (PBT starts a
        trial again at every exploit). Its params come with the trial's first result (:meth:`on_trial_result`):
        the trial builds its config, the driver does not build it again."""
        announced = trial.trial_id in self.run_ids  # PBT restarts a trial (from its own or another's checkpoint)
        existing = self.find_run(trial.trial_id)
        if existing:  # restarted (resume): how it ended before (a failure, ASHA's stop) is superseded by what happens now
            tracking.reopen_run(self._uri, existing, superseded=OUTCOME_TAGS)
            run_id = existing
        else:
            run_id = tracking.start_run(
                self._uri, self.runtime.experiment_id, trial_name(trial.trial_id),
                {tracking.PARENT_TAG: self.runtime.parent_run_id, tracking.TRIAL_TAG: trial.trial_id,
                 tracking.KIND_TAG: "trial", "pointtune.sampled": ",".join(sorted(self.spec.space().searched())),
                 **({"pointtune.optuna_trial": str(trial.config[OPTUNA_KEY])} if OPTUNA_KEY in trial.config else {}),
                 **({"pointtune.row": str(trial.config[ROW_KEY])} if ROW_KEY in trial.config else {})},
                {},
            )
        self.run_ids[trial.trial_id] = run_id
        self.logged[trial.trial_id] = tracking.logged_steps(self._uri, run_id) if existing else set()
        if OPTUNA_KEY in trial.config:
            set_study_attr(self.spec.sweep_dir, trial.config[OPTUNA_KEY], "mlflow_run_id", run_id)
        if not announced:
            print(f"[pointtune] trial {trial.trial_id} started (MLflow run {run_id})", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        """Log the trial's config as the run's params when its first result brings it, and the epoch Tune just
        received, at step ``epoch``, once: an epoch the run already holds (a trial
        restarted by ``resume`` from before its first checkpoint reports it again) is not logged twice. Under
        PBT also the values of the sampled parameters the epoch ran with (``param/<key>``: the config of the
        result, not the trial's, which the scheduler may have changed already) and ``pbt/exploit`` = 1 where the
        trial had just resumed from another trial's checkpoint (the loop says so:
        :class:`~pointtune.train.loop.LoopConfig` ``trial_id``)."""
        metrics = metric_items(result)
        run_id = self._run_id(trial)
        if EXPERIMENT_KEY in result:
            # the config the trial built and trains with, once: a restarted trial announces it again, which
            # completes params that a killed driver logged in part and adds nothing else (PBT's later configs
            # are its param/<key> metrics)
            tracking.log_params(self._uri, run_id, json.loads(result[EXPERIMENT_KEY]))
        if "epoch" not in metrics or int(metrics["epoch"]) in self.logged[trial.trial_id]:
            return
        if self.spec.scheduler == "pbt":
            params = sampled_params(result.get("config") or trial.config)
            metrics.update({f"param/{k}": float(v) for k, v in params.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
            metrics["pbt/exploit"] = float(result.get("pbt/exploit", 0.0))
        tracking.log_metrics(self._target(run_id), metrics, step=int(metrics["epoch"]))
        self.logged[trial.trial_id].add(int(metrics["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        """The trial ended without error: FINISHED, or KILLED if the scheduler stopped it early."""
        result = trial.last_result or {}
        run_id = self._run_id(trial)
        tags = {"pointtune.status": "FINISHED"}
        status = "FINISHED"
        if stopped_early(result, self.spec.epochs):
            status, tags["pointtune.status"] = "KILLED", "STOPPED"
            value = result.get(self.metric)
            tags["pointtune.stopped_by"] = (
                f"ASHA stopped it after epoch {int(result.get('epoch', 0))} of {self.spec.epochs}"
                + (f" ({self.metric} = {value:.4f})" if isinstance(value, (int, float)) else "")
            )
        tracking.set_tags(self._uri, run_id, tags)
        self._log_best(trial, run_id)
        tracking.end_run(self._uri, run_id, status)

    def on_trial_error(self, iteration, trials, trial, **info):
        """The trial failed: FAILED, with the root cause of its error as ``pointtune.failure``."""
        run_id = self._run_id(trial)
        reason = failure_reason(_error_text(trial))
        tracking.set_tags(self._uri, run_id, {"pointtune.status": "FAILED", "pointtune.failure": reason})
        self._log_best(trial, run_id)
        tracking.end_run(self._uri, run_id, "FAILED")

    def _log_best(self, trial, run_id: str) -> None:
        """The checkpoint of the epoch the trial's loop selected (``best/epoch``), its config, its validation
        confusion matrix, feature spectrum and scene renders as the run's artifacts.

        Only checkpoints of epochs Tune received count: a worker killed after Ray Train kept its checkpoint but
        before Tune got that epoch's result leaves a checkpoint (and, on a tie, a selection) that no record
        holds; then nothing is logged and ``pointtune.artifacts`` says why."""
        from pointtune.train.artifacts import log_checkpoint_artifacts
        from pointtune.train.checkpoint import best_checkpoint, checkpoints_of

        received = (trial.last_result or {}).get("epoch")
        for _ in range(3):
            kept = checkpoints_of(self.spec.layout.trial_dirs(trial.trial_id, trial.path))
            known = [k for k in kept if received is None or k.metrics.get("epoch", 0) <= received]
            if kept and not known:
                epochs = sorted(int(k.metrics.get("epoch", 0)) for k in kept)
                tracking.set_tags(self._uri, run_id, {"pointtune.artifacts": (
                    f"not logged: the kept checkpoint is of epoch {epochs[-1]}, whose result Tune never received "
                    f"(the trial ended after epoch {received})")})
                return
            best = best_checkpoint(known)
            if best is None:
                return
            try:
                log_checkpoint_artifacts(self._uri, run_id, best.path, f"trial {trial.trial_id}")
            except (FileNotFoundError, shutil.Error):
                # Ray Train removed it while it was copied (a stopped data-parallel trial's last checkpoint
                # superseded it): look again rather than fail a trial that trained.
                continue
            return
        tracking.set_tags(self._uri, run_id, {"pointtune.artifacts": "not logged: the best checkpoint was removed "
                                                                     "by Ray Train while it was being copied"})

    def rank(self, trial_id: str, rank: int | str, optuna_trial: int | None) -> str | None:
        """Tag the trial's run with its rank in the sweep (``-``: it reported no objective) and its Optuna
        trial number; returns the run id (``None``: the trial has no run)."""
        run_id = self.find_run(trial_id)
        if run_id:
            tracking.set_tags(self._uri, run_id, {"pointtune.rank": rank, **(
                {"pointtune.optuna_trial": optuna_trial} if optuna_trial is not None else {})})
        return run_id

    def close_lost(self, known: set[str], reason: str) -> int:
        """Child runs still RUNNING whose trial is not in ``known`` (Tune's trials: it started after Tune last
        saved its state, then the sweep was killed) end KILLED with ``pointtune.status=LOST`` and ``reason``.
        Returns how many."""
        closed = 0
        for run in tracking.child_runs(self._uri, self.runtime.experiment_id, self.runtime.parent_run_id):
            if run.info.status == "RUNNING" and run.data.tags.get(tracking.TRIAL_TAG) not in known:
                tracking.set_tags(self._uri, run.info.run_id, {"pointtune.status": "LOST", "pointtune.lost": reason})
                tracking.end_run(self._uri, run.info.run_id, "KILLED")
                closed += 1
        return closed


def _error_text(trial) -> str | None:
    """The error Tune recorded for a trial: its local error file (written before the callbacks run), else
    the copy in the storage."""
    path = trial.error_file
    if path and Path(path).is_file():
        return Path(path).read_text()
    return trial.get_error()


def set_study_attr(sweep_dir: str, number: int, key: str, value: Any) -> None:
    """Set a user attribute on Optuna trial ``number`` of the sweep's study (a trial Optuna already closed,
    e.g. one a resumed sweep restarts, keeps the attributes it has)."""
    from optuna.exceptions import UpdateFinishedTrialError

    storage = study_storage(sweep_dir)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    try:
        storage.set_trial_user_attr(storage.get_trial_id_from_study_id_trial_number(study_id, number), key, value)
    except UpdateFinishedTrialError:
        pass


class StudySearch(OptunaSearch):
    """``OptunaSearch`` that records scheduler-stopped trials as ``PRUNED`` and cross-links the stores.

    ``metric`` is :func:`study_metric`: one name (intermediate values at step ``epoch``) or a list (a
    multi-objective study, ``mode`` a list too; no intermediate values, which Optuna does not support there).

    Args:
        max_epochs: epochs of a trial that runs to the end; one that ends earlier without error was stopped
            by the scheduler.
        **kwargs: passed to ``OptunaSearch``.
    """

    def __init__(self, *args, max_epochs: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_epochs = max_epochs
        self._reported: dict[str, set[int]] = {}  # epochs already reported, per Tune trial

    def _setup_study(self, mode):
        """``OptunaSearch``'s study, its objectives named after the metrics (optuna-dashboard and
        ``study.metric_names`` show ``val/OA``, not "Objective 0")."""
        super()._setup_study(mode)
        names = self._metric if isinstance(self._metric, list) else [self._metric]
        if self._ot_study.metric_names != names:
            with warnings.catch_warnings():  # experimental since Optuna 3.2, used knowingly: not the user's concern
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(names)

    def restore(self, checkpoint_path: str) -> None:
        """Restore the searcher Tune saved; a file cut short (the driver killed while Tune copied its state to
        the storage) is rebuilt from the Optuna study instead, which holds every trial with its Tune trial id:
        the ones still RUNNING are the trials Tune may continue, the others are closed. Raises nothing else
        than ``OptunaSearch.restore`` does."""
        import pickle

        try:
            super().restore(checkpoint_path)
        except (EOFError, pickle.UnpicklingError) as err:
            print(f"[pointtune] {checkpoint_path}: unreadable ({type(err).__name__}: {err}); the searcher's state "
                  "is rebuilt from the Optuna study", flush=True)
            self._rebuild_from_study()

    def _rebuild_from_study(self) -> None:
        from optuna.trial import TrialState

        for frozen in self._ot_study.get_trials(deepcopy=False):
            tune_id = frozen.user_attrs.get("tune_trial_id")
            if tune_id is None:
                continue
            if frozen.state == TrialState.RUNNING:
                self._ot_trials[tune_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
                self._reported[tune_id] = set(frozen.intermediate_values)
            else:
                self._completed_trials.add(tune_id)

    def suggest(self, trial_id: str):
        """Ask Optuna for a trial; tag it with the Tune trial id and hand its number to the config."""
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("tune_trial_id", trial_id)
            config[OPTUNA_KEY] = ot_trial.number
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Report the objective to Optuna as an intermediate value at step ``epoch`` (not Tune's iteration
        count, which restarts when a trial resumes from a checkpoint)."""
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict | None) -> None:
        if isinstance(self.metric, list):  # a multi-objective trial has no intermediate values in Optuna
            return
        value = study_values(result, self.metric)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials or value is None:
            return
        from optuna.exceptions import UpdateFinishedTrialError

        step = int(result.get("epoch", 0))
        if step not in self._reported.setdefault(trial_id, set()):
            try:
                ot_trial.report(value, step)
            except UpdateFinishedTrialError:  # closed in the study (failed, or before an interruption)
                return
            self._reported[trial_id].add(step)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        """COMPLETE (all epochs, with the last value; several objectives: the values of :func:`study_metric`) or
        PRUNED (stopped early, with the epoch it reached and its last value, or values, as user attributes and
        intermediate values). A failed trial stays RUNNING here:
        ``pointtune resume`` may still finish it; the end of the sweep settles it from what Tune received
        (:func:`pointtune.search.report.reconcile_study`)."""
        from optuna.trial import TrialState

        self._report(trial_id, result)  # the last epoch: Tune does not pass a stopping result to on_trial_result
        if error:
            return None
        if trial_id in self._completed_trials or not stopped_early(result, self._max_epochs):
            return super().on_trial_complete(trial_id, result, error)
        from optuna.exceptions import UpdateFinishedTrialError

        ot_trial = self._ot_trials[trial_id]
        try:
            ot_trial.set_user_attr("stopped_at_epoch", int(result["epoch"]))
            last = study_values(result, self.metric)
            if last is not None:
                ot_trial.set_user_attr("last_value", last)
            self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        except UpdateFinishedTrialError:  # closed in the study before an interruption
            pass
        self._completed_trials.add(trial_id)
        return None
