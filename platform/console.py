"""The console contract of the commands that run Ray (``sweep``, ``resume``, ``study``, ``compare``, ``submit``).

By default a command prints its own ``[pointtune] ...`` lines (a trial's come through Ray, prefixed with the
actor's name and pid), Tune's status table (:func:`pointtune.search.sweep._reporter`) and its summary table.
What Ray, Tune and MLflow would add is quieted where it is made, by their own settings where they have one:

- Ray's log deduplication (``RAY_DEDUP_LOGS=0``): it holds a line that another trial also printed for up to
  5 s, so a trial's ``[pointtune] data ...`` lines came after the sweep's summary, and it appends a notice
  about itself; each trial's lines are shown as printed instead;
- MLflow's INFO lines (``MLFLOW_LOGGING_LEVEL=WARNING``: "Creating initial MLflow database tables...");
- the notice that token authentication is on, which ``ray.init`` logs for every local instance (the logger's
  level only: security is whatever Ray, ``RAY_AUTH_MODE`` or the cluster decide);
- Ray's INFO lines of a job submission (packaging and uploading the checkout) and its warnings about file
  sizes (a job that cannot be uploaded still fails with Ray's error);
- Tune's own lines on Ctrl-C ("Stop signal received ...", "Trials did not complete: [...]", "Resume experiment
  with: Tuner.restore(...)"): pointtune says in one line what was saved and that ``pointtune resume DIR``
  finishes the sweep, which Tune's ``Tuner.restore`` would not do (records, summary);
- in every worker process (trial actors, Ray Train's controllers and workers: :func:`worker_runtime_env`), Ray's
  INFO lines, the ``Exception ignored ... SystemExit: 1`` traceback Python prints when Ray's SIGTERM handler (a
  worker being stopped) fires inside a weakref callback, and two warnings of Ray Train (:data:`WORKER_NOTICES`)
  about what it does as designed: its placement-group cleaner freeing the workers of a trial whose controller
  ended ("Detected that the Ray Train controller actor ... is dead. Cleaning up placement group ...", after a
  trial that ASHA stopped or a killed study), and the 20-line traceback its controller logs each time a resource
  request to Ray's autoscaling coordinator takes over 5 s ("... If this only happens transiently during network
  partition or CPU being overloaded, it's safe to ignore this error"; seen at a load of 8 on 2 cores; the
  request only informs an autoscaler).

The notices of Tune and Ray Train are filtered by their first words (:class:`_Notices`), since they share their
loggers with errors that must show (e.g. "Failed to clean up placement group").

``--verbose`` leaves all of it as Ray, Tune and MLflow print it. The environment variables must be set before
``ray`` and ``mlflow`` are imported (both read them then): :func:`quiet_driver` is the first thing such a
command does. ``tests/test_console.py`` keeps the contract.
"""

from __future__ import annotations

import logging
import os
import sys

# Read by Ray and MLflow when imported; inherited by the local Ray instance's processes. A value the user set wins.
QUIET_ENV = {"RAY_DEDUP_LOGS": "0", "MLFLOW_LOGGING_LEVEL": "WARNING"}
# Ray's notice that token authentication is on (Ray 2.60 logs it at WARNING for every local instance).
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
# Tune's logger of tune.run, and the first words of its notices of a run stopped by Ctrl-C.
TUNE_LOGGER = "ray.tune.tune"
TUNE_INTERRUPT_NOTICES = ("Stop signal received", "Trials did not complete", "Experiment has been interrupted")
# Ray Train's notices in its worker processes: logger -> the first words of each quieted message.
WORKER_NOTICES = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": (
        "Detected that the Ray Train controller actor",),
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client": (
        "Failed to send resource request",),
}
# What a job submission logs: the client's steps at INFO (its module sets that level when imported) and the
# packaging of the working directory and py_modules (INFO, and WARNING for large files).
JOB_SUBMISSION_LOGGERS = ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                          "ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir",
                          "ray._private.runtime_env.py_modules")


def quiet_driver(verbose: bool) -> None:
    """Quiet the console of a command's driver process (see the module docstring); nothing with ``verbose``.

    Call it before ``ray`` or ``mlflow`` is imported: they read :data:`QUIET_ENV` then.
    """
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger(TOKEN_NOTICE_LOGGER).setLevel(logging.ERROR)
    _drop_notices(TUNE_LOGGER, TUNE_INTERRUPT_NOTICES)


class _Notices(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``; keeps every other record."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def _drop_notices(logger: str, prefixes: tuple[str, ...]) -> None:
    """Add a :class:`_Notices` filter for ``prefixes`` to ``logger`` once. A filter, not a level: Ray Train's
    controller configures its "ray.train" logger after a worker's setup hook (``logging.config.dictConfig``),
    which resets the levels of the loggers below it, not their filters."""
    log = logging.getLogger(logger)
    if not any(isinstance(f, _Notices) and f.prefixes == prefixes for f in log.filters):
        log.addFilter(_Notices(prefixes))


def quiet_job_submission(verbose: bool) -> None:
    """Quiet Ray's job-submission client (``pointtune submit``): its loggers show errors only; nothing with
    ``verbose``. Call it after importing ``ray.job_submission``, whose modules set their own levels then."""
    if verbose:
        return
    for name in JOB_SUBMISSION_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_worker(verbose: bool) -> None:
    """Quiet a trial actor or a Ray Train controller or worker: Ray's (and Ray Train's) loggers at WARNING (e.g.
    "Checkpoint successfully created" per epoch, every report's metrics), Ray Train's notices of
    :data:`WORKER_NOTICES`, and no traceback for the ``SystemExit`` that Ray's SIGTERM handler raises where
    Python can only print it; nothing with ``verbose``."""
    if verbose:
        return
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train's context logs under its file's path, outside the "ray" hierarchy.
    for name in ("ray", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    for logger, prefixes in WORKER_NOTICES.items():
        _drop_notices(logger, prefixes)
    sys.unraisablehook = _unraisable_unless_stopping


def quiet_worker_process() -> None:
    """Ray's ``worker_process_setup_hook`` of a quiet command (:func:`worker_runtime_env`): :func:`quiet_worker`
    in every worker process as it starts, before Tune restores a trial ("Restored on ... from checkpoint")."""
    quiet_worker(False)


def worker_runtime_env(verbose: bool) -> dict:
    """The part of a Ray job's runtime environment that quiets its workers: Ray's documented way to set up
    every worker process's logging (``{"worker_process_setup_hook": ...}``); ``{}`` with ``verbose``."""
    return {} if verbose else {"worker_process_setup_hook": f"{__name__}.quiet_worker_process"}


def _unraisable_unless_stopping(unraisable) -> None:
    """``sys.unraisablehook``: a ``SystemExit`` (the process is being stopped) is not reported; anything else
    is, by Python's default hook."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)
