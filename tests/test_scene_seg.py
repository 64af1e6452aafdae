"""The scene-segmentation protocol (issue 10 §4): mIoU / OA / mAcc / per-class IoU against a brute-force count,
the 2-worker merge equal to one process, whole-scene voting onto every original point (a perfect predictor
scores 1.0 on the real ScanNet and S3DIS samples), validation / test scoring modes, and the renders that reach
MLflow from the best checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from helpers import on_gloo_workers, real
from pointtune.config import ConfigError
from pointtune.data.scene_dataset import SceneDataset
from pointtune.data.scenes import IGNORE_INDEX, S3DIS_CLASSES, SCANNET20_CLASSES, SceneSet, read_s3dis, read_scannet
from pointtune.method import Method, MethodConfig, Task
from pointtune.metrics import confusion_matrix, semantic_seg_metrics
from pointtune.protocols import SceneSegConfig, default_protocol_name, evaluate, get_protocol, resolve_protocol
from pointtune.protocols.scene_seg import (
    RENDER_ARRAYS,
    S3DIS_COLORS,
    SCANNET20_COLORS,
    class_colors,
    render_checkpoint_scenes,
    render_scene,
    scoring_mode,
    vote_scene,
)
from pointtune.search.space import check_objective

CPU = torch.device("cpu")
WORLD = 2
NAMES = ["wall", "floor", "chair", "table", "lamp"]  # 5 classes; "lamp" never occurs in the hand-made scenes


class _Seg(Method):
    """A fake segmentation method. ``kind="wavy"``: deterministic logits from the coordinates by element-wise
    operations only (no BLAS: the same bits in every process); ``kind="given"``: one-hot logits of the items'
    ``pred`` key; ``kind="lookup"``: one-hot logits of the true label of each point, looked up by its exact
    coordinates (a perfect predictor; unlabelled points get class 0). Counts the items and scenes it saw."""

    task = Task.SEGMENTATION
    Config = MethodConfig

    def __init__(self, num_classes: int, kind: str = "wavy", table: dict | None = None):
        super().__init__(MethodConfig(name="fake_seg"), num_classes, 1)
        self.kind, self.table = kind, table or {}
        self.freq = torch.linspace(1.0, 3.0, 3 * num_classes).reshape(num_classes, 3)
        self.items, self.scenes = 0, set()

    def predict(self, batch):
        points = batch["points"]
        self.items += points.shape[0]
        if "index" in batch:
            self.scenes.update(int(i) for i in batch["index"].reshape(-1))
        if self.kind == "wavy":
            return torch.sin((points[:, :, None, :] * self.freq).sum(-1) * 2.0)
        if self.kind == "given":
            labels = batch["pred"]
        else:
            keys = _keys(points.reshape(-1, 3).numpy())
            labels = torch.tensor([max(self.table.get(k, 0), 0) for k in keys]).reshape(points.shape[:2])
        return torch.nn.functional.one_hot(labels, self.num_classes).float() * 5.0


def _keys(coord: np.ndarray) -> list[bytes]:
    """One hashable key per row of float32 coordinates (their exact bytes)."""
    return [row.tobytes() for row in np.ascontiguousarray(coord, dtype=np.float32)]


def _room(seed: int, n: int) -> dict[str, np.ndarray]:
    """A hand-made scene of ``n`` points in a 4 x 3 x 2.5 m box: floor (z < 0.1), walls (x < 0.2), a table
    top and chairs, ignore-labelled points near one corner; no 'lamp'."""
    rng = np.random.default_rng(seed)
    coord = rng.uniform((0, 0, 0), (4, 3, 2.5), size=(n, 3)).astype(np.float32)
    seg = np.full(n, 2, dtype=np.int64)  # chair
    seg[coord[:, 2] > 0.7] = 3  # table
    seg[coord[:, 0] < 0.2] = 0  # wall
    seg[coord[:, 2] < 0.1] = 1  # floor
    seg[(coord[:, 0] > 3.6) & (coord[:, 1] > 2.6)] = IGNORE_INDEX
    return {"coord": coord, "color": rng.uniform(0, 255, (n, 3)).astype(np.float32), "segment": seg}


def _scenes(count: int = 3) -> SceneSet:
    return SceneSet([f"room_{i}" for i in range(count)], [_room(i, 1500 + 300 * i) for i in range(count)], NAMES)


def _dataset(count: int = 3) -> SceneDataset:
    return SceneDataset(_scenes(count), voxel_size=0.25, max_points=256)


# ---- metrics -----------------------------------------------------------------------------------------------

def _brute_force(gt: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, float]:
    """mIoU, OA, mAcc and IoU per present class, counted point by point over the labelled points."""
    pairs = [(g, p) for g, p in zip(gt.tolist(), pred.tolist()) if g != IGNORE_INDEX]
    present = sorted({g for g, _ in pairs})
    ious, accs = {}, []
    for c in present:
        inter = sum(1 for g, p in pairs if g == c and p == c)
        union = sum(1 for g, p in pairs if g == c or p == c)
        ious[names[c]] = inter / union
        accs.append(inter / sum(1 for g, _ in pairs if g == c))
    return {"mIoU": sum(ious.values()) / len(ious), "OA": sum(1 for g, p in pairs if g == p) / len(pairs),
            "mAcc": sum(accs) / len(accs), **{f"iou/{k}": v for k, v in ious.items()}}


def test_metrics_against_brute_force():
    gt = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, -1, -1, 3, 0, 1])
    pred = np.array([0, 0, 1, 1, 4, 2, 2, 0, 4, 4, 0, 3, 4, 1])  # class 4 is predicted, never true
    cm = confusion_matrix(gt[gt >= 0], pred[gt >= 0], 5)
    got = semantic_seg_metrics(cm, NAMES)
    want = _brute_force(gt, pred, NAMES)
    assert got.keys() == want.keys() and "iou/lamp" not in got   # absent classes are not in the mean
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-12), key
    # by hand: wall TP 2, FP 1 (a chair point), FN 2 -> 2/5; floor 2/4; chair 2/4; table 1/1
    assert math.isclose(got["iou/wall"], 2 / 5) and math.isclose(got["mIoU"], (2 / 5 + 2 / 4 + 2 / 4 + 1) / 4)


def _items(seed: int, count: int, n: int = 64) -> list[dict]:
    """Hand-made fixed-size items with labels, ignore labels, padding and a given prediction per point."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        seg = rng.integers(-1, 4, n)           # classes 0..3 and ignore; 'lamp' (4) never true
        pred = np.where(rng.random(n) < 0.6, np.clip(seg, 0, None), rng.integers(0, 5, n))
        mask = rng.random(n) < 0.85
        out.append({"points": torch.tensor(rng.standard_normal((n, 3)), dtype=torch.float32),
                    "seg": torch.tensor(np.where(mask, seg, IGNORE_INDEX)), "mask": torch.tensor(mask),
                    "pred": torch.tensor(pred)})
    return out


def test_protocol_on_crops_equals_brute_force_and_skips_ignore_and_padding():
    items = _items(0, 7)
    cfg = SceneSegConfig(val="crops", render=0)
    scores, cm, arrays = evaluate(_Seg(5, "given"), {"eval": items}, CPU, NAMES, cfg, batch_size=3,
                                  return_arrays=True, split="val")
    gt = np.concatenate([np.where(it["mask"].numpy(), it["seg"].numpy(), IGNORE_INDEX) for it in items])
    pred = np.concatenate([it["pred"].numpy() for it in items])
    want = _brute_force(gt, pred, NAMES)
    assert scores.keys() == want.keys() and arrays == {}
    for key, value in want.items():
        assert math.isclose(scores[key], value, rel_tol=1e-12), key
    assert cm.sum() == (gt >= 0).sum() and cm.dtype == np.int64


# ---- registry, modes, checks -------------------------------------------------------------------------------

def test_default_of_segmentation_and_its_objective():
    assert default_protocol_name(Task.SEGMENTATION) == "scene_seg"
    protocol = resolve_protocol(Task.SEGMENTATION)
    assert protocol.metrics(SceneSegConfig()) == ("mIoU", "OA", "mAcc")
    assert protocol.objective(SceneSegConfig()) == ("val/mIoU", "max")
    check_objective("val/mIoU", Task.SEGMENTATION, "space.yaml: objective.metric")
    with pytest.raises(ConfigError, match="val/mIoU"):
        check_objective("val/miou", Task.SEGMENTATION, "space.yaml: objective.metric")
    with pytest.raises(ConfigError, match="protocol.name: the scene_seg protocol judges segmentation"):
        resolve_protocol(Task.CLASSIFICATION, "scene_seg")


def test_scoring_modes_of_validation_and_test():
    cfg = SceneSegConfig()
    assert (scoring_mode(cfg, "val"), scoring_mode(cfg, "test"), scoring_mode(cfg, None)) == ("pass", "whole", "whole")
    cheap = SceneSegConfig(whole=False, val="crops")
    assert (scoring_mode(cheap, "val"), scoring_mode(cheap, "test")) == ("crops", "crops")
    assert scoring_mode(SceneSegConfig(val="whole"), "val") == "whole"
    with pytest.raises(ValueError, match="split must be"):
        scoring_mode(cfg, "train")


def test_each_mode_predicts_what_it_says():
    data = _dataset(2)
    counts = {}
    for mode, cfg, split in (("pass", SceneSegConfig(), "val"), ("whole", SceneSegConfig(), "test"),
                             ("crops", SceneSegConfig(val="crops"), "val")):
        method = _Seg(5)
        evaluate(method, {"eval": data}, CPU, NAMES, cfg, batch_size=4, split=split)
        counts[mode] = method.items
    assert counts["crops"] == len(data)
    assert counts["pass"] == sum(len(data.test_items(s, 1)) for s in range(2))
    assert counts["whole"] == sum(len(data.test_items(s)) for s in range(2)) > counts["pass"]


def test_check_output_and_bad_input():
    protocol = get_protocol("scene_seg")
    item = _dataset(1)[0]
    batch = {k: v[None] for k, v in item.items()}
    protocol.check_output(_Seg(5), batch, 5)
    with pytest.raises(ValueError, match=r"predict returned shape \(1, 256, 5\).*expected \(B, N, K\)"):
        protocol.check_output(_Seg(5), batch, 4)
    with pytest.raises(ConfigError, match="per-point labels"):
        protocol.check_output(_Seg(5), {k: v for k, v in batch.items() if k != "seg"}, 5)
    with pytest.raises(ValueError, match="needs a SceneDataset"):
        evaluate(_Seg(5, "given"), {"eval": _items(0, 2)}, CPU, NAMES, SceneSegConfig(), split="test")


# ---- voting ------------------------------------------------------------------------------------------------

def test_voting_equals_a_brute_force_sum_and_covers_every_point():
    data = _dataset(1)
    items = data.test_items(0)
    n = len(data.scenes[0]["coord"])
    method = _Seg(5).eval()
    probs, votes, gt = vote_scene(method, items, n, 5, CPU, batch_size=3)
    want_probs, want_votes = np.zeros((n, 5)), np.zeros(n, dtype=np.int64)
    for item in items:
        p = method.predict({k: v[None] for k, v in item.items()})[0].softmax(-1).numpy()
        for row in np.flatnonzero(item["mask"].numpy()):
            want_probs[item["point_index"][row]] += p[row]
            want_votes[item["point_index"][row]] += 1
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)
    assert np.array_equal(votes, want_votes) and (votes > 0).all()   # every original point predicted
    assert np.array_equal(gt, data.scenes[0]["segment"])


class _Leaky(SceneDataset):
    """A SceneDataset whose whole-scene crops miss one point (the protocol must refuse to score it)."""

    def test_items(self, scene, max_passes=None):
        items = super().test_items(scene, max_passes)
        for item in items:
            item["mask"] = item["mask"] & (item["point_index"] != 7)
        return items


def test_whole_scene_testing_refuses_an_unpredicted_point():
    leaky = _Leaky(_scenes(1), voxel_size=0.25, max_points=256)
    with pytest.raises(RuntimeError, match="room_0: 1 of 1500 points got no prediction"):
        evaluate(_Seg(5), {"eval": leaky}, CPU, NAMES, SceneSegConfig(), split="test")
    evaluate(_Seg(5), {"eval": leaky}, CPU, NAMES, SceneSegConfig(), split="val")  # one pass: scored where predicted


def _real_scenes(name: str, step: int) -> SceneSet:
    """The shared sample's scenes, every ``step``-th point (for speed) of those at distinct coordinates (S3DIS
    stores millimetres, and a few points share them)."""
    scenes = read_scannet(real(SHARED_DATA / "scannet_subset")) if name == "scannet" else \
        read_s3dis(real(SHARED_DATA / "s3dis_subset"), layout="npy")
    kept = []
    for i in range(len(scenes)):
        scene = scenes[i]
        rows = np.sort(np.unique(scene["coord"], axis=0, return_index=True)[1])[::step]
        kept.append({k: v[rows] for k, v in scene.items()})
    return SceneSet(scenes.names, kept, scenes.class_names)


@pytest.mark.parametrize("name", ["scannet", "s3dis"])
def test_a_perfect_predictor_scores_one_on_a_real_sample(name):
    scenes = _real_scenes(name, 8)
    table = {}
    for i in range(len(scenes)):
        coord, seg = scenes[i]["coord"], scenes[i]["segment"]
        assert len(np.unique(coord, axis=0)) == len(coord)  # coordinates identify points
        table.update(zip(_keys(coord), seg.tolist()))
    data = SceneDataset(scenes, voxel_size=0.05, max_points=2048)
    labelled = int(sum((scenes[i]["segment"] != IGNORE_INDEX).sum() for i in range(len(scenes))))
    present = {scenes.class_names[c] for c in np.flatnonzero(scenes.label_counts())}
    for split, cfg in (("test", SceneSegConfig()), ("val", SceneSegConfig()),
                       ("val", SceneSegConfig(val="crops"))):
        scores, cm, arrays = evaluate(_Seg(scenes.num_classes, "lookup", table), {"eval": data}, CPU,
                                      scenes.class_names, cfg, batch_size=8, return_arrays=True, split=split)
        assert scores["mIoU"] == scores["OA"] == scores["mAcc"] == 1.0, (split, cfg.val)
        assert {k[4:] for k in scores if k.startswith("iou/")} <= present
        if split == "test":  # every labelled original point scored exactly once
            assert cm.sum() == labelled and {k[4:] for k in scores if k.startswith("iou/")} == present
    assert set(arrays) == set(RENDER_ARRAYS) and list(arrays["scene_names"]) == scenes.names[:4]


# ---- data parallel -----------------------------------------------------------------------------------------

_CASES = (("whole", "test", SceneSegConfig(render_points=300)),
          ("pass", "val", SceneSegConfig(render=2, render_points=200)),
          ("crops", "val", SceneSegConfig(val="crops", render_points=100)))


def _merge_worker(rank: int) -> dict:
    """What one of the 2 gloo workers scores (:func:`helpers.on_gloo_workers`)."""
    out = {}
    for mode, split, cfg in _CASES:
        method = _Seg(5)
        scores, cm, arrays = evaluate(method, {"eval": _dataset(3)}, CPU, NAMES, cfg, batch_size=4,
                                      return_arrays=True, split=split)
        out[mode] = (scores, cm, arrays, method.scenes)
    return out


@pytest.mark.slow  # spawns a 2-process gloo group
def test_two_workers_merge_to_the_single_process_result(tmp_path):
    parts = on_gloo_workers(_merge_worker, tmp_path, WORLD)
    for mode, split, cfg in _CASES:
        single, cm, arrays = evaluate(_Seg(5), {"eval": _dataset(3)}, CPU, NAMES, cfg, batch_size=4,
                                      return_arrays=True, split=split)
        assert 0 < single["mIoU"] < 1 and "iou/lamp" not in single, mode
        for rank, part in enumerate(parts):
            scores, cm_r, arrays_r, seen = part[mode]
            assert scores == single, (mode, rank)              # exactly, not approximately
            assert np.array_equal(cm, cm_r), (mode, rank)
            assert arrays.keys() == arrays_r.keys() and all(np.array_equal(arrays[k], arrays_r[k]) for k in arrays)
            assert seen == set(range(rank, 3, WORLD)), (mode, rank)   # its shard of the scenes only
        assert len(arrays["scene_names"]) == min(3, cfg.render)
        assert np.bincount(arrays["scene_index"]).max() <= cfg.render_points


# ---- pictures ----------------------------------------------------------------------------------------------

def test_class_colours_are_the_standard_palettes():
    s3dis, scannet = class_colors(S3DIS_CLASSES), class_colors(SCANNET20_CLASSES)
    assert s3dis.shape == (13, 3) and scannet.shape == (20, 3)
    np.testing.assert_allclose(s3dis[S3DIS_CLASSES.index("chair")], np.array(S3DIS_COLORS["chair"]) / 255)
    np.testing.assert_allclose(scannet[0], np.array([174, 199, 232]) / 255)       # wall, ScanNet's colour
    np.testing.assert_allclose(class_colors(["wall", "floor"])[0], np.array(S3DIS_COLORS["wall"]) / 255)
    np.testing.assert_allclose(class_colors(["wall", "desk"])[0], np.array(SCANNET20_COLORS["wall"]) / 255)
    assert class_colors(["wall", "zeppelin"]).shape == (2, 3)


def test_render_writes_a_png(tmp_path):
    scene = _real_scenes("s3dis", 20)[1]           # a hallway with its ceiling
    gt = scene["segment"]
    pred = np.where(np.random.default_rng(0).random(len(gt)) < 0.8, np.clip(gt, 0, None), 8)
    path = render_scene(scene["coord"], gt, pred, S3DIS_CLASSES, None, tmp_path / "room.png", title="hallway",
                        oblique=True)
    assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="labels outside"):
        render_scene(scene["coord"], gt, pred + 13, S3DIS_CLASSES, None, tmp_path / "bad.png")


def test_best_checkpoint_renders_reach_mlflow(tmp_path, monkeypatch):
    from pointtune import tracking
    from pointtune.train.artifacts import log_checkpoint_artifacts
    from pointtune.train.checkpoint import save_state

    _, cm, arrays = evaluate(_Seg(5), {"eval": _dataset(3)}, CPU, NAMES, SceneSegConfig(render=2),
                             return_arrays=True, split="val")
    logged = {}

    def log_artifact(uri, run_id, path, artifact_path=None):
        logged[artifact_path or path.name] = sorted(p.name for p in path.iterdir()) if path.is_dir() else path.name

    monkeypatch.setattr(tracking, "log_artifact", log_artifact)
    ckpt = save_state(tmp_path / "ckpt", {"experiment": {"method": {"name": "fake"}, "protocol": {
        "render_oblique": False}}, "epoch": 3, "class_names": NAMES, "metrics": {}})
    np.save(ckpt / "confusion.npy", cm)
    for name, array in arrays.items():  # what the training loop does with a protocol's arrays
        np.save(ckpt / f"{name}.npy", array)
    log_checkpoint_artifacts("sqlite:///unused", "run", str(ckpt), "trial t")
    assert logged["scenes"] == ["00_room_0.png", "01_room_1.png"]
    assert render_checkpoint_scenes(ckpt, NAMES, tmp_path / "again")[0].read_bytes()[:4] == b"\x89PNG"
