"""A failure says its cause (issue 18 §7): a process killed by Ray's memory monitor is recorded as such, with
the node and its memory figures, not as "A worker health check failed."."""

import csv
import re
import subprocess
import sys

import optuna
import pytest

from conftest import REPO, TINY
from helpers import check_records, mlflow_runs, scaled, write_space
from plugin_methods.memory_hog import NAME, cgroup_limited, hog_env, node_memory

# The raylet's report as Ray 2.60 words it (abridged: its object-store statistics and advice left out).
REPORT = """3 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 10.0.0.3, ID: \
1c54a5f159be90d6fc37c87c970194e3937ac316cfa3af72f1fd14e0) was 22.6GB used / 23.54GB limit (0.960068)
OOM kill reason: Memory usage 24266876928B exceeded threshold of 24012385075B (95.0% of 25276194816B limit)
Ray killed 3 worker(s) based on the killing policy
Considered workers: [
Selected to kill: (Actor(7216f2d4c13b509384e6d31401000000): job ID=01000000, task name=DatasetManager.__init__, \
required resources={}, pid=10443, actual memory used=0.11GB, worker ID=3431dc77)
Selected to kill: (Actor(d5442522c07b08ab2f8c6a6401000000): job ID=01000000, task name=RayTrainWorker.__init__, \
required resources={CPU_group_1_42a4: 1}, pid=10631, actual memory used=6.5GB, worker ID=68d1c175)
Selected to kill: (Actor(c47b6e543c680767cfbaee2101000000): job ID=01000000, task name=RayTrainWorker.__init__, \
required resources={CPU_group_0_42a4: 1}, pid=10595, actual memory used=5.7GB, worker ID=f05a23e2)
(Actor(031a64bd87865b0b2051348c01000000): job ID=01000000, task name=ImplicitFunc.__init__, \
required resources={}, pid=10308, actual memory used=0.23GB, worker ID=b10dd8e1)
]"""
FIGURES = "node 10.0.0.3 used 22.6 of 23.54 GB, above its 0.95 threshold"
GLOO_RESET = RuntimeError("[gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")


def health_check_failure(pid: int, error: Exception):
    """What Ray Train's controller makes of a worker (process ``pid``) whose poll failed with ``error``."""
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    info = f"A worker health check failed.\nWorker info: Worker(\n  metadata=ActorMetadata(\n    pid={pid},\n  ),\n)"
    return WorkerHealthCheckFailedError(info, failure=error)


def test_a_worker_the_memory_monitor_killed_is_named_with_the_node_and_its_memory():
    from ray.exceptions import OutOfMemoryError
    from ray.train import ControllerError, WorkerGroupError

    from pointtune.failures import failure_reason
    from pointtune.search.actor_deaths import death_by_memory_kill

    killed = WorkerGroupError("unused", {0: GLOO_RESET, 1: health_check_failure(10631, OutOfMemoryError(REPORT))})
    assert failure_reason(killed) == (f"worker 1: killed by Ray's memory monitor ({FIGURES}; it held 6.5 GB; "
                                      f"3 Ray processes killed) (1 other worker(s) failed with it)")
    # The controller (or a single-process trial's actor) got the kill itself: no process of its own named.
    unnamed = f"Ray's memory monitor killed 3 Ray processes ({FIGURES})"
    assert failure_reason(ControllerError(OutOfMemoryError(REPORT))) == unnamed
    # As Tune saved it: the trial actor's traceback, its pid among those considered but not killed.
    saved = ("ray::ImplicitFunc.train() (pid=10308, ip=10.0.0.3, actor_id=dfd0, repr=run_trial)\n"
             '  File "ray/util/queue.py", line 181, in get\n    return ray.get(self.actor.get_nowait.remote())\n'
             f"ray.exceptions.OutOfMemoryError: {REPORT}")
    assert failure_reason(saved) == unnamed
    # A single-process trial whose own actor was killed, as pointtune hands the kill to Tune.
    died = death_by_memory_kill(OutOfMemoryError(REPORT), "d5442522c07b08ab2f8c6a6401000000")
    assert failure_reason(died) == f"killed by Ray's memory monitor ({FIGURES}; it held 6.5 GB; 3 Ray processes killed)"


def test_the_failure_of_a_train_run_names_the_worker_that_died():
    from pointtune.failures import failure_reason, worker_failure

    assert worker_failure({0: GLOO_RESET, 1: RuntimeError("A worker health check failed.")}) == (
        "worker 1: A worker health check failed. (1 other worker(s) failed with it)")
    assert worker_failure({1: ValueError("loss became nan")}) == "worker 1: loss became nan"
    assert failure_reason("Traceback ...\n  File \"loop.py\"\nFloatingPointError: loss became inf") == (
        "FloatingPointError: loss became inf")
    assert failure_reason(None) == "unknown error"


def test_a_failed_train_run_prints_and_tags_its_reason(tmp_path, monkeypatch, capsys):
    """`pointtune train --workers N`: the reason is printed and tagged on the run's MLflow run (the Train run
    is replaced by one whose fit fails as Ray Train's does when the memory monitor killed worker 1)."""
    from ray.exceptions import OutOfMemoryError
    from ray.train import WorkerGroupError

    from pointtune.config import build_config
    from pointtune.train import launch

    class KilledRun:
        def fit(self):
            raise WorkerGroupError("unused", {1: health_check_failure(10631, OutOfMemoryError(REPORT))})

    monkeypatch.setattr(launch, "make_trainer", lambda *args, **kwargs: KilledRun())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(WorkerGroupError):
        launch.train(build_config("cedr", overrides=TINY), tmp_path / "run", progress=False)
    reason = f"worker 1: killed by Ray's memory monitor ({FIGURES}; it held 6.5 GB; 3 Ray processes killed)"
    assert f"[pointtune] training failed: {reason}\n" in capsys.readouterr().err
    _, (run,) = mlflow_runs(tmp_path / "run")
    assert run.info.status == "FAILED" and run.data.tags["pointtune.failure"] == reason


# Room for the sweep's own processes (Ray, the trial, its Train controller and workers: about 3 GB here)
# between the node's use when the test starts and the monitor's threshold; the hog fills the rest.
MARGIN_BYTES = 5e9
EPOCHS = 30  # never reached: the hog passes the threshold within a few epochs


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2], ids=["single-process", "data-parallel"])
def test_a_memory_kill_fails_its_trial_and_is_recorded_with_its_figures(tmp_path, workers, plugin_path):
    """A 1-trial sweep whose last worker (the trial's own actor, or the second of 2 Ray Train workers) grows by
    128 MB a step, under a memory monitor whose threshold lies MARGIN_BYTES above the node's use when the test
    starts: Ray kills it (or, when other work on a shared machine fills the node first, other processes of the
    trial). The trial fails alone (Tune itself ends the sweep when a trial's actor is killed; see
    pointtune.search.actor_deaths), and summary.csv, the MLflow tag and the Optuna attribute name the kill with
    the node's figures and threshold."""
    if cgroup_limited():
        pytest.skip("Ray's memory monitor measures this process's cgroup, not the node the test measures")
    used, total = node_memory()
    threshold = round((used + MARGIN_BYTES) / total, 2)
    if threshold > 0.9:
        pytest.skip(f"this node's memory is too full for a controlled kill (threshold would be {threshold})")
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2}},
                        method=NAME)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pointtune.cli", "sweep", NAME, "--space", str(space), "--trials", "1",
                           "--epochs", str(EPOCHS), "--workers", str(workers), "--output", str(out)],
                          cwd=REPO, env=hog_env(threshold, plugin_path), capture_output=True, text=True, timeout=scaled(600))
    assert proc.returncode in (0, 1), proc.stderr[-5000:]
    assert list(check_records(out, EPOCHS).values()) == ["FAILED"]
    (row,) = csv.DictReader((out / "summary.csv").open())
    _, runs = mlflow_runs(out)
    (run,) = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    (trial,) = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{out}/optuna.db").trials
    figures = rf"\(node \S+ used [\d.]+ of [\d.]+ GB, above its {re.escape(f'{threshold:g}')} threshold"
    kill = re.compile(rf"Ray's memory monitor.*{figures}")
    print(f"recorded: {row['error']}")
    for reason in (row["error"], run.data.tags["pointtune.failure"], trial.user_attrs["failure"]):
        assert kill.search(reason), reason
