"""AMContrast3D end to end through the CLI on the real scene samples, as the README documents it: a small
PointNeXt trained on the ScanNet and S3DIS samples and judged by the scene_seg protocol (validation mIoU, the
renders of the best checkpoint in MLflow), the CE baseline, and a 2-trial sweep with 2 Ray Train CPU workers
(gloo) per trial, checked against what Tune received."""

import json

import pytest

from conftest import REPO
from helpers import check_records, mlflow_runs, pointtune, real

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
# PointNeXt-S of width 16 on 1024-point crops, 2 training items per scene and epoch, validation on the fixed
# crops: an epoch of the samples takes seconds.
TINY_AM = {"method.backbone.variant": "S", "method.backbone.width": 16, "method.backbone.nsample": 16,
           "method.k": 16, "method.stages": 2, "data.num_points": 1024, "data.loop": 2, "train.batch_size": 2,
           "train.eval_batch_size": 2, "protocol.val": "crops", "train.threads": 1}


def _sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _scenes(shared_data, name: str) -> list[str]:
    return ["--dataset", name, "--data-root", str(real(shared_data / f"{name}_subset"))]


def _epochs(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_on_scannet_judged_by_scene_mIoU_with_renders(shared_data, tmp_path):
    out = tmp_path / "run"
    proc = pointtune("train", "amcontrast3d", "--epochs", "2", *_scenes(shared_data, "scannet"), *_sets(TINY_AM),
                     "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 train (scene0000_01), 1 validation (scene0000_00)" in proc.stdout
    epochs = _epochs(out)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for epoch in epochs:
        assert 0 <= epoch["val/mIoU"] <= epoch["val/OA"] + 1 and 0 <= epoch["val/mAcc"] <= 1
        assert {"train/ce", "train/am_s0", "train/am_s1", "train/ambiguity_s1"} <= set(epoch)
        assert any(key.startswith("val/iou/") for key in epoch)           # the classes of the validation crop
    client, (run,) = mlflow_runs(out)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "best_checkpoint", "scenes"} <= artifacts
    renders = [a.path for a in client.list_artifacts(run.info.run_id, "scenes")]
    assert renders and all(p.endswith(".png") and "scene0000_00" in p for p in renders), renders


def test_ce_baseline_on_s3dis(shared_data, tmp_path):
    out = tmp_path / "run"
    proc = pointtune("train", "amcontrast3d", "--epochs", "1", *_scenes(shared_data, "s3dis"),
                     *_sets({**TINY_AM, "method.contrast": "false", "data.loop": 4}), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (epoch,) = _epochs(out)
    assert 0 <= epoch["val/mIoU"] <= 1 and "train/am_s0" not in epoch and epoch["train/loss"] == epoch["train/ce"]


def test_sweep_trial_with_two_workers(shared_data, tmp_path):
    """One trial of 2 Ray Train workers (test_sweep covers several data-parallel trials in a row)."""
    out = tmp_path / "sweep"
    fixed = {**{k: v for k, v in TINY_AM.items() if k not in ("method.k", "method.stages")}, "data.loop": 4}
    proc = pointtune("sweep", "amcontrast3d", "--space", str(REPO / "search_spaces" / "amcontrast3d_quick.yaml"),
                     "--trials", "1", "--epochs", "2", "--workers", "2", *_scenes(shared_data, "scannet"),
                     *_sets(fixed), "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert list(check_records(out, 2, metric="val/mIoU").values()) == ["FINISHED"]
