"""SCL end to end through the CLI on the real samples, as the README documents it: both stages in one command
on the ShapeNetPart sample judged by part-segmentation mIoU (cap, skateboard, table), and the same command
again trains nothing; stage 2 alone from a stage-1 run (`--from`) judged by linear SVM on the complete
ModelNet40 classes; and a 2-trial stage-2 sweep with 2 Ray Train CPU workers per trial that trains its one
stage-1 run first, checked against Tune."""

import json

import pytest
import yaml

from helpers import check_records, mlflow_runs, pointtune, real

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
CLASSES = "[airplane, bathtub, bench]"
# Narrow encoders over 256-point clouds: an epoch of the 20 sample shapes takes about a second per stage.
TINY_SCL = {"method.num_patches": 8, "method.patch_k": 8, "method.edgeconv_k": 10, "method.e1_widths": "[16,16]",
            "method.sim_dim": 8, "method.e2_widths": "[16,16,16]", "method.point_dim": 32, "data.num_points": 256,
            "train.batch_size": 8, "method.stage1.epochs": 1, "train.threads": 1}


def _sets(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _shapenetpart(shared_data, variant: str) -> list[str]:
    return ["--dataset", "shapenetpart", "--data-root", str(real(shared_data / "shapenetpart_subset")),
            "--set", f"data.variant={variant}"]


def _svm_on_modelnet40(shared_data) -> list[str]:
    root = real(shared_data / "modelnet40_subset")
    return ["--set", f"protocol.data={{name: modelnet40, root: {root}, classes: {CLASSES}, num_points: 256}}"]


def _epochs(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_both_stages_on_shapenetpart_judged_by_part_segmentation(shared_data, tmp_path):
    out = tmp_path / "run"
    seg = {"protocol.name": "part_seg", "protocol.epochs": 3, "protocol.fit_points": 128}
    proc = pointtune("train", "scl", "--epochs", "2", *_shapenetpart(shared_data, "split"), *_sets(TINY_SCL),
                     *_sets(seg), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "trains its stage1 run first" in proc.stdout
    estimates = [line for line in proc.stdout.splitlines() if line.startswith("[pointtune] memory: ~")]
    assert len(estimates) == 2 and estimates[0].endswith("[its stage1 run]"), estimates  # each run's, before training
    stage1, stage2 = _epochs(out / "stage1"), _epochs(out)
    assert [e["epoch"] for e in stage1] == [1] and [e["epoch"] for e in stage2] == [1, 2]
    assert 0 <= stage1[0]["train/sim_acc"] <= 1                  # stage 1: Eq. 4's pairs, judged too
    for epoch in stage2:
        assert 0 <= epoch["val/ins_miou"] <= 1 and 0 <= epoch["val/cls_miou"] <= 1
        assert {"val/iou/Cap", "train/neg_per_anchor", "sched/method.b_l", "sched/method.b_u"} <= set(epoch)
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["method"]["stage"] == 2 and config["method"]["stage1_from"] == str(out / "sources" / "stage1_from")
    assert "copied to" in proc.stdout and (out / "sources" / "stage1_from" / "state.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test"]["ins_miou"] <= 1 and {"iou/Cap", "iou/Table"} <= set(summary["test"]), summary
    # the same command again: both runs are complete, nothing trains twice
    again = pointtune("train", "scl", "--epochs", "2", *_shapenetpart(shared_data, "split"), *_sets(TINY_SCL),
                      *_sets(seg), "--output", str(out), "--no-progress")
    assert again.returncode == 0 and again.stdout.count("the run is complete") == 2, again.stdout[-3000:]
    assert len(_epochs(out / "stage1")) == 1 and len(_epochs(out)) == 2
    # --from a run that is not a stage-1 run: one line, nothing trained
    bad = pointtune("train", "scl", "--epochs", "1", "--from", str(out), *_sets(TINY_SCL),
                    "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "not an SCL stage-1 run" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_stage2_from_a_stage1_run_judged_by_svm_on_modelnet40(shared_data, tmp_path):
    first = tmp_path / "stage1"
    proc = pointtune("train", "scl", "--epochs", "1", "--set", "method.stage=1", *_shapenetpart(shared_data, "all"),
                     *_sets(TINY_SCL), *_svm_on_modelnet40(shared_data), "--output", str(first), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "stage2"
    proc = pointtune("train", "scl", "--epochs", "2", "--from", str(first), *_shapenetpart(shared_data, "all"),
                     *_sets(TINY_SCL), *_svm_on_modelnet40(shared_data), "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "judged on protocol.data modelnet40 val:" in proc.stdout and not (out / "stage1").exists()
    epochs = _epochs(out)
    assert [e["epoch"] for e in epochs] == [1, 2] and all(1 / 3 <= e["val/svm_acc"] <= 1 for e in epochs)
    client, runs = mlflow_runs(out)
    (run,) = runs
    assert run.data.params["method.stage1_from"] == str(out / "sources" / "stage1_from")  # the run's own copy
    assert {"feature_spectrum.png", "config.yaml"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_two_trial_stage2_sweep_with_two_workers_trains_one_stage1_run(shared_data, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"method": "scl", "objective": {"metric": "val/svm_acc", "mode": "max"},
                                     "params": {
        **{k: {"type": "fixed", "value": yaml.safe_load(str(v))} for k, v in TINY_SCL.items()},
        "method.temperature": {"type": "categorical", "choices": [0.07, 0.2]},
        "method.b_l.warmup_epochs": {"type": "float", "low": 0.0, "high": 0.5},
        "method.b_u.warmup_epochs": {"type": "same", "as": "method.b_l.warmup_epochs"},
    }}))
    out = tmp_path / "sweep"
    proc = pointtune("sweep", "scl", "--space", str(space), "--trials", "2", "--epochs", "2", "--workers", "2",
                     *_shapenetpart(shared_data, "all"), *_svm_on_modelnet40(shared_data), "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.stdout.count("training it once in") == 1
    stage1 = str((out / "stage1").resolve())
    assert [e["epoch"] for e in _epochs(out / "stage1")] == [1]
    statuses = check_records(out, 2, metric="val/svm_acc")
    assert len(statuses) == 2 and set(statuses.values()) <= {"FINISHED", "STOPPED"}
    _, runs = mlflow_runs(out)
    (parent,) = [r for r in runs if r.data.tags.get("pointtune.kind") == "sweep"]
    assert parent.data.params["prerequisite/stage1"] == stage1
    trials = [r for r in runs if r.data.tags.get("pointtune.kind") == "trial"]
    copy = str((out / "sources" / "stage1_from").resolve())   # the sweep's copy of its stage-1 run's checkpoint
    assert len(trials) == 2 and {r.data.params["method.stage1_from"] for r in trials} == {copy}
    for run in trials:   # the tied keys follow their source
        assert run.data.params["method.b_u.warmup_epochs"] == run.data.params["method.b_l.warmup_epochs"]
