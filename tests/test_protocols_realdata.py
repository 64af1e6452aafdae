"""The feature protocols on a ConClu encoder and real shapes (../shared/data; skipped only where it is absent):

* ConClu pretrained on the ModelNet40 sample's complete classes (airplane, bathtub, bench), judged during
  training by few-shot (3-way, 10/20-shot, 10 folds, 20 queries per class) and afterwards by the linear SVM
  with C cross-validated on the training features;
* ConClu pretrained on ShapeNetPart points (the 20-shape sample, labels unused) and judged by the linear SVM
  on ModelNet40 through ``protocol.data``.

Both run the shared loop in this process (no Ray). The figures are printed (``pytest -s``).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from pointtune.config import build_config
from pointtune.data import dataset_names, read_shapenetpart_txt, register_dataset
from pointtune.protocols import LinearSVMConfig, build_eval_splits, evaluate
from pointtune.train.checkpoint import load_state
from pointtune.train.loop import LoopConfig, run_loop

from helpers import real
from test_loop import Recorder

pytestmark = [pytest.mark.realdata, pytest.mark.slow]  # each trains ConClu for a minute or more

# ConClu small enough for a CPU (tests/test_conclu_runs.py's TINY_CONCLU): PointNet-64 encoder, small heads.
TINY_CONCLU = {
    "method.backbone.name": "pointnet", "method.backbone.emb_dims": 64, "method.projector_hidden": 64,
    "method.projection_dim": 32, "method.predictor_hidden": 32, "method.num_prototypes": 8,
    "method.view_points": 128, "data.num_points": 256, "train.batch_size": 32, "train.eval_batch_size": 128,
}
CLASSES = ["airplane", "bathtub", "bench"]

# The pointtune ShapeNetPart sample ships no official split lists, which the ``shapenetpart`` dataset needs
# (it trains on train + val and tests on test). Pretraining uses no labels and no split, so this test reads
# every shape of the sample (``read_shapenetpart_txt(root, 'all')``) through a loader of its own.
SHAPENETPART_POINTS = "shapenetpart_points_all"
if SHAPENETPART_POINTS not in dataset_names():
    @register_dataset(SHAPENETPART_POINTS)
    def _shapenetpart_points(cfg):
        """Every ShapeNetPart shape under ``cfg.root`` as the training split (test: the same shapes, unused:
        the protocol judges on ``protocol.data``)."""
        shapes = read_shapenetpart_txt(Path(cfg.root), "all", max(cfg.num_points, 2048))
        return shapes, shapes


def _modelnet40(shared_data: Path, **extra) -> dict:
    return {"name": "modelnet40", "root": str(shared_data / "modelnet40_subset"), "classes": CLASSES,
            "num_points": 256, **extra}


def test_conclu_few_shot_during_training_then_linear_svm(shared_data, tmp_path):
    modelnet = real(shared_data / "modelnet40_subset")
    # val_fraction 0.2: bathtub (106 training shapes) keeps 21 validation shapes, enough for 20 queries
    exp = build_config("conclu", overrides={
        **TINY_CONCLU, "train.epochs": 1, "data.name": "modelnet40", "data.root": str(modelnet),
        "data.classes": CLASSES, "data.val_fraction": 0.2,
        "protocol.name": "few_shot", "protocol.ways": [3], "protocol.shots": [10, 20], "protocol.folds": 10,
        "protocol.queries": 20, "protocol.seed": 0,
    })
    session = Recorder()
    run_loop(LoopConfig(exp, "val/fewshot/3way10shot", "max", local_dir=str(tmp_path / "ckpt")), session)
    last = session.reports[-1][0]
    for split in ("val", "test"):
        for shot in (10, 20):
            mean, std = last[f"{split}/fewshot/3way{shot}shot"], last[f"{split}/fewshot/3way{shot}shot_std"]
            assert 1 / 3 < mean <= 1 and 0 <= std < 0.5
            print(f"\n[few-shot] ConClu, {split}: 3-way {shot}-shot, 10 folds x 20 queries: "
                  f"{100 * mean:.1f} ± {100 * std:.1f} %", end="")

    # the same encoder, judged by the linear SVM (C cross-validated on the training features)
    state = load_state(tmp_path / "ckpt" / "latest")
    judged = build_eval_splits(exp)
    method = exp.method_cls(exp.method, judged.num_classes, exp.train.epochs)
    method.load_state_dict(state["model"])
    random_init = exp.method_cls(exp.method, judged.num_classes, exp.train.epochs)
    svm = LinearSVMConfig(name="linear_svm", seed=exp.protocol.seed)
    for split, scored in (("val", judged.val), ("test", judged.test)):
        scores, cm = evaluate(method, {"fit": judged.fit, "eval": scored}, torch.device("cpu"), judged.class_names,
                              svm, batch_size=128)
        baseline, _ = evaluate(random_init, {"fit": judged.fit, "eval": scored}, torch.device("cpu"),
                               judged.class_names, svm, batch_size=128)
        assert scores["svm_acc"] > 1 / 3 and scores["svm_C"] in (0.01, 0.1, 1.0, 10.0)
        assert scores["svm_converged"] in (0.0, 1.0) and cm.sum() == len(scored)
        print(f"\n[linear SVM] ConClu (1 epoch), {split} ({len(scored)} shapes): "
              f"svm_acc {100 * scores['svm_acc']:.1f} % "
              f"(mAcc {100 * scores['svm_mAcc']:.1f} %), C = {scores['svm_C']:g} by 5-fold CV, converged "
              f"{bool(scores['svm_converged'])}; random init: {100 * baseline['svm_acc']:.1f} % "
              f"(C = {baseline['svm_C']:g})", end="")
    print()


def test_pretrain_on_shapenetpart_judged_on_modelnet40(shared_data, tmp_path):
    shapenet = real(shared_data / "shapenetpart_subset")
    exp = build_config("conclu", overrides={
        **TINY_CONCLU, "train.epochs": 3, "train.batch_size": 8,
        "data.name": SHAPENETPART_POINTS, "data.root": str(shapenet),
        "protocol.data": _modelnet40(shared_data), "protocol.name": "linear_svm",
    })
    session = Recorder()
    run_loop(LoopConfig(exp, "val/svm_acc", "max"), session)
    assert len(session.reports) == 3 and all("val/svm_acc" in m for m, _ in session.reports)
    last = session.reports[-1][0]
    assert set(k for k in last if k.startswith("val/acc/")) == {f"val/acc/{c}" for c in CLASSES}
    assert 1 / 3 < last["test/svm_acc"] <= 1 and last["test/svm_C"] in (0.01, 0.1, 1.0, 10.0)
    judged = build_eval_splits(exp)
    assert judged.source == "protocol.data" and len(judged.fit) > 500  # ModelNet40, not the 20 ShapeNetPart shapes
    history = ", ".join(f"{100 * m['val/svm_acc']:.1f}" for m, _ in session.reports)
    print(f"\n[linear SVM] ConClu pretrained on {len(read_shapenetpart_txt(shapenet, 'all', 256))} ShapeNetPart "
          f"shapes, judged on ModelNet40 {CLASSES}: val svm_acc per epoch [{history}] %, test svm_acc "
          f"{100 * last['test/svm_acc']:.1f} % (mAcc {100 * last['test/svm_mAcc']:.1f} %), C = {last['test/svm_C']:g}, "
          f"converged {bool(last['test/svm_converged'])}")
    assert np.isfinite(last["train/loss"])
