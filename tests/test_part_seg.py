"""Part segmentation (issue 9 §2): PointNet's mIoU against brute force, ``Method.embed_points`` (per-point
features at every input point, interpolated from patch centres), the ``part_seg`` protocol (a 1fc / 5fc head on
frozen per-point features, label fraction, sharded over 2 gloo workers and merged exactly), ShapeNetPart's
``data.variant: split`` and a ``pointtune train`` run judged by part segmentation on the ShapeNetPart sample."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from helpers import on_gloo_workers, one_line_error, pointtune, real
from pointtune.backbones import build_backbone
from pointtune.config import ConfigError, build_config
from pointtune.data import SHAPENETPART_CLASSES, SHAPENETPART_SEG_CLASSES, DataConfig, DatasetError, build_datasets
from pointtune.metrics import part_seg_metrics, shape_part_ious
from pointtune.method import Method, MethodConfig, Task, interpolate_point_features
from pointtune.protocols import (
    PartSegConfig,
    PartSegHead,
    build_eval_splits,
    default_objective,
    draw_label_fraction,
    evaluate,
    get_protocol,
    resolve_protocol,
    shard_indices,
)
from pointtune.protocols.part_seg import fit_point_indices

CPU = torch.device("cpu")
SNP = SHARED_DATA / "shapenetpart_subset"


@pytest.fixture(autouse=True)
def one_thread():
    """Small heads train in milliseconds per step on one thread; two threads on shared cores spin instead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
CAP, AIRPLANE = SHAPENETPART_SEG_CLASSES["Cap"], SHAPENETPART_SEG_CLASSES["Airplane"]  # 2 and 4 parts


# ---- the IoU metrics --------------------------------------------------------------------------------------

def _brute_shape_iou(pred: list[int], label: list[int], parts: list[int]) -> float:
    """PointNet's shape IoU, point by point in plain Python."""
    ious = []
    for part in parts:
        inter = sum(1 for p, t in zip(pred, label) if p == part and t == part)
        union = sum(1 for p, t in zip(pred, label) if p == part or t == part)
        ious.append(1.0 if union == 0 else inter / union)
    return sum(ious) / len(ious)


def test_shape_iou_by_hand_and_absent_parts_count_as_one():
    # Cap (parts 6, 7): 6 -> IoU 2/3 (pred 6 at 0,1,2; truth 6 at 0,1), 7 -> 1/2 (pred 7 at 3; truth 7 at 2,3).
    assert shape_part_ious([6, 6, 6, 7], [6, 6, 7, 7], CAP)[0] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Airplane (parts 0..3): parts 2 and 3 in neither prediction nor truth count 1 each.
    assert shape_part_ious([0, 0, 1, 1], [0, 1, 1, 1], AIRPLANE)[0] == pytest.approx((1 / 2 + 2 / 3 + 1 + 1) / 4)
    # a perfect prediction of a one-part shape is 1, whatever the category's size
    assert shape_part_ious([45] * 5, [45] * 5, SHAPENETPART_SEG_CLASSES["Skateboard"])[0] == 1.0
    # a prediction outside the category's parts only lowers the IoU of the true part
    assert shape_part_ious([0, 6], [6, 6], CAP)[0] == pytest.approx((1 / 2 + 1) / 2)
    with pytest.raises(ValueError):
        shape_part_ious([6, 6], [6], CAP)
    with pytest.raises(ValueError):
        shape_part_ious([6], [6], [])


def test_shape_ious_and_summary_match_brute_force():
    rng = np.random.default_rng(0)
    shapes = []  # (category name, pred, label)
    for name, count in (("Cap", 5), ("Airplane", 4)):
        parts = SHAPENETPART_SEG_CLASSES[name]
        for _ in range(count):
            used = rng.choice(parts, size=rng.integers(1, len(parts) + 1), replace=False)  # some parts absent
            label = rng.choice(used, size=40)
            pred = np.where(rng.random(40) < 0.7, label, rng.choice(parts, size=40))
            shapes.append((name, pred, label))
    ious = np.concatenate([shape_part_ious(p, t, SHAPENETPART_SEG_CLASSES[n]) for n, p, t in shapes])
    brute = [_brute_shape_iou(p.tolist(), t.tolist(), SHAPENETPART_SEG_CLASSES[n]) for n, p, t in shapes]
    np.testing.assert_allclose(ious, brute, rtol=0, atol=1e-12)
    # batched (M, N) equals shape by shape
    caps = [(p, t) for n, p, t in shapes if n == "Cap"]
    np.testing.assert_allclose(shape_part_ious(np.stack([p for p, _ in caps]), np.stack([t for _, t in caps]), CAP),
                               brute[:5], atol=1e-12)
    cats = np.asarray([SHAPENETPART_CLASSES.index(n) for n, _, _ in shapes])
    got = part_seg_metrics(ious, cats, SHAPENETPART_CLASSES)
    cap, airplane = np.mean(brute[:5]), np.mean(brute[5:])
    assert got["ins_miou"] == pytest.approx(np.mean(brute))          # mean over the 9 shapes
    assert got["cls_miou"] == pytest.approx((cap + airplane) / 2)     # mean over the 2 categories
    assert got["iou/Cap"] == pytest.approx(cap) and got["iou/Airplane"] == pytest.approx(airplane)
    assert set(got) == {"ins_miou", "cls_miou", "iou/Cap", "iou/Airplane"}
    with pytest.raises(ValueError):
        part_seg_metrics(np.zeros(0), np.zeros(0), SHAPENETPART_CLASSES)


# ---- embed_points -----------------------------------------------------------------------------------------

class _OnBackbone(Method):
    """A method whose encoder is a registry backbone: what embed_points' default serves."""

    task = Task.PRETRAIN
    Config = MethodConfig

    def __init__(self, name: str, **kwargs):
        super().__init__(MethodConfig(name="probe"), 0, 1)
        self.backbone = build_backbone(name, **kwargs)

    def encoder(self):
        return self.backbone


@pytest.mark.parametrize("name,kwargs", [
    ("pointnet", {"emb_dims": 16}),
    ("dgcnn", {"k": 8, "emb_dims": 16}),
    ("vit3d", {"k": 16, "dim": 16, "depth": 1, "heads": 2}),
    ("pointnet2_ssg", {"npoints": (32, 8), "width": 0.25, "emb_dims": 16}),
])
def test_embed_points_gives_a_feature_for_every_input_point(name, kwargs):
    torch.manual_seed(0)
    method = _OnBackbone(name, **kwargs).eval()
    points = torch.rand(2, 128, 3)
    feats = method.embed_points({"points": points})
    out = method.backbone.forward_features(points)
    assert feats.shape == (2, 128, method.backbone.point_dim) and torch.isfinite(feats).all()
    if out.point_features.shape[1] == 128:   # PointNet, DGCNN: the backbone's own per-point features
        assert torch.equal(feats, out.point_features)
    else:                                    # 3D-ViT centres, PointNet++ level 2: interpolated, exact at the centres
        hit = (points[:, :, None, :] == out.point_xyz[:, None, :, :]).all(-1)   # (B, N, M)
        assert hit.any(1).all()              # every centre is an input point
        for b in range(2):
            rows, cols = hit[b].nonzero(as_tuple=True)
            assert torch.equal(feats[b, rows], out.point_features[b, cols])


def test_interpolation_is_inverse_squared_distance_of_the_three_nearest():
    torch.manual_seed(1)
    ref, xyz, feats = torch.rand(1, 6, 3), torch.rand(1, 4, 3), torch.randn(1, 6, 5)
    got = interpolate_point_features(xyz, ref, feats)
    for i in range(4):
        d2 = ((ref[0] - xyz[0, i]) ** 2).sum(-1)
        near = d2.argsort()[:3]
        w = 1 / (d2[near] + 1e-8)
        torch.testing.assert_close(got[0, i], (w[:, None] * feats[0, near]).sum(0) / w.sum())
    # fewer reference points than 3: all of them; the same coordinates: the features as they are
    assert interpolate_point_features(xyz, ref[:, :2], feats[:, :2]).shape == (1, 4, 5)
    assert interpolate_point_features(ref, ref.clone(), feats) is feats
    with pytest.raises(ValueError):
        interpolate_point_features(xyz, ref, feats[:, :5])


TINY_CONCLU = {"method.backbone.name": "pointnet", "method.backbone.emb_dims": 32, "method.projector_hidden": 32,
               "method.projection_dim": 16, "method.predictor_hidden": 16, "method.num_prototypes": 4,
               "method.view_points": 64, "data.num_points": 256, "train.batch_size": 8}
TINY_DCGLR = {"method.backbone.dim": 32, "method.backbone.depth": 1, "method.backbone.heads": 2,
              "method.backbone.k": 16, "method.proj_hidden": 64, "method.proj_bottleneck": 32, "method.out_dim": 64,
              "method.n_local_crops": 2, "method.n_multires": 1, "data.num_points": 256, "train.batch_size": 8,
              "optim.lr.warmup_epochs": 0}


@pytest.mark.parametrize("method,overrides", [("conclu", TINY_CONCLU), ("dcglr", TINY_DCGLR),
                                              ("dcglr", {**{k: v for k, v in TINY_DCGLR.items()
                                                            if not k.startswith("method.backbone.")},
                                                         "method.backbone.name": "dgcnn", "method.backbone.k": 8,
                                                         "method.backbone.emb_dims": 24})])
def test_conclu_and_dcglr_have_per_point_features(method, overrides):
    exp = build_config(method, overrides=overrides)
    torch.manual_seed(0)
    model = exp.method_cls(exp.method, 4, 1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    feats = model.embed_points({"points": torch.rand(2, 256, 3)})
    assert feats.shape[:2] == (2, 256) and feats.shape[2] == model.encoder().point_dim
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # nothing changed


# ---- the protocol's parts ---------------------------------------------------------------------------------

def test_label_fraction_is_stratified_seeded_and_keeps_every_category():
    labels = np.repeat([0, 1, 2, 5], [200, 30, 1, 9])
    got = draw_label_fraction(labels, 0.05, seed=3)
    counts = {c: int((labels[got] == c).sum()) for c in (0, 1, 2, 5)}
    assert counts == {0: 10, 1: 2, 2: 1, 5: 1}        # round(5% of n), at least one per category
    assert np.array_equal(got, np.sort(got)) and len(np.unique(got)) == len(got)
    assert np.array_equal(got, draw_label_fraction(labels, 0.05, seed=3))            # seeded
    assert not np.array_equal(got, draw_label_fraction(labels, 0.05, seed=4))
    # a category's draw does not depend on the other categories
    alone = draw_label_fraction(labels[labels == 0], 0.05, seed=3)
    assert np.array_equal(alone, got[labels[got] == 0])
    assert np.array_equal(draw_label_fraction(labels, 1.0, seed=0), np.arange(len(labels)))
    with pytest.raises(ValueError):
        draw_label_fraction(labels, 0.0, 0)


def test_fit_points_are_a_fixed_seeded_subset():
    a = fit_point_indices(2048, 512, 0, 7)
    assert len(a) == 512 and len(np.unique(a)) == 512 and np.array_equal(a, np.sort(a))
    assert np.array_equal(a, fit_point_indices(2048, 512, 0, 7))
    assert not np.array_equal(a, fit_point_indices(2048, 512, 0, 8))
    assert np.array_equal(fit_point_indices(100, None, 0, 1), np.arange(100))
    assert np.array_equal(fit_point_indices(100, 512, 0, 1), np.arange(100))


@pytest.mark.parametrize("kind", ["1fc", "5fc"])
def test_heads_are_the_papers_two_settings(kind):
    head = PartSegHead(256, kind, onehot=True)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    widths = [(m.in_features, m.out_features) for m in linears]
    if kind == "1fc":
        assert widths == [(256 + 16, 50)]
    else:
        assert widths == [(272, 512), (512, 256), (256, 256), (256, 128), (128, 50)]
    out = head(torch.randn(3, 10, 256), torch.tensor([0, 2, 15]))
    assert out.shape == (3, 10, 50)
    assert PartSegHead(8, kind, onehot=False)(torch.randn(2, 4, 8), torch.tensor([0, 1])).shape == (2, 4, 50)


def test_protocol_registration_config_and_objective():
    protocol = get_protocol("part_seg")
    assert protocol.metrics(PartSegConfig())[0] == "ins_miou" and protocol.splits == ("fit", "eval")
    assert protocol.Config is PartSegConfig
    assert resolve_protocol(Task.PRETRAIN, "part_seg", own_data=True) is protocol
    assert resolve_protocol(Task.CLASSIFICATION, "part_seg") is protocol
    exp = build_config("conclu", overrides={"protocol.name": "part_seg"})
    assert default_objective(exp) == ("val/ins_miou", "max")
    cfg = exp.protocol
    assert isinstance(cfg, PartSegConfig)
    assert (cfg.head, cfg.category_onehot, cfg.epochs, cfg.lr, cfg.batch_size,
            cfg.lr_step, cfg.lr_gamma, cfg.label_fraction) == ("1fc", True, 100, 1e-3, 32, 20, 0.5, 1.0)
    with pytest.raises(ConfigError) as info:
        build_config("conclu", overrides={"protocol.name": "part_seg", "protocol.finetune": True})
    one_line_error(info, "protocol.finetune", "not implemented")
    with pytest.raises(ConfigError) as info:
        build_config("conclu", overrides={"protocol.name": "part_seg", "protocol.head": "3fc"})
    one_line_error(info, "protocol.head")


# ---- a probe method on hand-made parts, and 2 gloo workers ------------------------------------------------

class _PointProbe(Method):
    """Per-point features that determine the hand-made parts (coordinates, squares, signs)."""

    task = Task.PRETRAIN
    Config = MethodConfig

    def __init__(self):
        super().__init__(MethodConfig(name="probe"), 0, 1)
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.seen = 0   # clouds embedded by this process

    def embed_points(self, batch):
        self.seen += batch["points"].shape[0]
        p = batch["points"]
        return torch.cat([p, p.square(), torch.sign(p)], dim=-1) * self.scale


def _parts_items(labels: list[int], seed: int, n: int = 32) -> list[dict]:
    """Cap clouds (label 1; part 6 above z = 0, 7 below) and airplanes (label 0; part = quadrant of x, y)."""
    rng = np.random.default_rng(seed)
    items = []
    for label in labels:
        p = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
        seg = np.where(p[:, 2] > 0, 6, 7) if label == 1 else (p[:, 0] > 0) * 2 + (p[:, 1] > 0)
        items.append({"points": torch.from_numpy(p), "label": torch.tensor(label),
                      "seg": torch.from_numpy(seg.astype(np.int64))})
    return items


NAMES = ["Airplane", "Cap"]


def _seg_cases():
    """(name, splits, protocol config): odd split sizes so the shards differ; 'tiny' has one shape per split
    (rank 1's shards are empty)."""
    fit, ev = _parts_items([0, 1] * 6 + [1], 0), _parts_items([1, 0] * 5 + [0], 1)
    fast = dict(name="part_seg", epochs=4, batch_size=4, lr=1e-2)
    return [
        ("1fc", {"fit": fit, "eval": ev}, PartSegConfig(**fast, fit_points=20)),
        ("5fc", {"fit": fit, "eval": ev}, PartSegConfig(**fast, head="5fc", category_onehot=False)),
        ("fraction", {"fit": fit, "eval": ev}, PartSegConfig(**fast, label_fraction=0.2, seed=5)),
        ("tiny", {"fit": fit[:1], "eval": ev[:1]}, PartSegConfig(**fast)),
    ]


def test_head_learns_hand_made_parts():
    fit, ev = _parts_items([0, 1] * 20, 0, n=64), _parts_items([0, 1] * 5, 1, n=64)
    cfg = PartSegConfig(name="part_seg", head="5fc", epochs=20, batch_size=8, lr=1e-2, lr_step=10)
    scores, cm, arrays = evaluate(_PointProbe(), {"fit": fit, "eval": ev}, CPU, NAMES, cfg, batch_size=4,
                                  return_arrays=True)
    assert cm is None and arrays["shape_iou"].shape == (10,)
    assert scores["ins_miou"] > 0.85 and scores["iou/Cap"] > 0.85 and scores["iou/Airplane"] > 0.8, scores
    assert scores["seg_fit_shapes"] == 40 and 0 < scores["seg_head_loss"] < math.log(50)   # below chance
    assert scores["ins_miou"] == pytest.approx(arrays["shape_iou"].mean())


WORLD = 2


def _seg_worker(rank: int) -> dict:
    """What one of the 2 gloo workers scores (:func:`helpers.on_gloo_workers`)."""
    out = {}
    for name, splits, cfg in _seg_cases():
        method = _PointProbe()
        scores, _, arrays = evaluate(method, splits, CPU, NAMES, cfg, batch_size=4, return_arrays=True)
        out[name] = (scores, arrays["shape_iou"], method.seen)
    return out


@pytest.mark.slow  # spawns a 2-process gloo group
def test_sharded_part_seg_equals_single_process(tmp_path):
    parts = on_gloo_workers(_seg_worker, tmp_path, WORLD)
    # one thread here (the one_thread fixture), as in the workers: the same float sums
    for name, splits, cfg in _seg_cases():
        method = _PointProbe()
        single, _, arrays = evaluate(method, splits, CPU, NAMES, cfg, batch_size=4, return_arrays=True)
        assert {"ins_miou", "cls_miou", "seg_fit_shapes", "seg_head_loss"} <= set(single), name
        for rank, part in enumerate(parts):
            scores, shape_iou, seen = part[name]
            assert scores.keys() == single.keys(), (name, rank)
            for key, value in single.items():   # exactly, not approximately
                assert scores[key] == value or (math.isnan(value) and math.isnan(scores[key])), (name, key)
            assert np.array_equal(shape_iou, arrays["shape_iou"]), name
            # each worker embedded only its shards of the head's training shapes and of the scored split
            # (an empty shard embeds one probe cloud for the feature width)
            fit_shapes = int(single["seg_fit_shapes"])
            expected = sum(len(shard_indices(n, rank, WORLD)) for n in (fit_shapes, len(splits["eval"])))
            expected += 0 if len(shard_indices(fit_shapes, rank, WORLD)) else 1
            assert seen == expected, (name, rank, seen, expected)
    assert parts[0]["fraction"][0]["seg_fit_shapes"] == 2   # 20% of 6 airplanes and 7 caps: 1 + 1


# ---- ShapeNetPart: the split variant, the protocol on the sample, preflight, a CLI run --------------------

@pytest.mark.realdata
@pytest.mark.parametrize("name", ["shapenetpart", "shapenetpart_h5"])
def test_split_variant_splits_the_sample_by_category(name, capsys):
    cfg = DataConfig(name=name, root=str(real(SNP)), variant="split", num_points=512, cache=False)
    data = build_datasets(cfg)
    line = capsys.readouterr().out
    assert f"[pointtune] data {name} variant split: not the official split" in line and "15 train, 5 test" in line
    assert (len(data.train), len(data.val), len(data.test)) == (14, 1, 5)
    names = [SHAPENETPART_CLASSES[c] for c in data.test.labels]
    assert sorted(names) == ["Cap"] * 3 + ["Skateboard", "Table"]        # every category of >= 2 shapes
    assert {SHAPENETPART_CLASSES[c] for c in data.train.labels} == {"Cap", "Skateboard", "Table"}
    assert data.test[0]["seg"].shape == (512,)
    # seeded by data.split_seed: the same split again, another with another seed
    again = build_datasets(cfg)
    assert np.array_equal(again.test.pcs.points, data.test.pcs.points)
    other = build_datasets(cfg.model_copy(update={"split_seed": 1}))
    assert not np.array_equal(other.test.pcs.points, data.test.pcs.points)
    # train, val and test are disjoint and cover the 20 shapes
    clouds = [c.tobytes() for s in (data.train, data.val, data.test) for c in s.pcs.points]
    assert len(set(clouds)) == 20
    with pytest.raises(DatasetError) as info:   # the official split names the missing lists and the variant
        build_datasets(cfg.model_copy(update={"variant": None}))
    one_line_error(info, "data.variant=split")


@pytest.mark.realdata
def test_part_seg_on_the_sample_with_a_random_encoder(shared_data):
    root = real(shared_data / "shapenetpart_subset")
    exp = build_config("conclu", overrides={**TINY_CONCLU, "protocol.name": "part_seg", "protocol.epochs": 3,
                                            "protocol.data": {"name": "shapenetpart", "root": str(root),
                                                              "variant": "split", "num_points": 256}})
    judged = build_eval_splits(exp)
    assert judged.source == "protocol.data" and judged.class_names == SHAPENETPART_CLASSES
    torch.manual_seed(0)
    method = exp.method_cls(exp.method, 8, 1)
    for head in ("1fc", "5fc"):
        cfg = exp.protocol.model_copy(update={"head": head})
        scores, cm, arrays = evaluate(method, {"fit": judged.fit, "eval": judged.test}, CPU, judged.class_names,
                                      cfg, batch_size=8, return_arrays=True)
        assert cm is None and arrays["shape_iou"].shape == (5,)
        for key in ("ins_miou", "cls_miou", "iou/Cap", "iou/Skateboard", "iou/Table"):
            assert 0 <= scores[key] <= 1, (key, scores)
        assert not [k for k in scores if k.startswith("acc/")]
        assert scores["seg_fit_shapes"] == 14 and math.isfinite(scores["seg_head_loss"])
    fraction = exp.protocol.model_copy(update={"label_fraction": 0.1})
    scores, _ = evaluate(method, {"fit": judged.fit, "eval": judged.val}, CPU, judged.class_names, fraction)
    assert scores["seg_fit_shapes"] == 3 and set(k for k in scores if k.startswith("iou/")) == {"iou/Cap"}


@pytest.mark.realdata
def test_preflight_names_missing_part_labels_and_per_point_features(shared_data):
    from pointtune.preflight import preflight

    with pytest.raises(ConfigError) as info:   # synthetic clouds have no part labels
        preflight(build_config("conclu", overrides={**TINY_CONCLU, "protocol.name": "part_seg"}))
    one_line_error(info, "protocol.name: the part_seg protocol needs per-point part labels ('seg')", "shapenetpart")
    root = str(real(shared_data / "shapenetpart_subset"))

    def on_sample(variant: str) -> dict:
        return {**TINY_CONCLU, "protocol.name": "part_seg",
                "protocol.data": {"name": "shapenetpart_h5", "root": root, "variant": variant, "num_points": 256}}

    preflight(build_config("conclu", overrides=on_sample("split")), objective="val/ins_miou")
    with pytest.raises(DatasetError) as info:   # the official split of the sample: no lists
        preflight(build_config("conclu", overrides=on_sample("official")))
    one_line_error(info, "protocol.data", "data.variant=split")

    class _NoEncoder(_PointProbe):
        embed_points = Method.embed_points

    with pytest.raises(ConfigError) as info:
        get_protocol("part_seg").check_output(_NoEncoder(), {"points": torch.rand(1, 8, 3),
                                                             "seg": torch.zeros(1, 8, dtype=torch.int64)}, 16)
    one_line_error(info, "per-point features (Method.embed_points)", "no transferable encoder")


@pytest.mark.realdata
@pytest.mark.slow  # trains DCGLR and fits the part head through the CLI (about a minute)
def test_train_dcglr_judged_by_part_segmentation(shared_data, tmp_path):
    root = real(shared_data / "shapenetpart_subset")
    out = tmp_path / "run"
    sets = {**TINY_DCGLR, "data.synthetic_per_class": 8, "data.synthetic_num_classes": 2, "train.threads": 1,
            "protocol.name": "part_seg", "protocol.epochs": 2, "protocol.fit_points": 128,
            "protocol.data": f"{{name: shapenetpart, root: {root}, variant: split, num_points: 256, cache: false}}"}
    args = [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    proc = pointtune("train", "dcglr", "--epochs", "1", *args, "--output", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "variant split: not the official split" in proc.stdout   # printed where the split is made (no cache)
    (epoch,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= epoch["val/ins_miou"] <= 1 and "val/iou/Cap" in epoch and epoch["val/seg_fit_shapes"] == 14
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test"]["ins_miou"] <= 1 and "iou/Table" in summary["test"], summary
