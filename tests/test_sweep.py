"""Sweeps checked through what they leave, against what Tune received, epoch by epoch: a 4-trial sweep of
single-process trials (ASHA stops some) and a 3-trial sweep with 2 Ray Train CPU workers per trial, run beside
an unrelated Ray instance."""

import csv
import re

import pytest
import yaml

from helpers import check_records, mlflow_runs, offending, pointtune, start_other_ray, stop_ray_instance, write_space
from pointtune.config import config_from_file

pytestmark = pytest.mark.slow
EPOCHS = 3


def _space(root):
    return write_space(root / "space.yaml", {
        "optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
        "method.use_eaa": {"type": "categorical", "choices": [True, False]},
        "method.ent_high": {"type": "float", "low": 1.3, "high": 3.0, "when": {"method.use_eaa": True}},
    })


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Single-process trials: 4 trials, 2 at once, ASHA with a grace period of 1 epoch."""
    root = tmp_path_factory.mktemp("sweep")
    out = root / "run"
    proc = pointtune("sweep", "cedr", "--space", str(_space(root)), "--trials", "4", "--epochs", str(EPOCHS),
                     "--output", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


@pytest.fixture(scope="module")
def parallel_sweep(tmp_path_factory):
    """Data-parallel trials: 3 trials of 2 Ray Train workers each, one at a time (ASHA stops the weak),
    checkpoints in a separate --storage, while an unrelated Ray instance runs on the machine (Ray hygiene:
    Train's placement-group cleaner must find THIS sweep's cluster to free the workers of a trial that ASHA
    stops; before that fix it found two instances and the next trial hung)."""
    root = tmp_path_factory.mktemp("sweep2w")
    other = start_other_ray(root)
    try:
        out = root / "run"
        proc = pointtune("sweep", "cedr", "--space", str(_space(root)), "--trials", "3", "--epochs", "2",
                         "--workers", "2", "--output", str(out), "--seed", "0", "--storage", str(root / "storage"),
                         timeout=420)
    finally:
        stop_ray_instance(other)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # The other instance (1 CPU) could not have hosted a driver plus two workers: the sweep ran on its own.
    assert "2 Ray Train workers of 0.95 CPU" in proc.stdout, proc.stdout[:2000]
    return out, proc


def test_records_equal_what_tune_received(sweep):
    out, proc = sweep
    statuses = check_records(out, EPOCHS)
    assert len(statuses) == 4 and "FINISHED" in statuses.values()
    assert "trials:" in proc.stdout and "stopped early by ASHA" in proc.stdout


def test_data_parallel_records_equal_what_tune_received(parallel_sweep):
    out, _ = parallel_sweep
    storage = out.parent / "storage" / out.name  # <storage>/<sweep dir name>
    statuses = check_records(out, 2, tune_dir=storage / "tune")
    assert len(statuses) == 3 and set(statuses.values()) <= {"FINISHED", "STOPPED"}
    assert list(storage.glob("train/trial_*/checkpoint_*/state.pt"))  # kept by Ray Train in the storage
    client, runs = mlflow_runs(out)
    for child in (r for r in runs if r.data.tags.get("pointtune.kind") == "trial"):
        assert "best_checkpoint" in {a.path for a in client.list_artifacts(child.info.run_id)}


def test_summary_and_best_config(sweep):
    out, proc = sweep
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    for row in rows:
        assert 1 <= int(row["epochs"]) <= EPOCHS  # ASHA: at least the grace period, at most max_t
        assert (row["status"] == "FINISHED") == (int(row["epochs"]) == EPOCHS)
        assert not any(k.startswith("test/") for k in row)  # test metrics never sit beside what ranks trials
    assert "best trial" in proc.stdout and "best run: http://127.0.0.1:5000/#/experiments/" in proc.stdout
    assert "workflowType=machine_learning" in proc.stdout and "optuna-dashboard sqlite:///" in proc.stdout
    exp = config_from_file("cedr", out / "best_config.yaml")
    assert exp.train.epochs == EPOCHS and exp.method.backbone.name == "pointnet"
    assert (out / "optimization_history.png").stat().st_size > 1000


@pytest.mark.parametrize("which, trials", [("sweep", 4), ("parallel_sweep", 3)])
def test_sweep_prints_only_its_own_lines(which, trials, request):
    """The console contract (test_console): every line is pointtune's, Tune's status box, a table or blank;
    each trial's lines once (not echoed by Ray Train too) and before the summary (Ray's deduplication held one
    trial's back until shutdown)."""
    _, proc = request.getfixturevalue(which)
    assert offending(proc.stdout, proc.stderr) == []
    lines = proc.stdout.splitlines()
    started = [line for line in lines if re.fullmatch(r"\[pointtune\] trial \S+ started .*", line)]
    assert len(started) == trials and "== Status ==" in lines
    summary = next(i for i, line in enumerate(lines) if line.startswith(f"[pointtune] {trials} trials:"))
    assert sum("[pointtune] data synthetic train" in line for line in lines[:summary]) == trials
    epoch_lines = [line for line in lines if "[pointtune] epoch 1/" in line]
    assert len(epoch_lines) == len(set(epoch_lines))


def test_mlflow_parent_and_children(sweep):
    out, _ = sweep
    client, runs = mlflow_runs(out)
    parents = [r for r in runs if r.data.tags.get("pointtune.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["method"] == "cedr" and parent.data.params["dataset"] == "synthetic"
    assert parent.data.params["protocol"] == "classification"
    assert "pointtune.git_commit" in parent.data.tags and "best/val/OA" in parent.data.metrics
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # runs table, not GenAI
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "optim.lr.start" in child.data.params and "train.epochs" in child.data.params
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "confusion_matrix.png", "best_checkpoint"} <= artifacts


def test_moved_sweep_directory_keeps_its_artifacts(sweep, tmp_path):
    import shutil

    from mlflow.tracking import MlflowClient

    from pointtune.tracking import relocate_store

    src, _ = sweep
    moved = tmp_path / "elsewhere" / "sweep"
    shutil.copytree(src, moved)
    assert relocate_store(moved) > 0
    assert relocate_store(moved) == 0  # idempotent
    client = MlflowClient(tracking_uri=f"sqlite:///{moved}/mlflow.db")
    run = next(r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
               if r.data.tags.get("pointtune.kind") == "trial")
    assert run.info.artifact_uri.startswith((moved / "mlartifacts").as_uri())
    local = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert "method:" in open(local).read()


def test_best_command_writes_trainable_config(sweep, tmp_path):
    out, _ = sweep
    target = tmp_path / "best.yaml"
    proc = pointtune("best", str(out), "--output", str(target))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best trial" in proc.stdout
    assert config_from_file("cedr", target).method.name == "cedr"


def test_finetune_from_sweep_resolves_best_checkpoint(sweep):
    from pointtune.search.best import resolve_checkpoint
    from pointtune.train.checkpoint import load_state

    out, _ = sweep
    ckpt = resolve_checkpoint(out)
    rows = sorted(csv.DictReader((out / "summary.csv").open()), key=lambda r: -float(r["best_objective"]))
    assert ckpt.parent.name == f"trial_{rows[0]['trial_id']}"
    assert load_state(ckpt)["metrics"]["val/OA"] == pytest.approx(float(rows[0]["best_objective"]))


def test_best_config_retrains_to_the_same_numbers(sweep, tmp_path):
    # `pointtune train --config best_config.yaml` of the 4-trial sweep, with the same seed: the same per-epoch
    # validation metrics as the best trial (the thread count the trial used is part of the recorded config;
    # a trial ASHA stopped early matches the retrained run's first epochs).
    sweep_dir, _ = sweep
    run_dir = tmp_path / "retrain"
    exp = config_from_file("cedr", sweep_dir / "best_config.yaml")
    assert exp.train.threads == 1  # 2 trials at once on 2 CPUs; a local run would take every core
    proc = pointtune("train", "cedr", "--config", str(sweep_dir / "best_config.yaml"), "--output", str(run_dir),
                     "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep_client, sweep_runs = mlflow_runs(sweep_dir)
    (parent,) = [r for r in sweep_runs if r.data.tags.get("pointtune.kind") == "sweep"]
    trial_id = parent.data.tags["pointtune.best_trial"]
    child = next(r for r in sweep_runs if r.data.tags.get("pointtune.trial_id") == trial_id)
    client, runs = mlflow_runs(run_dir)
    for key in ("train/loss", "val/OA"):  # train/loss differs in the last digits with another thread count
        retrained = [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.step)]
        swept = [m.value for m in sorted(sweep_client.get_metric_history(child.info.run_id, key), key=lambda m: m.step)]
        assert len(retrained) == EPOCHS and swept and retrained[:len(swept)] == swept, key


def test_memory_no_node_has_is_refused_in_one_line(tmp_path):
    """--memory-per-worker larger than any node's memory: one line naming the request and the nodes, exit 2,
    no trial (Ray started to see the nodes)."""
    proc = pointtune("sweep", "cedr", "--space", str(_space(tmp_path)), "--trials", "1", "--epochs", "1",
                     "--memory-per-worker", "100000", "--output", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pointtune: error: one trial needs") and "'memory': 100000000000000.0" in last and " GB" in last, last
    assert not (tmp_path / "run" / "summary.csv").exists()


def test_sweep_without_early_stopping_and_another_sampler(tmp_path):
    """``--scheduler none --sampler random``: every trial trains all its epochs, Optuna records them COMPLETE,
    the records agree with Tune, and the parent run names the scheduler and sampler."""
    import optuna

    out = tmp_path / "run"
    proc = pointtune("sweep", "cedr", "--space", str(_space(tmp_path)), "--trials", "3", "--epochs", "2",
                     "--scheduler", "none", "--sampler", "random", "--seed", "5", "--output", str(out),
                     "--memory-per-worker", "0.5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # memory planned like CPUs: preflight's estimate printed, every trial's bundle holds 0.5 GB of Ray's memory
    assert "[pointtune] memory: ~" in proc.stdout and "GB per worker at train.batch_size" in proc.stdout
    runtime = yaml.safe_load((out / "runtime.yaml").read_text())
    assert runtime["resources"]["memory_per_worker"] == 0.5e9
    statuses = check_records(out, 2)
    assert list(statuses.values()) == ["FINISHED"] * 3
    assert "stopped early" not in proc.stdout and "3 trials: 3 finished, 0 failed" in proc.stdout
    study = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{out / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    _, runs = mlflow_runs(out)
    parent = next(r for r in runs if r.data.tags.get("pointtune.kind") == "sweep")
    assert (parent.data.params["scheduler"], parent.data.params["sampler"]) == ("none", "random")
