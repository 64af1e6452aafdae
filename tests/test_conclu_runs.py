"""ConClu end to end: pretraining judged by the linear-SVM protocol on real ModelNet40 shapes, fine-tuning
from that run, and a 2-trial sweep with 2 Ray Train CPU workers per trial, all through the CLI."""

import csv

import optuna
import pytest

from helpers import mlflow_runs, pointtune

pytestmark = pytest.mark.slow

# A ConClu small enough for a CPU: PointNet-64 encoder, small heads, 128-point views.
TINY_CONCLU = [
    "--set", "method.backbone.name=pointnet", "--set", "method.backbone.emb_dims=64",
    "--set", "method.projector_hidden=64", "--set", "method.projection_dim=32", "--set", "method.predictor_hidden=32",
    "--set", "method.num_prototypes=8", "--set", "method.view_points=128", "--set", "data.num_points=256",
    "--set", "train.batch_size=32", "--set", "train.eval_batch_size=128",
]


def test_pretrain_on_modelnet40_sample_then_finetune(shared_data, tmp_path):
    out = tmp_path / "pretrain"
    proc = pointtune("train", "conclu", "--epochs", "2", "--no-progress", "--output", str(out),
                     "--dataset", "modelnet40", "--data-root", str(shared_data / "modelnet40_subset"),
                     "--set", "data.classes=[airplane,bathtub,bench]", *TINY_CONCLU)
    assert proc.returncode == 0, proc.stderr[-4000:]
    client, runs = mlflow_runs(out)
    history = client.get_metric_history(runs[0].info.run_id, "val/svm_acc")
    assert [m.step for m in history] == [1, 2] and all(0 <= m.value <= 1 for m in history)
    assert "test/svm_acc" in runs[0].data.metrics  # test accuracy only in the final report
    assert runs[0].data.metrics["train/con"] >= 0 and "train/swap" in runs[0].data.metrics

    tuned = tmp_path / "finetune"
    proc = pointtune("train", "finetune", "--from", str(out), "--epochs", "1", "--no-progress",
                     "--output", str(tuned), "--dataset", "modelnet40",
                     "--data-root", str(shared_data / "modelnet40_subset"), "--set", "data.classes=[airplane,bathtub,bench]",
                     "--set", "data.num_points=256", "--set", "train.batch_size=32")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "--from: method.pretrained = " in proc.stdout
    _, runs = mlflow_runs(tuned)
    assert runs[0].data.params["method.pretrained"] == str(tuned / "sources" / "pretrained")  # the run's own copy
    assert 0 <= runs[0].data.metrics["val/OA"] <= 1


def test_conclu_sweep_two_workers(tmp_path):
    """One trial of 2 Ray Train workers (test_sweep covers several data-parallel trials in a row)."""
    import yaml

    from conftest import REPO

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "extends": str(REPO / "search_spaces" / "conclu_quick.yaml"),
        "params": {"method.projector_hidden": {"type": "fixed", "value": 64},
                   "method.backbone.emb_dims": {"type": "fixed", "value": 64},
                   "data.synthetic_per_class": {"type": "fixed", "value": 16}},
    }))
    out = tmp_path / "sweep"
    proc = pointtune("sweep", "conclu", "--space", str(space), "--trials", "1", "--epochs", "2",
                     "--workers", "2", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["FINISHED"]
    client, runs = mlflow_runs(out)
    parent = next(r for r in runs if r.data.tags.get("pointtune.kind") == "sweep")
    assert parent.data.params["protocol"] == "linear_svm" and parent.data.params["objective"] == "max val/svm_acc"
    children = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    assert len(children) == 1
    for child in children:
        assert client.get_metric_history(child.info.run_id, "val/svm_acc")
    study = optuna.load_study(study_name="pointtune", storage=f"sqlite:///{out}/optuna.db")
    assert len(study.trials) == 1 and all("method.sinkhorn_epsilon" in t.params for t in study.trials)
