"""The console contract of the commands that run Ray (``sweep``, ``resume``, ``study``, ``compare``, ``submit``).

By default a command prints its own ``[pointtune] ...`` lines (a trial's come through Ray, prefixed with the
actor's name and pid), Tune's status table (:func:`pointtune.search.sweep._reporter`) and its summary table.
What Ray, Tune and MLflow would add is quieted where it is made, by their own settings, never by filtering
text:

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
  finishes the sweep, which Tune's ``Tuner.restore`` would not do (records, summary); the one place text is
  filtered, by the messages' first words (:class:`_TuneInterruptNotices`), since they share their logger with
  Tune's errors;
- in every worker process (trial actors, Ray Train's controllers and workers: :func:`worker_runtime_env`), Ray's
  INFO lines, the ``Exception ignored ... SystemExit: 1`` traceback Python prints when Ray's SIGTERM handler (a
  worker being stopped) fires inside a weakref callback, and the warning with a 20-line traceback that Ray
  Train's controller logs each time its resource request to Ray's autoscaling coordinator takes over 5 s
  ("Failed to send resource request ... If this only happens transiently during network partition or CPU being
  overloaded, it's safe to ignore this error"; seen at a load of 8 on 2 cores). The request only informs an
  autoscaler; the trial goes on either way.

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
# What a job submission logs: the client's steps at INFO (its module sets that level when imported) and the
# packaging of the working directory and py_modules (INFO, and WARNING for large files).
# Ray Train's client of the autoscaling coordinator: warns, with a traceback, when a request times out (5 s).
AUTOSCALING_CLIENT_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
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
    tune_logger = logging.getLogger(TUNE_LOGGER)
    if not any(isinstance(f, _TuneInterruptNotices) for f in tune_logger.filters):
        tune_logger.addFilter(_TuneInterruptNotices())


class _TuneInterruptNotices(logging.Filter):
    """Drops Tune's notices of an interrupted run (:data:`TUNE_INTERRUPT_NOTICES`); keeps every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TUNE_INTERRUPT_NOTICES)


def quiet_job_submission(verbose: bool) -> None:
    """Quiet Ray's job-submission client (``pointtune submit``): its loggers show errors only; nothing with
    ``verbose``. Call it after importing ``ray.job_submission``, whose modules set their own levels then."""
    if verbose:
        return
    for name in JOB_SUBMISSION_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_worker(verbose: bool) -> None:
    """Quiet a trial actor or a Ray Train controller or worker: Ray's (and Ray Train's) loggers at WARNING (e.g.
    "Checkpoint successfully created" per epoch, every report's metrics), the autoscaling coordinator's client at
    ERROR (:data:`AUTOSCALING_CLIENT_LOGGER`), and no traceback for the ``SystemExit`` that Ray's SIGTERM handler
    raises where Python can only print it; nothing with ``verbose``."""
    if verbose:
        return
    from ray.train.v2._internal.execution import context as train_context

    # Ray Train's context logs under its file's path, outside the "ray" hierarchy.
    for name in ("ray", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(AUTOSCALING_CLIENT_LOGGER).setLevel(logging.ERROR)
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
