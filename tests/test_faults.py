"""Faults and bad input: a killed sweep is finished by `resume`; a NaN trial fails alone; bad input exits 2."""

import csv
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import REPO
from helpers import (check_records, kill_after_first_report, mlflow_runs, offending, pointtune, scaled, sweep_until_reported,
                     wait_until, write_space)


@pytest.mark.slow  # a CLI run each
@pytest.mark.parametrize("args,match", [
    (["sweep", "cedr", "--space", "{bad}"], "low 0.5 > high 0.1"),
    (["sweep", "cedr", "--dataset", "modelnet99"], "modelnet99"),
    (["sweep", "cedr", "--dataset", "modelnet40", "--data-root", "/nonexistent/mn40"], "/nonexistent/mn40"),
    (["train", "cedr", "--set", "method.temperature=-1"], "method.temperature"),
    (["train", "cedr", "--config", "/nonexistent/config.yaml"], "/nonexistent/config.yaml"),
    (["resume", "/nonexistent/sweep"], "not a pointtune sweep directory"),
    (["sweep", "cedr", "--workers", "4", "--gpus-per-worker", "1"], "GPUs, but the cluster has 0"),
])
def test_bad_input_exits_2_and_starts_nothing(tmp_path, args, match):
    bad = write_space(tmp_path / "bad.yaml", {"optim.lr": {"type": "float", "low": 0.5, "high": 0.1}})
    args = [str(bad) if a == "{bad}" else a for a in args]
    out = tmp_path / "out"
    if args[0] in ("train", "sweep"):
        args += ["--output", str(out)]
    proc = pointtune(*args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("pointtune: error:") and match in lines[-1]
    assert not (out / "tune").exists() and not (out / "checkpoints").exists()


@pytest.mark.slow  # a CLI run
def test_unknown_method_is_a_usage_error():
    proc = pointtune("sweep", "simclr")
    assert proc.returncode == 2 and "invalid choice: 'simclr'" in proc.stderr


@pytest.mark.slow
def test_nan_trial_fails_with_reason_others_finish(tmp_path):
    # λ = 1e39 overflows float32: the loss is inf from the first step.
    space = write_space(tmp_path / "nan.yaml", {"method.lambda_con": {"type": "categorical", "choices": [0.1, 1.0e39]}})
    out = tmp_path / "run"
    proc = pointtune("sweep", "cedr", "--space", str(space), "--trials", "3", "--epochs", "2", "--seed", "1",
                     "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    failed = [r for r in rows if r["status"] == "FAILED"]
    done = [r for r in rows if r["status"] != "FAILED"]
    assert failed and done, rows
    assert all("loss became inf" in r["error"] for r in failed)
    assert all(float(r["best_objective"]) >= 0 for r in done)
    _, runs = mlflow_runs(out)
    failed_runs = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed_runs) == len(failed)
    assert all("loss became inf" in r.data.tags["pointtune.failure"] for r in failed_runs)


@pytest.mark.slow
def test_killed_sweep_is_finished_by_resume(tmp_path):
    # Epochs of about a second (more clouds than TINY), so that the kill lands inside an epoch.
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
                                                  "data.synthetic_per_class": {"type": "fixed", "value": 96}})
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pointtune.cli", "sweep", "cedr", "--space", str(space), "--trials", "3",
           "--epochs", "3", "--output", str(out), "--max-concurrent", "1"]
    kill_after_first_report(cmd, out)
    assert not (out / "summary.csv").exists()

    resumed = pointtune("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 3 and len({r["trial_id"] for r in rows}) == 3
    assert all(r["status"] in ("FINISHED", "STOPPED") for r in rows)
    _, runs = mlflow_runs(out)
    parents = [r for r in runs if r.data.tags.get("pointtune.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    # A trial that started after Tune last saved its state cannot be resumed: its run is closed as LOST.
    lost = [c for c in children if c.data.tags.get("pointtune.status") == "LOST"]
    kept = [c for c in children if c not in lost]
    assert len(parents) == 1 and len(kept) == 3 and all(c.info.status == "KILLED" for c in lost)
    assert {c.data.tags["pointtune.trial_id"] for c in kept} == {r["trial_id"] for r in rows}
    assert all(c.info.status in ("FINISHED", "KILLED") for c in kept)
    study = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{out}/optuna.db")
    Done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert sum(t.state in Done for t in study.trials) == 3
    assert all(t.state in Done or "lost" in t.user_attrs for t in study.trials)
    check_records(out, 3)


@pytest.mark.slow
def test_ctrl_c_keeps_the_sweep_resumable_and_marks_nothing(tmp_path):
    """Issue 12: Ctrl-C (SIGINT to the driver's process group) after a trial's first epoch: exit 130 with the
    resume command, no summary or best config, the MLflow parent INTERRUPTED (not FINISHED), no trial marked
    FINISHED or STOPPED that did not end; `pointtune resume` then finishes every store consistently."""
    # Epochs of about half a second (more clouds than TINY) and 7 of them still to train after the first report,
    # so that the signal lands inside the sweep: with the tiny default, epochs of 0.2 s on a fast machine let the
    # whole sweep end before the signal arrived (exit 0).
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
                                                  "data.synthetic_per_class": {"type": "fixed", "value": 96}})
    out = tmp_path / "run"
    began = time.time()
    proc = sweep_until_reported([sys.executable, "-m", "pointtune.cli", "sweep", "cedr", "--space", str(space),
                                 "--trials", "2", "--epochs", "4", "--output", str(out), "--max-concurrent", "1"], out)
    reported = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=scaled(120))
    print(f"first report after {reported - began:.1f} s; stopped {time.time() - reported:.1f} s after SIGINT")
    assert proc.returncode == 130, stdout[-2000:] + stderr[-3000:]
    assert f"pointtune resume {out}" in stderr
    assert offending(stdout, stderr) == []  # the console contract: Tune's Ctrl-C notices included
    assert not (out / "summary.csv").exists() and not (out / "best_config.yaml").exists()
    _, runs = mlflow_runs(out)
    parent = next(r for r in runs if r.data.tags.get("pointtune.kind") == "sweep")
    assert parent.info.status == "RUNNING" and parent.data.tags["pointtune.status"] == "INTERRUPTED"
    results = [p for p in out.glob("tune/*/result.json")]
    ended = sum(1 for p in results if '"done": true' in p.read_text())
    children = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    assert sum(c.info.status in ("FINISHED", "KILLED") for c in children) <= ended
    study = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{out}/optuna.db")
    assert sum(t.state != optuna.trial.TrialState.RUNNING for t in study.trials) <= ended

    began = time.time()
    resumed = pointtune("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    print(f"resume took {time.time() - began:.1f} s")
    for noise in ("Trial status:", "result ─", "Reporting training result"):  # the sweep's quiet console too
        assert noise not in resumed.stdout + resumed.stderr, noise
    statuses = check_records(out, 4)
    assert len(statuses) == 2
    _, runs = mlflow_runs(out)
    parent = next(r for r in runs if r.data.tags.get("pointtune.kind") == "sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["pointtune.status"] == "FINISHED"   # issue 22 §4


def _train_workers(driver: int) -> list[int]:
    """PIDs of the live Ray Train worker processes (their title names ``RayTrainWorker``) that the process
    ``driver`` started (its descendants: other work on the machine may run Train workers too)."""
    from pathlib import Path

    from pointtune.reaper import descendants

    pids = []
    for pid in sorted(descendants({driver})):
        try:
            if b"RayTrainWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_killed_worker_fails_its_trial_with_the_cause_and_resume_finishes_it(tmp_path):
    """Issue 12: SIGKILL of one Ray Train worker fails that trial alone, with a reason that says what happened
    to the worker; after `resume` the trial finishes and every store says so (Optuna COMPLETE, MLflow FINISHED
    without the failure tag, which is kept as pointtune.failure.previous), epoch by epoch as Tune received it."""
    space = write_space(tmp_path / "space.yaml", {"optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
                                                  "data.synthetic_per_class": {"type": "fixed", "value": 96}})
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pointtune.cli", "sweep", "cedr", "--space", str(space), "--trials",
                             "1", "--epochs", "6", "--workers", "2", "--output", str(out)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    # Kill once the Train run has kept its first epoch's checkpoint (Tune's result.json is written in bulk).
    def checkpointed_workers() -> list[int]:
        assert proc.poll() is None, "the trial ended before a worker could be killed"
        workers = _train_workers(proc.pid)
        return workers if len(workers) == 2 and list(out.glob("train/*/checkpoint_*")) else []

    workers = wait_until(checkpointed_workers, "the Train run's first checkpoint with its 2 workers up", 300)
    os.kill(workers[-1], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=scaled(300))
    assert proc.returncode in (0, 1), stderr[-3000:]
    _, runs = mlflow_runs(out)
    (failed,) = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    assert failed.info.status == "FAILED", failed.data.tags
    reason = failed.data.tags["pointtune.failure"]
    assert "worker" in reason and not reason.rstrip().endswith("worker errors:"), reason

    resumed = pointtune("resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert check_records(out, 6) == {failed.data.tags["pointtune.trial_id"]: "FINISHED"}
    _, runs = mlflow_runs(out)
    (run,) = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    assert run.data.tags["pointtune.failure.previous"] == reason

