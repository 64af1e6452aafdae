"""``seg`` (issue 10 §4, DCGLR's Table 3 setting): scene segmentation by fine-tuning any pretrained encoder (a
ConClu or DCGLR DGCNN checkpoint) or a random-init backbone with a DGCNN-style head; ignored points contribute
nothing, ``freeze_encoder`` keeps the encoder, and ``pointtune train seg --from`` through the CLI on the ScanNet
sample reports the scene mIoU."""

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import one_line_error, pointtune, real, warm_started
from pointtune.config import build_config
from pointtune.method import Task, encoder_point_features, get_method, method_names
from pointtune.methods.seg import SegFinetune, SegmentationHead, normalize_crops
from pointtune.train.checkpoint import save_state

K = 4
# A DGCNN small enough for a CPU test: 8 neighbours, 32-dim per-point embedding; a small head.
TINY_DGCNN = {"method.backbone.name": "dgcnn", "method.backbone.k": 8, "method.backbone.emb_dims": 32}
TINY_HEAD = {"method.head_hidden": [32, 16]}
TINY_CONCLU = {**TINY_DGCNN, "method.backbone.pooling": "max", "method.projector_hidden": 32,
               "method.projection_dim": 16, "method.predictor_hidden": 16, "method.num_prototypes": 8,
               "method.view_points": 64}
TINY_DCGLR = {**TINY_DGCNN, "method.proj_hidden": 32, "method.proj_bottleneck": 16, "method.out_dim": 32}


def _batch(b: int = 2, n: int = 96, pad: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A scene-like batch: metre coordinates (a 3 x 3 x 2 m box), colour, height, labels with some -1 and the
    last ``pad`` points of each crop padding (``mask`` False, ``seg`` -1)."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(b, n, 3, generator=g) * torch.tensor([3.0, 3.0, 2.0]) - torch.tensor([1.5, 1.5, 0.0])
    seg = torch.randint(0, K, (b, n), generator=g)
    seg[torch.rand(b, n, generator=g) < 0.2] = -1
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[:, n - pad:] = False
    seg[~mask] = -1
    return {"points": points, "color": torch.randn(b, n, 3, generator=g), "height": points[..., 2:].clone(),
            "seg": seg, "mask": mask, "index": torch.arange(b)}


def _seg(**overrides) -> SegFinetune:
    """A ``seg`` for K classes: the tiny DGCNN (unless ``overrides`` names another backbone) and head, warm-started
    from ``method.pretrained`` when it is set, as a fresh run starts it."""
    tiny = TINY_DGCNN if overrides.get("method.backbone.name", "dgcnn") == "dgcnn" else {}
    exp = build_config("seg", overrides={**tiny, **TINY_HEAD, **overrides})
    torch.manual_seed(0)
    return warm_started(exp, K)


def _checkpoint(directory, method: str, overrides: dict):
    """A pretraining method (random weights, non-trivial BatchNorm statistics) saved as a pointtune checkpoint;
    returns the method and the directory."""
    exp = build_config(method, overrides={**overrides, "train.epochs": 1})
    torch.manual_seed(1)
    model = exp.method_cls(exp.method, 0, 1)
    encoder = model.encoder()
    encoder.train()
    with torch.no_grad():
        encoder(torch.randn(4, 64, 3))            # BatchNorm running statistics away from 0 / 1
    if method == "dcglr":                          # encoder() is a copy of the teacher: put its state back
        model.teacher.backbone.load_state_dict(encoder.state_dict())
    save_state(directory, {"model": model.state_dict(), "experiment": exp.to_dict(), "class_names": [],
                           "metrics": {"epoch": 1}})
    return model, str(directory)


def _step(model: SegFinetune, batch: dict, lr: float = 0.1) -> dict:
    model.train()
    opt = torch.optim.SGD(model.param_groups(0.0), lr=lr)
    out = model(batch, 0, 0.0)
    opt.zero_grad()
    out["loss"].backward()
    opt.step()
    return out


# --------------------------------------------------------------------------------------------------
# Registration and the model
# --------------------------------------------------------------------------------------------------


def test_registered_as_a_segmentation_method_with_dgcnn_recipe():
    assert "seg" in method_names() and get_method("seg") is SegFinetune
    assert SegFinetune.task is Task.SEGMENTATION and SegFinetune.from_key == "method.pretrained"
    exp = build_config("seg")
    assert exp.method.backbone.name == "dgcnn" and exp.method.backbone.inputs == []
    assert exp.method.normalize_crops and exp.method.head_inputs == ["color", "height"]
    assert exp.optim.name == "sgd" and exp.optim.lr.start == 0.1 and exp.optim.lr.shape == "cosine"
    assert exp.train.epochs == 100 and exp.data.name == "s3dis" and exp.data.num_points == 4096


def test_random_init_dgcnn_forward_backward_predict():
    model = _seg()
    batch = _batch()
    out = _step(model, batch)
    assert set(out) == {"loss", "ce", "acc"} and torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    logits = model.predict(batch)
    assert logits.shape == (2, 96, K) and not logits.requires_grad
    # head input: 32 per-point + 32 global + colour 3 + height 1
    assert model.seg_head.in_dim == 68


def test_head_options_set_its_input_width():
    assert _seg(**{"method.head_global": False, "method.head_inputs": []}).seg_head.in_dim == 32
    model = _seg(**{"method.head_inputs": ["height"], "method.head_hidden": []})
    assert model.seg_head.in_dim == 65 and len(model.seg_head.net) == 1          # one linear layer
    model.eval()
    assert model.predict(_batch()).shape == (2, 96, K)


def test_segmentation_head_is_dgcnn_style():
    head = SegmentationHead(10, 3, (8, 6), dropout=0.5)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Conv1d", "BatchNorm1d", "LeakyReLU", "Conv1d", "BatchNorm1d", "LeakyReLU", "Dropout", "Conv1d"]
    assert head(torch.randn(2, 5, 10)).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="expected"):
        head(torch.randn(2, 5, 9))
    with pytest.raises(ValueError, match="dropout"):
        SegmentationHead(10, 3, dropout=1.0)


def test_encoder_with_features_away_from_the_input_points_is_interpolated():
    # PointNet++'s last level: M = 16 points, interpolated to every one of the N inputs (with gradients)
    model = _seg(**{"method.backbone.name": "pointnet2_ssg", "method.backbone.npoints": [32, 16],
                    "method.backbone.nsamples": [8, 8], "method.backbone.width": 0.125,
                    "method.backbone.emb_dims": 16})
    batch = _batch(n=64, pad=8)
    out = model.backbone.forward_features(normalize_crops(batch["points"], batch["mask"]))
    assert out.point_xyz.shape[1] == 16
    _step(model, batch)
    unused = model.unused_encoder_parameters(num_points=64)   # the global level sa3: not on the per-point path
    assert unused and all(name.startswith("sa3.") for name in unused)
    for name, p in model.backbone.named_parameters():
        assert (p.grad is None) == (name in unused), name
    model.eval()
    assert model.predict(batch).shape == (2, 64, K)
    assert torch.equal(model.embed_points(batch), encoder_point_features(
        model.backbone, normalize_crops(batch["points"], batch["mask"])))


def test_ddp_looks_for_unused_parameters_only_where_there_are_some(monkeypatch):
    import pointtune.methods.seg as seg_module

    dgcnn = _seg()
    pointnet2 = _seg(**{"method.backbone.name": "pointnet2_ssg", "method.backbone.npoints": [32, 16],
                        "method.backbone.nsamples": [8, 8], "method.backbone.width": 0.125})
    frozen = _seg(**{"method.freeze_encoder": True})
    assert pointnet2.ddp_options() == {"find_unused_parameters": False, "forward_sync_buffers": False}  # 1 process
    monkeypatch.setattr(seg_module, "world_size", lambda: 2)
    buffers = {k: v.clone() for k, v in dgcnn.state_dict().items()}
    rng = torch.get_rng_state()
    dgcnn.train()
    assert dgcnn.unused_encoder_parameters() == [] and not dgcnn.ddp_options()["find_unused_parameters"]
    assert torch.equal(torch.get_rng_state(), rng) and dgcnn.backbone.training          # the run is not disturbed
    assert all(torch.equal(dgcnn.state_dict()[k], v) for k, v in buffers.items())        # eval mode: no BN update
    assert pointnet2.ddp_options()["find_unused_parameters"]
    assert frozen.unused_encoder_parameters() == [] and not frozen.ddp_options()["find_unused_parameters"]
    assert dgcnn.unused_encoder_parameters(num_points=4) is None     # fewer points than k: cannot probe


# --------------------------------------------------------------------------------------------------
# Crops into the unit sphere
# --------------------------------------------------------------------------------------------------


def test_normalize_crops_unit_sphere_from_real_points_only():
    batch = _batch()
    mask = batch["mask"]
    moved = batch["points"].clone()
    moved[~mask] = 100.0                                         # padding far away: no effect on the real points
    out = normalize_crops(moved, mask)
    real_pts = out[mask].view(2, -1, 3)
    assert torch.allclose(real_pts.mean(dim=1), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(real_pts.norm(dim=-1).amax(dim=1), torch.ones(2))
    assert torch.allclose(out[mask], normalize_crops(batch["points"], mask)[mask])
    # invariant to a translation and an isotropic scale of the crop (metres or centimetres alike)
    assert torch.allclose(normalize_crops(batch["points"] * 3.0 + 7.0, mask), normalize_crops(batch["points"], mask),
                          atol=1e-5)
    assert torch.allclose(normalize_crops(torch.zeros(1, 5, 3)), torch.zeros(1, 5, 3))   # one location: centred
    no_real = torch.zeros(1, 5, dtype=torch.bool)
    assert torch.allclose(normalize_crops(batch["points"][:1, :5], no_real), normalize_crops(batch["points"][:1, :5]))
    with pytest.raises(ValueError, match="points"):
        normalize_crops(torch.zeros(2, 5))


def test_normalize_crops_switch():
    batch = _batch()
    on, off = _seg(), _seg(**{"method.normalize_crops": False})
    assert torch.equal(on._encoder_xyz(batch), normalize_crops(batch["points"], batch["mask"]))
    assert off._encoder_xyz(batch) is batch["points"]


# --------------------------------------------------------------------------------------------------
# Ignored points contribute nothing
# --------------------------------------------------------------------------------------------------


def test_loss_is_the_cross_entropy_of_the_labelled_points():
    model = _seg().eval()                      # deterministic: BatchNorm running statistics, no dropout
    batch = _batch()
    out = model(batch, 0, 0.0)
    logits = model.predict(batch)
    keep = batch["seg"] != -1
    assert torch.allclose(out["loss"], F.cross_entropy(logits[keep], batch["seg"][keep]), atol=1e-6)
    assert out["acc"] == (logits.argmax(-1)[keep] == batch["seg"][keep]).float().mean()


def test_all_ignored_gives_zero_loss_and_zero_gradient():
    model = _seg()
    batch = _batch()
    batch["seg"][:] = -1
    out = model(batch, 0, 0.0)
    out["loss"].backward()
    assert out["loss"] == 0 and out["acc"] == 0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_padding_points_change_nothing():
    # PointNet's per-point features do not mix points, so everything that could carry padding into a real
    # point's logits is the method's own: the crop normalisation and the global max (both over real points)
    model = _seg(**{"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32}).eval()
    batch = _batch()
    other = {k: v.clone() for k, v in batch.items()}
    pad = ~batch["mask"]
    other["points"][pad] = torch.randn(int(pad.sum()), 3) * 50
    other["color"][pad] = 9.0
    other["height"][pad] = 20.0
    mask = batch["mask"]
    assert torch.allclose(model.predict(batch)[mask], model.predict(other)[mask], atol=1e-5)
    assert torch.allclose(model(batch, 0, 0.0)["loss"], model(other, 0, 0.0)["loss"], atol=1e-6)


def test_missing_inputs_are_named():
    batch = _batch()
    del batch["height"]
    with pytest.raises(KeyError, match="method.head_inputs"):
        _seg()(batch, 0, 0.0)
    with pytest.raises(KeyError, match="method.backbone.inputs"):
        _seg(**{"method.backbone.inputs": ["height"], "method.head_inputs": []})(batch, 0, 0.0)


# --------------------------------------------------------------------------------------------------
# Pretrained encoders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source, overrides", [("conclu", TINY_CONCLU), ("dcglr", TINY_DCGLR)])
def test_starts_from_a_pretrained_dgcnn(tmp_path, source, overrides):
    pretrained, path = _checkpoint(tmp_path / "ckpt", source, overrides)
    model = _seg(**{"method.pretrained": path, "method.backbone.emb_dims": 1024})   # ignored: the checkpoint's
    assert model.source_method == source
    saved = pretrained.encoder().state_dict()
    assert saved.keys() == model.backbone.state_dict().keys()
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in saved.items())
    assert model.backbone.point_dim == 32 and model.seg_head.in_dim == 68
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    _step(model, _batch())
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert not all(torch.equal(model.backbone.state_dict()[k], v) for k, v in before.items())   # fine-tuned
    model.eval()
    assert model.predict(_batch()).shape == (2, 96, K)


def test_pretrained_encoder_inputs_must_match(tmp_path):
    _, path = _checkpoint(tmp_path / "ckpt", "conclu", TINY_CONCLU)
    with pytest.raises(ValueError) as err:
        _seg(**{"method.pretrained": path, "method.backbone.inputs": ["color", "height"]})
    one_line_error(err, "method.backbone.inputs", "pretrained conclu encoder takes 0", "give 4")


def test_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="^method.pretrained: .*nope"):
        _seg(**{"method.pretrained": str(tmp_path / "nope")})


def test_freeze_encoder_leaves_the_encoder_unchanged(tmp_path):
    _, path = _checkpoint(tmp_path / "ckpt", "conclu", TINY_CONCLU)
    model = _seg(**{"method.pretrained": path, "method.freeze_encoder": True})
    encoder_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}   # weights and BN statistics
    head_before = {k: v.clone() for k, v in model.seg_head.state_dict().items()}
    trainable = {id(p) for g in model.param_groups(0.0) for p in g["params"]}
    assert trainable == {id(p) for p in model.seg_head.parameters()}
    model.train()
    assert model.seg_head.training and not model.backbone.training
    for seed in range(2):
        _step(model, _batch(seed=seed))
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in encoder_before.items())
    assert not all(torch.equal(model.seg_head.state_dict()[k], v) for k, v in head_before.items())


# --------------------------------------------------------------------------------------------------
# Through the CLI on the ScanNet sample
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.realdata
def test_train_seg_from_a_pretrained_run_on_scannet(shared_data, tmp_path):
    run = tmp_path / "conclu"                  # a local run directory: its best checkpoint is the one taken
    _, best = _checkpoint(run / "checkpoints" / "best", "conclu", TINY_CONCLU)
    out = tmp_path / "seg"
    sets = {"data.num_points": 1024, "data.loop": 2, "train.batch_size": 2, "train.eval_batch_size": 2,
            "protocol.val": "crops", "train.threads": 1, "method.head_hidden": "[32,16]"}
    proc = pointtune("train", "seg", "--from", str(run), "--epochs", "1", "--dataset", "scannet",
                     "--data-root", str(real(shared_data / "scannet_subset")),
                     *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], "--output", str(out),
                     "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"method.pretrained = {best}" in proc.stdout
    (epoch,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epoch["epoch"] == 1 and 0 <= epoch["val/mIoU"] <= 1 and 0 <= epoch["val/OA"] <= 1
    assert epoch["train/loss"] == epoch["train/ce"] and 0 <= epoch["train/acc"] <= 1
    assert any(key.startswith("val/iou/") for key in epoch)
