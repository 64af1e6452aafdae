"""Robustness protocol (SCL Figs. 3-4, 8; issue 9 §3): a tiny ConClu run judged by its linear SVM on clean clouds,
under Gaussian jitter and under random subsampling; the table, the plot, MLflow, and bad arguments."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from helpers import mlflow_runs

# A ConClu that trains an epoch in a few seconds on the synthetic dataset (128-point clouds), one SVM C.
TINY_CONCLU = {
    "method.backbone.name": "pointnet", "method.backbone.emb_dims": 32, "method.projector_hidden": 32,
    "method.projection_dim": 16, "method.predictor_hidden": 16, "method.num_prototypes": 8,
    "method.view_points": 64, "data.num_points": 128, "data.synthetic_per_class": 8,
    "train.batch_size": 16, "train.eval_batch_size": 128, "train.epochs": 1, "protocol.c": 1.0,
}


@pytest.fixture(scope="module")
def conclu_run(tmp_path_factory):
    """A 1-epoch ConClu run directory, trained in this process (local mode)."""
    from pointtune.config import config_from_file
    from pointtune.train.launch import train

    run_dir = tmp_path_factory.mktemp("robust") / "conclu-run"
    exp = config_from_file("conclu", None, [f"{k}={v}" for k, v in TINY_CONCLU.items()])
    train(exp, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def loaded(conclu_run):
    from pointtune.train.load import load_method

    return load_method(conclu_run)


def _recording(method, calls: list):
    """Wrap ``method.embed`` so that every batch it sees is recorded as ``(points (B, N, 3), features (B, D))``."""
    original = method.embed

    def embed(batch):
        out = original(batch)
        calls.append((batch["points"].detach().clone(), out.detach().clone()))
        return out

    method.embed = embed
    return original


def test_table_clean_row_is_the_protocol_and_perturbations_reach_the_method(loaded, conclu_run):
    from pointtune.protocols import build_eval_splits, evaluate
    from pointtune.protocols.robustness import robustness_table

    exp = loaded.experiment
    splits = build_eval_splits(exp)
    reference, _ = evaluate(loaded.method, {"fit": splits.fit, "eval": splits.test}, torch.device("cpu"),
                            splits.class_names, exp.protocol, batch_size=exp.train.eval_batch_size)
    calls, marks = [], []
    original = _recording(loaded.method, calls)
    try:
        rows = robustness_table(loaded, [0.02], [64, 256], seed=3, splits=splits,
                                log=lambda line: marks.append((line, len(calls))))
    finally:
        loaded.method.embed = original
    assert [r.perturbation.name for r in rows] == ["clean", "jitter_0.02", "points_64", "points_256"]
    clean, jitter, sparse, skipped = rows
    # The clean row is the run's protocol on the same checkpoint and splits, exactly (and the run's own test score).
    assert clean.metrics == {k: v for k, v in reference.items() if k in clean.metrics}
    assert {"svm_acc", "svm_mAcc", "svm_F1", "feature_rank"} <= set(clean.metrics)
    import json

    assert clean.metrics["svm_acc"] == json.loads((conclu_run / "summary.json").read_text())["test"]["svm_acc"]
    assert skipped.metrics == {} and skipped.points is None and "128 points, fewer than 256" in skipped.note

    # What embed saw, row by row (the log line of a row is written after its evaluation).
    ends = [n for _, n in marks]
    seen = {name: calls[a:b] for name, a, b in zip(["clean", "jitter", "points"], [0, *ends[:2]], ends[:3])}
    n_fit, n_test = len(splits.fit), len(splits.test)
    for name, batches in seen.items():
        assert sum(p.shape[0] for p, _ in batches) == n_fit + n_test, name  # both splits, every cloud
    assert {p.shape[1] for p, _ in seen["clean"]} == {128} == {p.shape[1] for p, _ in seen["jitter"]}
    assert {p.shape[1] for p, _ in seen["points"]} == {64} and sparse.points == 64
    clean_pts, clean_feats = (torch.cat(x) for x in zip(*seen["clean"]))
    jit_pts, jit_feats = (torch.cat(x) for x in zip(*seen["jitter"]))
    noise = jit_pts - clean_pts
    assert 0.015 < noise.std().item() < 0.025 and abs(noise.mean().item()) < 0.003  # N(0, 0.02^2) per coordinate
    assert not torch.allclose(jit_feats, clean_feats)  # the features really change
    # Subsampled clouds are subsets of the clean clouds (random rows, no renormalisation).
    sub_pts = torch.cat([p for p, _ in seen["points"]])
    for i in (0, n_fit, n_fit + n_test - 1):
        dist = torch.cdist(sub_pts[i], clean_pts[i], compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
        assert dist.max().item() < 1e-6
    assert 0 <= jitter.metrics["svm_acc"] <= 1 and 0 <= sparse.metrics["svm_acc"] <= 1


def test_perturbation_streams_are_seeded_unclipped_and_shared_between_levels(loaded):
    from pointtune.protocols import build_eval_splits
    from pointtune.protocols.robustness import Perturbation, perturb_dataset

    test = build_eval_splits(loaded.experiment).test
    clean = test[5]["points"]

    def noise(sigma, seed=0, stream="eval"):
        return perturb_dataset(test, Perturbation("jitter", sigma), seed, stream)[5]["points"] - clean

    assert torch.equal(noise(0.01), noise(0.01))  # the same every time
    assert torch.allclose(noise(0.04), 4 * noise(0.01), atol=1e-5)  # one stream for every sigma
    assert not torch.allclose(noise(0.01, seed=1), noise(0.01))
    assert not torch.allclose(noise(0.01, stream="fit"), noise(0.01))
    assert noise(1.0).abs().max() > 0.5  # not PointNet's clip at 0.05
    idx = perturb_dataset(test, Perturbation("points", 32), 0)[5]["points"]
    assert idx.shape == (32, 3) and perturb_dataset(test, Perturbation("clean"), 0) is test


def test_cli_writes_table_and_plot_and_logs_to_mlflow(conclu_run, capsys):
    from pointtune.cli import main

    assert main(["robustness", str(conclu_run), "--jitter", "0.01,0.05", "--points", "96,64,512"]) == 0
    out = capsys.readouterr().out
    assert "logged to MLflow run" in out and "points_512: skipped" in out
    rows = list(csv.DictReader((conclu_run / "robustness.csv").open()))
    assert [(r["perturbation"], r["level"]) for r in rows] == [
        ("clean", ""), ("jitter", "0.01"), ("jitter", "0.05"), ("points", "96"), ("points", "64"), ("points", "512")]
    assert [r["points"] for r in rows] == ["128", "128", "128", "96", "64", ""]
    assert all(0 <= float(r["svm_acc"]) <= 1 and r["svm_mAcc"] and r["note"] == "" for r in rows[:5])
    assert rows[-1]["svm_acc"] == "" and "fewer than 512" in rows[-1]["note"]
    assert (conclu_run / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client, runs = mlflow_runs(conclu_run)
    (run,) = runs
    metrics = run.data.metrics
    for name in ("clean", "jitter_0.01", "jitter_0.05", "points_96", "points_64"):
        assert math.isclose(metrics[f"robust/{name}/svm_acc"], float(rows[[
            "clean", "jitter_0.01", "jitter_0.05", "points_96", "points_64"].index(name)]["svm_acc"]))
    assert "robust/points_512/svm_acc" not in metrics and "robust/clean/svm_mAcc" in metrics
    assert {"robustness.csv", "robustness.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # --output elsewhere, files only.
    other = conclu_run.parent / "elsewhere"
    assert main(["robustness", str(conclu_run / "checkpoints" / "best"), "--jitter", "", "--points", "64",
                 "--output", str(other), "--no-mlflow"]) == 0
    assert [r["perturbation"] for r in csv.DictReader((other / "robustness.csv").open())] == ["clean", "points"]
    assert (other / "robustness.png").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["--jitter=-0.01"], "--jitter: sigma must be a finite number >= 0"),
    (["--jitter", "0.01,abc"], "--jitter: 'abc' is not a number"),
    (["--points", "512,0"], "--points: the number of points must be an integer >= 1"),
    (["--points", "1.5"], "--points: '1.5' is not an integer"),
    (["--seed=-1"], "--seed: must be an integer >= 0"),
])
def test_cli_bad_arguments_are_one_line_errors(conclu_run, capsys, args, fragment):
    from pointtune.cli import main

    assert main(["robustness", str(conclu_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pointtune: error: ") and "\n" not in err and fragment in err, err


def test_cli_not_a_run_dir(tmp_path, capsys):
    from pointtune.cli import main

    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["robustness", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pointtune: error: ") and "\n" not in err and str(path) in err, err
    assert not (tmp_path / "empty" / "robustness.csv").exists()


def test_supervised_method_is_judged_by_its_classifier():
    # A classification method falls out of the same machinery: its own classifier on perturbed clouds (only the
    # scored split: the classification protocol fits nothing).
    from conftest import TINY

    from pointtune.config import config_from_file
    from pointtune.protocols import build_eval_splits
    from pointtune.protocols.robustness import robustness_table
    from pointtune.train.load import LoadedCheckpoint

    exp = config_from_file("cedr", None, [f"{k}={v}" for k, v in TINY.items()])
    splits = build_eval_splits(exp)
    torch.manual_seed(0)
    method = exp.method_cls(exp.method, splits.num_classes, exp.train.epochs).eval()
    rows = robustness_table(LoadedCheckpoint(method, exp, splits.class_names, 0, {}, "untrained"), [0.05], [64],
                            log=None, splits=splits)
    assert [r.perturbation.name for r in rows] == ["clean", "jitter_0.05", "points_64"]
    assert all({"OA", "mAcc", "F1"} <= set(r.metrics) and 0 <= r.metrics["OA"] <= 1 for r in rows)
    assert rows[2].points == 64 and not np.isnan(rows[1].metrics["mAcc"])


def test_checkpoint_owners(tmp_path):
    # Which run a checkpoint belongs to (where its MLflow run is looked up): local run, data-parallel run, trial.
    from pointtune.layout import run_of, trial_of
    from pointtune.robustness_run import find_mlflow_run

    run, ddp, sweep = tmp_path / "run", tmp_path / "ddp", tmp_path / "sweep"
    for d in (run / "checkpoints" / "best", ddp / "train" / "checkpoint_000001",
              sweep / "tune" / "trial_ab12" / "checkpoint_000000", sweep / "train" / "trial_cd34" / "checkpoint_1"):
        d.mkdir(parents=True)
    for f in (run / "config.yaml", ddp / "config.yaml", sweep / "sweep.yaml"):
        f.write_text("{}")
    assert run_of(run / "checkpoints" / "best") == run and trial_of(run / "checkpoints" / "best") is None
    assert run_of(ddp / "train" / "checkpoint_000001") == ddp
    assert trial_of(sweep / "tune" / "trial_ab12" / "checkpoint_000000") == (sweep, "ab12")
    assert trial_of(sweep / "train" / "trial_cd34" / "checkpoint_1") == (sweep, "cd34")
    assert run_of(tmp_path) is None and trial_of(tmp_path) is None
    # No store in the run directory: nothing is created, the reason is given.
    target, why = find_mlflow_run(run / "checkpoints" / "best", method="conclu")
    assert target is None and "no MLflow store" in why and not (run / "mlflow.db").exists()
