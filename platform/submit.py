"""``pointtune submit``: run a pointtune command as a Ray job, with the code of this checkout on every node.

``ray job submit --working-dir .`` uploads the files, but the nodes keep importing the copy of pointtune that
was installed when the cluster started, so edits made since never run. Here the job's runtime environment
carries this checkout's package as a ``py_module`` (``platform/`` staged as ``pointtune/``, ``methods/`` as
``pointtune/methods/``, the layout ``pip install`` makes), which Ray puts ahead of the installed copy in the
job's driver and in every task and actor on every node; the repository is the job's working directory, so
``search_spaces/*.yaml`` resolve as they do locally.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENT_WAIT_S = 180  # how long to wait for a job agent on a cluster that has just started (60 s ran out under load)
UPLOAD_EXCLUDES = [".git", ".venv", "runs", "**/__pycache__", "*.egg-info", ".pytest_cache", ".whl"]


def stage_package(target: Path) -> Path:
    """Copy this checkout's package into ``target/pointtune`` in its installed layout; returns that folder."""
    package = target / "pointtune"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "platform", package, ignore=ignore)
    shutil.copytree(REPO_ROOT / "methods", package / "methods", ignore=ignore)
    return package


def submit(address: str, command: list[str], wait: bool = True, env: dict[str, str] | None = None,
           verbose: bool = False) -> int:
    """Submit ``python -m pointtune.cli COMMAND`` to the cluster whose dashboard is at ``address``.

    Args:
        address: the dashboard / job API URL, e.g. ``http://127.0.0.1:8265`` (through ``ray dashboard``).
        command: the pointtune command line, e.g. ``["sweep", "cedr", "--trials", "8"]``.
        wait: follow the job's output until it ends.
        env: extra environment variables for the job.
        verbose: show Ray's lines of packaging and uploading the checkout
            (:func:`pointtune.console.quiet_job_submission`).

    Returns:
        0 if the job succeeded (or was submitted, with ``wait=False``), else 1.

    Raises:
        ConfigError: no command, or no job API answers at ``address``.
    """
    import shlex

    from ray.job_submission import JobStatus, JobSubmissionClient

    from pointtune.config import ConfigError
    from pointtune.console import quiet_job_submission

    quiet_job_submission(verbose)
    if not command:
        raise ConfigError("pointtune submit: name the command to run, e.g. `pointtune submit -- sweep cedr ...`")
    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"--address {address}: no Ray job API answers there ({str(err).splitlines()[0]})") from None
    with tempfile.TemporaryDirectory() as tmp:
        package = stage_package(Path(tmp))
        deadline = time.time() + AGENT_WAIT_S
        while True:
            try:
                job_id = client.submit_job(
                    entrypoint="python -m pointtune.cli " + shlex.join(command),
                    runtime_env={"working_dir": str(REPO_ROOT), "excludes": UPLOAD_EXCLUDES,
                                 "py_modules": [str(package)], "env_vars": {"PYTHONUNBUFFERED": "1", **(env or {})}},
                )
                break
            except RuntimeError as err:  # a cluster that has just started has no job agent for a few seconds
                if "No available agent" not in str(err) or time.time() > deadline:
                    raise ConfigError(f"--address {address}: the job was refused ({str(err).splitlines()[0]})") from None
                time.sleep(2)
    print(f"[pointtune] submitted job {job_id} to {address}", flush=True)
    if not wait:
        print(f"[pointtune] follow it: ray job logs --address {address} --follow {job_id}")
        return 0
    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        sys.stdout.write(logs[printed:])
        sys.stdout.flush()
        printed = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            break
        time.sleep(2)
    print(f"[pointtune] job {job_id}: {status.value}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
