"""The cluster path as the README documents it, on a 2-node Ray cluster built on this machine: `pointtune
submit` sends a 2-trial sweep through the Ray job API with a shared `--storage`; the submitted code (not
the installed copy) runs on both nodes; outputs, checkpoints, MLflow runs and the Optuna study land where
the README says; `pointtune resume` and `pointtune best` work from them."""

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from conftest import REPO
from helpers import check_records, pointtune, write_space

pytestmark = pytest.mark.slow
MARK = "[pointtune-submitted]"  # printed only by the edited copy of the code that the test submits


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node of 1 CPU each, with the job API; the venv's python first on PATH."""
    from ray.cluster_utils import Cluster

    saved = dict(os.environ)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    for key in [k for k in os.environ if k.startswith("RAY_ADDRESS")]:
        os.environ.pop(key)
    # Free ports for each node's dashboard agent (the job API's), not Ray's default 52365: another Ray instance
    # on the machine holds that one, and an agent that cannot bind it leaves the cluster without a job agent.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_port": _free_port(), "dashboard_host": "127.0.0.1",
        "dashboard_agent_listen_port": _free_port()})
    # Its own runtime-environment folder, as a second machine has: both nodes share this machine's Ray session
    # directory, and the worker's agent would otherwise unpack the job's files over the head's copy.
    cluster.add_node(num_cpus=1, runtime_env_dir_name="runtime_resources_node2",
                     dashboard_agent_listen_port=_free_port())
    cluster.wait_for_nodes()
    yield cluster, f"http://{cluster.head_node.address_info['webui_url']}"
    cluster.shutdown()
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def submitted(two_nodes, tmp_path_factory):
    """Submit an edited copy of the checkout (its loop prints MARK) and return what it left."""
    from pointtune import submit as submit_module

    cluster, dashboard = two_nodes
    root = tmp_path_factory.mktemp("job")
    copy = root / "checkout"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info"))
    loop = copy / "platform" / "train" / "loop.py"
    loop.write_text(loop.read_text().replace('"[pointtune] epoch', f'"{MARK} epoch'))
    storage = root / "storage"
    space = write_space(root / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True}})
    tracking = f"sqlite:///{storage}/mlflow.db"
    storage.mkdir()
    original = submit_module.REPO_ROOT
    submit_module.REPO_ROOT = copy
    try:
        import contextlib
        import io

        logs = io.StringIO()
        with contextlib.redirect_stdout(logs):
            status = submit_module.submit(dashboard, [
                "sweep", "cedr", "--space", str(space), "--trials", "2", "--epochs", "2", "--seed", "0",
                "--storage", str(storage), "--mlflow-uri", tracking])
    finally:
        submit_module.REPO_ROOT = original
    assert status == 0, logs.getvalue()[-5000:]
    sweeps = list(storage.glob("*/sweep.yaml"))
    assert len(sweeps) == 1, list(storage.iterdir())
    return cluster, sweeps[0].parent, tracking, logs.getvalue()


def test_submitted_code_runs_on_both_nodes(submitted):
    import ray
    from ray.util.state import list_actors

    cluster, sweep_dir, _, logs = submitted
    assert MARK in logs  # the trials ran the submitted edit, not the installed pointtune
    ray.init(address=cluster.address)
    try:
        trials = [a for a in list_actors(filters=[("class_name", "=", "ImplicitFunc")], limit=100)]
        assert len({a.node_id for a in trials}) == 2, trials  # one trial per 1-CPU node
    finally:
        ray.shutdown()


def test_outputs_are_where_the_readme_says(submitted):
    _, sweep_dir, tracking, _ = submitted
    # A job's working directory is deleted: with a local --storage the sweep directory is <storage>/<name>.
    for name in ("sweep.yaml", "optuna.db", "summary.csv", "best_config.yaml"):
        assert (sweep_dir / name).is_file(), name
    assert list(sweep_dir.glob("tune/trial_*/checkpoint_*/state.pt"))
    statuses = check_records(sweep_dir, 2, tracking_uri=tracking)
    assert len(statuses) == 2


def test_resume_and_best_work_from_the_storage(submitted, tmp_path):
    _, sweep_dir, _, _ = submitted
    resumed = pointtune("resume", str(sweep_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    best = pointtune("best", str(sweep_dir), "--output", str(tmp_path / "best.yaml"))
    assert best.returncode == 0, best.stderr[-3000:]
    assert "method:" in (tmp_path / "best.yaml").read_text()
