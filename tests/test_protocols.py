"""Evaluation protocols and encoder transfer: the linear-SVM protocol on frozen features, and fine-tuning
that starts from a saved encoder."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pointtune.config import build_config
from pointtune.method import Method, MethodConfig, Task
from pointtune.train.checkpoint import save_state
from pointtune.train.evaluate import DEFAULT_OBJECTIVE, evaluate, extract_features


class _Probe(Method):
    """A pretraining 'method' whose embedding is the cloud's centroid: linearly separable when classes
    are placed at distinct centroids, uninformative when they are not."""

    task = Task.PRETRAIN
    Config = MethodConfig

    def __init__(self):
        super().__init__(MethodConfig(name="probe"), 0, 1)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def embed(self, points):
        return points.mean(1) * self.scale


def _loader(centroids: np.ndarray, labels: np.ndarray, seed: int) -> DataLoader:
    rng = np.random.default_rng(seed)
    points = centroids[labels][:, None, :] + 0.05 * rng.standard_normal((len(labels), 16, 3))
    items = [{"points": torch.tensor(p, dtype=torch.float32), "label": torch.tensor(y)} for p, y in zip(points, labels)]
    return DataLoader(items, batch_size=8)


def test_linear_svm_protocol_separable_and_random():
    labels = np.repeat(np.arange(3), 20)
    centroids = np.eye(3)
    loaders = {"fit": _loader(centroids, labels, 0), "eval": _loader(centroids, labels, 1)}
    scores, cm = evaluate(_Probe(), loaders, torch.device("cpu"), ["a", "b", "c"], svm_c=1.0)
    assert scores["svm_acc"] == pytest.approx(1.0) and cm.trace() == 60
    assert scores["acc/a"] == scores["acc/b"] == scores["acc/c"] == pytest.approx(1.0)
    same = np.zeros((3, 3))  # every class at the origin: nothing to separate
    loaders = {"fit": _loader(same, labels, 0), "eval": _loader(same, labels, 1)}
    scores, cm = evaluate(_Probe(), loaders, torch.device("cpu"), ["a", "b", "c"], svm_c=1.0)
    assert scores["acc/b"] == pytest.approx(cm[1, 1] / 20)
    assert scores["svm_acc"] < 0.6
    assert DEFAULT_OBJECTIVE[Task.PRETRAIN] == ("val/svm_acc", "max")


def test_extract_features_restores_training_mode():
    probe = _Probe().train()
    feats, labels = extract_features(probe, _loader(np.eye(3), np.arange(3), 0), torch.device("cpu"))
    assert feats.shape == (3, 3) and labels.tolist() == [0, 1, 2] and probe.training


def test_finetune_starts_from_the_saved_encoder(tmp_path):
    source = build_config("cedr", overrides={"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32})
    model = source.method_cls(source.method, 4, 1)
    save_state(tmp_path / "ckpt", {"model": model.state_dict(), "experiment": source.to_dict(),
                                   "class_names": ["a", "b", "c", "d"]})
    exp = build_config("finetune", overrides={"method.pretrained": str(tmp_path / "ckpt")})
    tuned = exp.method_cls(exp.method, 3, 1)
    for name, value in model.encoder().state_dict().items():
        assert torch.equal(tuned.encoder().state_dict()[name], value), name
    assert tuned.predict({"points": torch.randn(2, 64, 3)}).shape == (2, 3)
    scratch = build_config("finetune", overrides={"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32})
    fresh = scratch.method_cls(scratch.method, 3, 1)
    assert not all(torch.equal(fresh.encoder().state_dict()[k], v) for k, v in model.encoder().state_dict().items())


def test_finetune_frozen_encoder_gets_no_gradient(tmp_path):
    exp = build_config("finetune", overrides={"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32,
                                              "method.freeze_encoder": True})
    model = exp.method_cls(exp.method, 3, 1)
    out = model({"points": torch.randn(4, 64, 3), "label": torch.tensor([0, 1, 2, 0])}, 0, 0.0)
    out["loss"].backward()
    assert all(p.grad is None for p in model.encoder().parameters())
    assert all(p.grad is not None for p in model.cls_head.parameters())


def test_finetune_missing_checkpoint_names_it(tmp_path):
    exp = build_config("finetune", overrides={"method.pretrained": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="nope"):
        exp.method_cls(exp.method, 3, 1)
