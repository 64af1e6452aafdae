"""DCGLR end to end through the CLI, as the README documents it: pretrained on the ShapeNetPart sample's
points (`data.variant=all`) and judged by linear SVM on the complete ModelNet40 classes (`protocol.data`),
and a sweep trial of a tiny PCT on 2 Ray Train CPU workers, checked against what Tune received."""

import json

import pytest

import yaml

from helpers import check_records, mlflow_runs, pointtune, real

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
CLASSES = "[airplane, bathtub, bench]"
# A one-block 3D-ViT of width 32 over 256-point clouds: an epoch of the 18 sample shapes takes seconds.
TINY_DCGLR = {"method.backbone.dim": 32, "method.backbone.depth": 1, "method.backbone.heads": 2,
              "method.backbone.k": 16, "method.proj_hidden": 64, "method.proj_bottleneck": 32, "method.out_dim": 64,
              "method.n_local_crops": 2, "method.n_multires": 1, "data.num_points": 256, "train.batch_size": 8,
              "optim.lr.warmup_epochs": 0}

# The same with a tiny PCT (Guo et al. 2021) in place of the 3D-ViT.
TINY_DCGLR_PCT = {**{k: v for k, v in TINY_DCGLR.items() if not k.startswith("method.backbone.")},
                  "method.backbone.name": "pct", "method.backbone.channels": 16, "method.backbone.emb_dims": 24,
                  "method.backbone.nsample": 8}


def _sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _judged_on(shared_data) -> str:
    root = real(shared_data / "modelnet40_subset")
    return f"protocol.data={{name: modelnet40, root: {root}, classes: {CLASSES}, num_points: 256}}"


def test_pretrain_on_shapenetpart_judged_by_svm_on_modelnet40(shared_data, tmp_path):
    out = tmp_path / "run"
    proc = pointtune("train", "dcglr", "--epochs", "2", "--dataset", "shapenetpart",
                     "--data-root", str(real(shared_data / "shapenetpart_subset")), "--set", "data.variant=all",
                     "--set", _judged_on(shared_data), *_sets(TINY_DCGLR), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data shapenetpart train: 18 clouds" in proc.stdout and "data shapenetpart test: 0 clouds" in proc.stdout
    assert "judged on protocol.data modelnet40 val:" in proc.stdout
    assert "no validation cloud" not in proc.stdout   # the pretraining data's classes are not judged
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(0 < e["val/svm_acc"] <= 1 and e["val/feature_rank"] >= 1 for e in epochs)
    assert all(e["sched/method.teacher_momentum"] >= 0.996 for e in epochs)
    client, runs = mlflow_runs(out)   # the best checkpoint's plots, as a sweep trial's
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"feature_spectrum.png", "confusion_matrix.png", "config.yaml", "best_checkpoint"} <= artifacts
    summary = json.loads((out / "summary.json").read_text())
    assert 1 / 3 <= summary["test"]["svm_acc"] <= 1 and summary["test"]["epoch"] == summary["best_epoch"], summary


def test_sweep_trial_with_two_workers(shared_data, tmp_path):
    """One trial of 2 Ray Train workers (test_sweep covers several data-parallel trials in a row), with a
    tiny PCT as the backbone: also PCT's two-worker data-parallel run (issue 20)."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"method": "dcglr", "params": {
        **{k: {"type": "fixed", "value": v} for k, v in TINY_DCGLR_PCT.items()},
        "method.teacher_momentum.start": {"type": "float", "low": 0.99, "high": 0.9995},
        "method.student_temperature": {"type": "categorical", "choices": [0.1, 0.2]},
    }}))
    out = tmp_path / "run"
    proc = pointtune("sweep", "dcglr", "--space", str(space), "--trials", "1", "--epochs", "2", "--workers", "2",
                     "--dataset", "shapenetpart", "--data-root", str(real(shared_data / "shapenetpart_subset")),
                     "--set", "data.variant=all", "--set", _judged_on(shared_data), "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert list(check_records(out, 2, metric="val/svm_acc").values()) == ["FINISHED"]
