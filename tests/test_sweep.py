"""A 2-trial sweep with 2 Ray Train CPU workers per trial and ASHA, checked through what it leaves:
Tune results, the Optuna study, the MLflow parent/child runs, the summary, the plots and the best config."""

import csv

import optuna
import pytest

from helpers import mlflow_runs, pointtune, write_space
from pointtune.config import config_from_file

pytestmark = pytest.mark.slow
EPOCHS = 3


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    space = write_space(root / "space.yaml", {
        "optim.lr": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
        "method.use_eaa": {"type": "categorical", "choices": [True, False]},
        "method.ent_high": {"type": "float", "low": 1.3, "high": 3.0, "when": {"method.use_eaa": True}},
    })
    out = root / "run"
    proc = pointtune("sweep", "cedr", "--space", str(space), "--trials", "2", "--epochs", str(EPOCHS),
                     "--workers", "2", "--output", str(out), "--seed", "3")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_summary_and_best_config(sweep):
    out, proc = sweep
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 2 and len({r["trial_id"] for r in rows}) == 2
    for row in rows:
        assert row["status"] in ("FINISHED", "STOPPED")
        assert 1 <= int(row["epochs"]) <= EPOCHS  # ASHA: at least the grace period, at most max_t
        assert (row["status"] == "FINISHED") == (int(row["epochs"]) == EPOCHS)
    assert "best trial" in proc.stdout
    exp = config_from_file("cedr", out / "best_config.yaml")
    assert exp.train.epochs == EPOCHS and exp.method.backbone.name == "pointnet"
    assert (out / "optimization_history.png").stat().st_size > 1000


def test_optuna_study_persisted(sweep):
    out, _ = sweep
    study = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{out}/optuna.db")
    assert len(study.trials) == 2
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert 0.01 <= trial.params["optim.lr"] <= 0.2
        assert ("method.ent_high" in trial.params) == trial.params["method.use_eaa"]
        assert trial.intermediate_values  # per-epoch reports reached the study


def test_mlflow_parent_and_children(sweep):
    out, _ = sweep
    client, runs = mlflow_runs(out)
    parents = [r for r in runs if r.data.tags.get("pointtune.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 2 and len(runs) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["method"] == "cedr" and parent.data.params["dataset"] == "synthetic"
    assert parent.data.params["protocol"] == "classification"
    assert "pointtune.git_commit" in parent.data.tags and "best/val/OA" in parent.data.metrics
    rows = {r["trial_id"]: r for r in csv.DictReader((out / "summary.csv").open())}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        history = client.get_metric_history(child.info.run_id, "val/OA")
        row = rows[child.data.tags["pointtune.trial_id"]]
        assert [m.step for m in history] == list(range(1, int(row["epochs"]) + 1))  # rank 0 only, once per epoch
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "confusion_matrix.png", "best_checkpoint"} <= artifacts


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
