"""The console contract of the commands that run Ray (pointtune.console, pointtune.search.status): by default
every line a `sweep`, a `study` (interrupted, then `resume`d) prints, on stdout and stderr, is one of a few
kinds (helpers.CONSOLE_KINDS): pointtune's own lines (a trial's come through Ray, prefixed with its actor and
pid), Tune's status box, the final tables, blank lines. The sweeps that other tests run anyway are checked
there (test_sweep: single-process and data-parallel sweeps; test_faults: Ctrl-C; test_pbt); here a study,
killed and resumed. `--verbose` hides nothing of Ray's. `submit` needs a cluster, so the quieting of its
job-submission client, of a stopped worker's SystemExit and of Ray Train's warnings under load are checked on
the functions that set them."""

import re
import subprocess
import sys
import textwrap

import pytest

from helpers import kill_after_first_report, offending, pointtune, tiny_sets, write_space

# A line Ray's logging prints: "2026-01-01 12:00:00,000\tINFO worker.py:1 -- ..."
RAY_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(INFO|WARNING) \S+\.py:\d+ -- ")


def _space(tmp_path):
    return write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2-trial, 1-epoch sweep, run as a user runs it."""
    root = tmp_path_factory.mktemp("console")
    out = root / "sweep"
    proc = pointtune("sweep", "cedr", "--space", str(_space(root)), "--trials", "2", "--epochs", "1",
                     "--output", str(out), *tiny_sets())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


@pytest.mark.slow
def test_interrupted_study_and_its_resume_print_only_their_own_lines(sweep):
    """A study of the sweep's best config, 2 seeds, one run at a time, killed after its first report (what it
    printed until then is checked), then finished by `pointtune resume`."""
    out, _ = sweep
    study = out / "study"
    # epochs of about half a second (more clouds) and 5 still to train after the first report, so that the kill
    # lands before the study ends, on a fast machine too
    printed = kill_after_first_report([sys.executable, "-m", "pointtune.cli", "study", str(out), "--top-k", "1",
                                       "--no-reference", "--seeds", "2", "--epochs", "3",
                                       "--max-concurrent", "1",
                                       "--set", "data.synthetic_per_class=96"], study)
    assert offending(*printed) == []
    resumed = pointtune("resume", str(study))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-5000:]
    assert offending(resumed.stdout, resumed.stderr) == []
    assert "[pointtune] resuming sweep" in resumed.stdout and "[pointtune] study:" in resumed.stdout


@pytest.mark.slow
def test_verbose_shows_what_ray_prints(tmp_path):
    proc = pointtune("sweep", "cedr", "--space", str(_space(tmp_path)), "--trials", "1", "--epochs", "1",
                     "--output", str(tmp_path / "sweep"), "--verbose", *tiny_sets())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    console = proc.stdout + proc.stderr
    assert "Started a local Ray instance" in console  # Ray's INFO lines
    assert any(RAY_LOG_LINE.match(line) for line in offending(proc.stdout, proc.stderr))


def _run_python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (logging and hooks as a command's process starts with them)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("verbose", [False, True])
def test_job_submission_is_quiet_unless_verbose(tmp_path, verbose):
    """Packaging the checkout as `pointtune submit` does (Ray's packaging with the job client's logger): its
    INFO line, and the WARNING about a large file, only with --verbose."""
    (tmp_path / "module").mkdir()
    with open(tmp_path / "module" / "large.bin", "wb") as fh:  # sparse: above Ray's size warning, costs nothing
        fh.truncate(11 * 2**20)
    proc = _run_python(f"""
        from pathlib import Path
        from ray._private.runtime_env import packaging
        from ray.dashboard.modules import dashboard_sdk
        from ray.job_submission import JobSubmissionClient
        from pointtune.console import quiet_job_submission

        quiet_job_submission({verbose})
        packaging.create_package("{tmp_path / 'module'}", Path("{tmp_path / 'package.zip'}"),
                                 include_gitignore=True, logger=dashboard_sdk.logger)
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = ("Creating a file package" in proc.stderr, "is very large" in proc.stderr)
    assert shown == ((True, True) if verbose else (False, False)), proc.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_stopped_worker_prints_no_traceback_unless_verbose(verbose):
    """The SystemExit of Ray's SIGTERM handler raised inside a weakref callback (where Python can only print
    it): no traceback in a quiet worker; any other exception there is still printed."""
    proc = _run_python(f"""
        import weakref
        from pointtune.console import quiet_worker

        quiet_worker({verbose})

        class Thing:
            pass

        for error in (SystemExit(1), ValueError("a real one")):
            def callback(_, error=error):
                raise error

            thing = Thing()
            ref = weakref.ref(thing, callback)
            del thing
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ValueError: a real one" in proc.stderr
    assert ("SystemExit" in proc.stderr) == verbose, proc.stderr


@pytest.mark.parametrize("verbose", [False, True])
def test_ray_trains_notices_are_quiet_unless_verbose(verbose):
    """Two warnings of Ray Train about what it does as designed, logged after Ray Train's controller has set up
    its logger: a resource request to the autoscaling coordinator timed out on an overloaded machine (a
    traceback, which Ray itself calls safe to ignore; seen at a load of 8 on 2 cores), and the placement-group
    cleaner freeing a finished controller's workers. Quiet: neither is printed, while another warning of the
    cleaner's is; verbose: Ray's lines."""
    proc = _run_python(f"""
        import logging
        import logging.config
        from types import SimpleNamespace

        import ray.train
        from ray.train.v2._internal.execution.controller import placement_group_cleaner
        from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
            TrainAutoscalingCoordinatorClient)
        from pointtune.console import quiet_worker

        quiet_worker({verbose})
        # what Ray Train's controller then does to its logger (LoggingManager.configure_controller_logger):
        # "ray.train" at DEBUG, a console handler at the run's log level (pointtune's quiet runs: WARNING)
        logging.config.dictConfig({{
            "version": 1, "disable_existing_loggers": False,
            "handlers": {{"console": {{"class": "logging.StreamHandler", "level": "WARNING"}}}},
            "loggers": {{"ray.train": {{"level": "DEBUG", "handlers": ["console"], "propagate": False}}}},
        }})

        def timed_out(**_):
            raise TimeoutError("Get timed out: some object(s) not ready.")

        client = TrainAutoscalingCoordinatorClient("train-1")
        client.__dict__["_autoscaling_coordinator"] = SimpleNamespace(
            request_resources=SimpleNamespace(remote=timed_out))
        client.send_resource_request(ray.train.ScalingConfig(num_workers=2), 2)

        cleaner = logging.getLogger(placement_group_cleaner.__name__)
        cleaner.warning("Detected that the Ray Train controller actor (1d7) is dead. Cleaning up placement group")
        cleaner.warning("Failed to clean up placement group: gone")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("Failed to send resource request for train-1" in proc.stderr) == verbose, proc.stderr[-3000:]
    assert ("TimeoutError" in proc.stderr) == verbose
    assert ("Detected that the Ray Train controller actor (1d7) is dead" in proc.stderr) == verbose
    assert "Failed to clean up placement group: gone" in proc.stderr


@pytest.mark.parametrize("world_size, terminal, shown", [(1, True, True), (1, False, False), (2, True, False)])
def test_progress_bar_only_for_one_process_on_a_terminal(monkeypatch, world_size, terminal, shown):
    """A data-parallel worker, or any process whose stderr is not a terminal (a Ray worker's is a file), prints
    per-epoch lines only: each redraw of a bar would be a line of its own there."""
    from types import SimpleNamespace

    from pointtune.train.loop import _shows_progress

    monkeypatch.setattr(sys, "stderr", SimpleNamespace(isatty=lambda: terminal))
    run = SimpleNamespace(loop=SimpleNamespace(progress=True), session=SimpleNamespace(world_size=world_size))
    assert _shows_progress(run) == shown


@pytest.mark.parametrize("verbose", [False, True])
def test_tune_interrupt_notices_are_quiet_unless_verbose(verbose):
    """Ctrl-C: Tune's own notices (its Tuner.restore hint among them, which would not finish pointtune's
    records) are not printed; pointtune's line says how to resume. Tune's other lines on that logger are."""
    proc = _run_python(f"""
        import logging
        from pointtune.console import quiet_driver

        quiet_driver({verbose})
        import ray.tune.tune  # Ray's own logging setup, as in a sweep
        log = logging.getLogger("ray.tune.tune")
        log.warning("Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.")
        log.error("Trials did not complete: %s", ["trial_1"])
        log.warning("Experiment has been interrupted, but the most recent state was saved.\\nResume experiment "
                    "with: Tuner.restore(path=...)")
        log.error("Trial trial_2 errored")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Trial trial_2 errored" in proc.stderr
    for notice in ("Stop signal received", "Trials did not complete", "Tuner.restore"):
        assert (notice in proc.stderr) == verbose, proc.stderr
