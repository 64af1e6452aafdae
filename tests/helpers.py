"""Helpers for tests that run the `pointtune` CLI and read what a run leaves behind (MLflow, Optuna)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_DATA, TINY


def tiny_sets(**extra) -> list[str]:
    """``--set`` flags for the tiny CEDR experiment of conftest.TINY plus ``extra`` (dotted keys)."""
    out = []
    for key, value in {**TINY, **extra}.items():
        out += ["--set", f"{key}={value}"]
    return out


def pointtune(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m pointtune.cli ARGS`` from the repository root; returns the completed process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "pointtune.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def mlflow_runs(run_dir: Path):
    """All MLflow runs (any experiment) of the SQLite store in ``run_dir``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir}/mlflow.db")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, max_results=1000)


def write_space(path: Path, params: dict, objective: str = "val/OA") -> Path:
    """Write a CEDR search space whose ``params`` map dotted keys to specs; TINY keys are fixed."""
    import yaml

    fixed = {k: {"type": "fixed", "value": v} for k, v in TINY.items()}
    path.write_text(yaml.safe_dump({"method": "cedr", "objective": {"metric": objective, "mode": "max"},
                                    "params": {**fixed, **params}}, sort_keys=False))
    return path


def real(path: Path) -> Path:
    """``path`` under ../shared/data; skips the test only where ../shared/data is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return path


def one_line_error(exc_info, *fragments: str) -> str:
    """The message of a ``pytest.raises`` error, asserted to be one line containing every fragment."""
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg
