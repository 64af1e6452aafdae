"""Scene datasets in the platform's data pipeline: ``data.*`` scene knobs and their one-line errors,
``build_datasets`` on the real S3DIS and ScanNet samples, the loop's DataLoader on scene items, preflight of a
segmentation method on scenes, and one training epoch of the shared loop.

The segmentation method and the protocol below are test-only (registered under names starting with ``_``): a
per-point MLP on points + colour trained with cross-entropy that ignores label -1, and a point-accuracy
protocol, so that these tests do not depend on a real segmentation method or on ``scene_seg``. One test also
runs the default segmentation protocol when it is registered.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader

from conftest import SHARED_DATA
from helpers import one_line_error, real
from pointtune.config import ConfigError, build_config
from pointtune.data import (
    IGNORE_INDEX,
    DataConfig,
    DatasetError,
    SceneDataset,
    build_datasets,
    collate_scenes,
    dataset_names,
    describe_split,
    is_scene_dataset,
    scene_defaults,
)
from pointtune.data.cache import cache_key
from pointtune.data.scene_transforms import S3DIS_COLOR_MEAN, S3DIS_COLOR_STD
from pointtune.data.scenes import S3DIS_CLASSES, SCANNET20_CLASSES
from pointtune.method import Method, MethodConfig, Task
from pointtune.preflight import preflight
from pointtune.protocols import Protocol, protocol_names, shard_loader, to_device
from pointtune.train.loop import LoopConfig, run_loop

S3DIS = SHARED_DATA / "s3dis_subset"
SCANNET = SHARED_DATA / "scannet_subset"
TEST_METHOD = "_scene_mlp_test"
TEST_PROTOCOL = "_scene_point_acc_test"


# ----------------------------------------------------------------------------- test-only method and protocol


class SceneMLPConfig(MethodConfig):
    """Hyperparameters of the test-only per-point MLP."""

    builds_backbone: ClassVar[bool] = False
    hidden: int = Field(16, ge=1, description="test-only segmentation MLP: width of its hidden layer")


class SceneMLP(Method):
    """Test-only segmentation method: logits ``(B, N, K)`` of a per-point MLP on ``points`` and ``color``;
    ``forward`` is the cross-entropy over points labelled other than -1."""

    task = Task.SEGMENTATION
    Config = SceneMLPConfig

    def __init__(self, cfg: SceneMLPConfig, num_classes: int, total_epochs: int = 1):
        super().__init__(cfg, num_classes, total_epochs)
        self.mlp = nn.Sequential(nn.Linear(6, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, num_classes))

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(torch.cat([batch["points"], batch["color"]], dim=-1))

    def forward(self, batch, epoch, progress):
        logits, seg = self._logits(batch), batch["seg"]
        loss = F.cross_entropy(logits.reshape(-1, self.num_classes), seg.reshape(-1), ignore_index=IGNORE_INDEX)
        valid = seg != IGNORE_INDEX
        acc = ((logits.argmax(-1) == seg) & valid).sum() / valid.sum().clamp(min=1)
        return {"loss": loss, "acc": acc.detach()}

    @torch.no_grad()
    def predict(self, batch):
        return self._logits(batch)


class PointAccuracy(Protocol):
    """Test-only protocol: accuracy over the real, labelled points of the scored split's own items (one
    process)."""

    tasks = frozenset({Task.SEGMENTATION})
    per_class = False
    own_data = False

    def metrics(self, cfg):
        return ("point_acc",)

    def check_output(self, method, batch, num_classes):
        out = method.predict(batch)
        if tuple(out.shape) != (*batch["seg"].shape, num_classes):
            raise ValueError(f"predict returned {tuple(out.shape)}, expected (B, N, {num_classes})")

    def run(self, method, splits, device, class_names, cfg, batch_size=64, num_workers=0):
        method.eval()
        hits = total = 0
        for batch in shard_loader(splits["eval"], batch_size, num_workers):
            batch = to_device(batch, device)
            valid = batch["mask"] & (batch["seg"] != IGNORE_INDEX)
            hits += int(((method.predict(batch).argmax(-1) == batch["seg"]) & valid).sum())
            total += int(valid.sum())
        return {"point_acc": hits / max(total, 1)}, None, {}


@pytest.fixture(autouse=True, scope="module")
def _test_method_and_protocol():
    """Register the test-only method and protocol for this module's tests only (the registries are global:
    left registered they would show up in every later test's lists of known names)."""
    from pointtune.method import _METHODS
    from pointtune.protocols.base import _PROTOCOLS

    patch = pytest.MonkeyPatch()
    PointAccuracy.name = TEST_PROTOCOL
    patch.setitem(_METHODS._items, TEST_METHOD, SceneMLP)
    patch.setitem(_PROTOCOLS._items, TEST_PROTOCOL, PointAccuracy())
    yield
    patch.undo()


class Recorder:
    """A session that keeps what the loop reports (rank 0 of one process, CPU)."""

    rank, world_size, device = 0, 1, torch.device("cpu")

    def __init__(self):
        self.reports = []

    def checkpoint_dir(self):
        return None

    def report(self, metrics, checkpoint, owned=False):
        self.reports.append(dict(metrics))
        if checkpoint is not None and owned:
            shutil.rmtree(checkpoint)

    def prepare_model(self, model, ddp_options):
        return model

    def prepare_loader(self, loader):
        return loader


def scene_exp(name: str, root: Path, **overrides):
    """The test method's experiment on a scene dataset, small enough to train an epoch in seconds."""
    return build_config(TEST_METHOD, overrides={
        "data.name": name, "data.root": str(root), "train.batch_size": 4, "train.epochs": 1,
        "protocol.name": TEST_PROTOCOL, "optim.name": "adamw", "optim.lr": 0.01, **overrides})


# ----------------------------------------------------------------------------------------------- config


def test_scene_datasets_are_registered_with_their_defaults():
    assert {"s3dis", "scannet"} <= set(dataset_names()) and "modelnet40" in dataset_names()
    assert is_scene_dataset("s3dis") and is_scene_dataset("scannet") and not is_scene_dataset("modelnet40")
    assert scene_defaults("modelnet40") is None
    s3dis, scannet = DataConfig(name="s3dis"), DataConfig(name="scannet")
    assert (s3dis.num_points, scannet.num_points, DataConfig().num_points) == (4096, 4096, 1024)
    assert s3dis.scene_values() == {"voxel_size": 0.04, "loop": 30, "scale_low": 0.9, "scale_high": 1.1,
                                    "mirror": [0.0, 0.0, 0.0], "jitter_sigma": 0.005, "color_norm": "s3dis"}
    assert scannet.scene_values() == {"voxel_size": 0.02, "loop": 6, "scale_low": 0.8, "scale_high": 1.2,
                                      "mirror": [0.2, 0.0, 0.0], "jitter_sigma": 0.0, "color_norm": "scannet"}
    # the paper scale is a few keys away
    paper = DataConfig(name="scannet", num_points=64000, voxel_size=0.02, loop=6)
    assert (paper.num_points, paper.scene_values()["voxel_size"], paper.scene_values()["loop"]) == (64000, 0.02, 6)
    with pytest.raises(ValueError, match="not a scene dataset"):
        DataConfig().scene_values()


def test_a_written_config_keeps_the_nulls_and_fits_the_other_dataset():
    exp = build_config(TEST_METHOD, overrides={"data.name": "s3dis", "data.voxel_size": 0.05})
    tree = exp.to_dict()
    assert tree["data"]["loop"] is None and tree["data"]["scene_augment"]["scale_low"] is None
    again = build_config(TEST_METHOD, tree, overrides={"data.name": "scannet", "data.voxel_size": None})
    assert again.data.scene_values()["scale_low"] == 0.8 and again.data.scene_values()["voxel_size"] == 0.02
    # the scene knobs do not change the cache key of a point-cloud dataset
    assert cache_key(DataConfig(name="modelnet40", root="/x")) == cache_key(
        DataConfig.model_validate(DataConfig(name="modelnet40", root="/x").model_dump()))


@pytest.mark.parametrize("overrides,fragments", [
    ({"data.name": "s3dis", "data.classes": ["chair", "table"]}, ["data.classes", "scene dataset 's3dis'"]),
    ({"data.name": "s3dis", "data.sampling": "fps"}, ["data.sampling", "sphere-cropped"]),
    ({"data.name": "scannet", "data.use_normals": True}, ["data.use_normals", "no normals"]),
    ({"data.name": "scannet", "data.variant": "OBJ_BG"}, ["data.variant"]),
    ({"data.name": "s3dis", "data.augment.rotate_up": True}, ["data.augment", "data.scene_augment"]),
    ({"data.name": "scannet", "data.test_area": 2}, ["data.test_area", "S3DIS knob", "'scannet'"]),
    ({"data.name": "scannet", "data.layout": "txt"}, ["data.layout", "S3DIS knob"]),
    ({"data.name": "modelnet40", "data.voxel_size": 0.05}, ["data.voxel_size", "scene-dataset knob", "'modelnet40'"]),
    ({"data.scene_augment.height": False}, ["data.scene_augment", "'synthetic' is not a scene dataset"]),
    ({"data.loop": 3}, ["data.loop", "scene-dataset knob"]),
    ({"data.name": "s3dis", "data.test_area": 2, "data.val_area": 2}, ["data.val_area", "test area"]),
    ({"data.name": "s3dis", "data.test_area": 0}, ["data.test_area", "area number >= 1"]),
    ({"data.name": "s3dis", "data.test_area": "five"}, ["data.test_area", "auto"]),
    ({"data.name": "s3dis", "data.val_area": 0}, ["data.val_area", "greater than or equal to 1"]),
    ({"data.name": "s3dis", "data.loop": 0}, ["data.loop", "greater than or equal to 1"]),
    ({"data.name": "s3dis", "data.voxel_size": 0}, ["data.voxel_size", "greater than 0"]),
    ({"data.name": "s3dis", "data.scene_augment.scale_low": 1.2}, ["data.scene_augment.scale_low", "1.2",
                                                                   "scale_high 1.1"]),
    ({"data.name": "s3dis", "data.scene_augment.mirror": [0.5, 2, 0]}, ["data.scene_augment.mirror",
                                                                        "3 probabilities"]),
    ({"data.name": "s3dis", "data.scene_augment.color_norm": "rgb"}, ["data.scene_augment.color_norm", "unit"]),
    ({"data.name": "s3dis", "data.scene_augment.auto_contrast_p": 1.5}, ["data.scene_augment.auto_contrast_p"]),
    ({"data.name": "s3dis", "data.scene_augment.rotat_z_deg": 90}, ["data.scene_augment.rotat_z_deg",
                                                                    "data.scene_augment.rotate_z_deg"]),
])
def test_bad_scene_knobs_are_one_line_naming_the_key(overrides, fragments):
    with pytest.raises(ConfigError) as info:
        build_config(TEST_METHOD, overrides=overrides, source="--set")
    one_line_error(info, "--set: ", *fragments)


def test_knobs_scenes_ignore_and_the_ones_they_accept():
    exp = build_config(TEST_METHOD, overrides={
        "data.name": "s3dis", "data.normalize": False, "data.cache": False, "data.synthetic_per_class": 3,
        "data.test_area": None, "data.val_area": 2, "data.layout": "npy", "data.lazy": True,
        "data.scene_augment.scale_low": 1.0, "data.scene_augment.scale_high": 1.0, "data.num_points": 24000})
    assert exp.data.test_area is None and exp.data.val_area == 2 and exp.data.num_points == 24000
    assert build_config(TEST_METHOD, overrides={"data.name": "s3dis", "data.test_area": 3}).data.test_area == 3


# ------------------------------------------------------------------------------------------ real samples


def check_items(dataset: SceneDataset, num_points: int, num_classes: int, keys: set[str]):
    for i in range(len(dataset)):
        item = dataset[i]
        assert set(item) == keys, sorted(item)
        n = item["points"].shape[0]
        assert n == num_points and item["points"].shape == (n, 3) and item["points"].dtype == torch.float32
        assert item["color"].shape == (n, 3) and item["height"].shape == (n, 1)
        assert item["seg"].dtype == torch.int64 and item["mask"].dtype == torch.bool and item["index"].shape == ()
        seg = item["seg"]
        assert int(seg.min()) >= IGNORE_INDEX and int(seg.max()) < num_classes
        assert (seg[~item["mask"]] == IGNORE_INDEX).all()  # padding is never labelled
        if "instance" in keys:
            assert item["instance"].shape == (n,)


@pytest.mark.realdata
def test_build_datasets_on_the_s3dis_sample(capsys):
    data = build_datasets(DataConfig(name="s3dis", root=str(real(S3DIS))))
    line = capsys.readouterr().out
    assert "[pointtune] data s3dis" in line and "no test split" in line and "test area 5 is not there" in line
    assert "validation 1 room(s) (Area_1_conferenceRoom_1)" in line or "validation 1 room(s) (Area_1_hallway_1)" in line
    assert data.kind == "scenes" and data.class_names == S3DIS_CLASSES and data.num_classes == 13
    assert isinstance(data.train, SceneDataset) and data.train.train and not data.val.train
    assert (len(data.train), len(data.val), len(data.test), len(data.train_eval)) == (30, 1, 0, 1)
    assert set(data.train.scenes.names).isdisjoint(data.val.scenes.names)
    keys = {"points", "color", "height", "seg", "mask", "point_index", "index"}
    for split in (data.train, data.val, data.train_eval):
        check_items(split, 4096, 13, keys)
    # evaluation items: deterministic, centred (x, y on their mean, z from 0), height = z, S3DIS colour statistics
    a, b = data.val[0], data.val[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pts = a["points"].double()
    assert pts[:, :2].mean(0).abs().max() < 1e-4 and float(pts[:, 2].min()) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(a["height"][:, 0], a["points"][:, 2])
    scene = data.val.scenes[0]
    raw = scene["color"][a["point_index"].numpy()] / 255.0
    np.testing.assert_allclose(a["color"].numpy(), (raw - S3DIS_COLOR_MEAN) / S3DIS_COLOR_STD, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(a["seg"].numpy(), scene["segment"][a["point_index"].numpy()])
    # training items: every visit a fresh crop and augmentation
    torch.manual_seed(0)
    data.train.set_epoch(0)
    first, second = data.train[0], data.train[0]
    assert not torch.equal(first["points"], second["points"])
    summary = describe_split(data.train)
    assert summary.text == "30 items (1 scene x loop 30, voxel 0.04 m, crops of 4096 points)"
    assert summary.unit == "point" and (summary.class_counts > 0).sum() == 2


@pytest.mark.realdata
def test_s3dis_layouts_give_the_same_items_and_padding_is_ignored():
    root = str(real(S3DIS))
    npy = build_datasets(DataConfig(name="s3dis", root=root, layout="npy", voxel_size=0.5, num_points=512))
    txt = build_datasets(DataConfig(name="s3dis", root=root, layout="txt", voxel_size=0.5, num_points=512))
    lazy = build_datasets(DataConfig(name="s3dis", root=root, lazy=True, voxel_size=0.5, num_points=512))
    for other in (txt, lazy):
        a, b = npy.val[0], other.val[0]
        assert set(a) - {"instance"} == set(b) - {"instance"}   # the annotation layout also has instance ids
        assert all(torch.equal(a[k], b[k]) for k in a if k != "instance")
    assert lazy.val.scenes.lazy and not npy.val.scenes.lazy
    item = npy.val[0]
    assert item["points"].shape == (512, 3) and 0 < int(item["mask"].sum()) < 512   # 0.5 m voxels: padded
    assert (item["seg"][~item["mask"]] == IGNORE_INDEX).all() and (item["seg"][item["mask"]] >= 0).all()


@pytest.mark.realdata
def test_s3dis_areas_and_splits(capsys):
    root = str(real(S3DIS))
    cases = [
        ({"test_area": 2}, ["data.test_area: S3DIS area 2 is not under", "areas present: 1", "data.test_area=null"]),
        ({"val_area": 3}, ["data.val_area: S3DIS area 3 is not under", "areas present: 1"]),
        ({"test_area": 1}, ["no S3DIS area left for training", "test area 1"]),
        ({"test_area": None, "val_area": 1}, ["no S3DIS area left for training", "validation area 1"]),
        ({"val_fraction": 0.0, "root": "/nonexistent/s3dis"}, ["/nonexistent/s3dis"]),
        ({"root": None}, ["data.root", "'s3dis'", "--data-root"]),
    ]
    for overrides, fragments in cases:
        with pytest.raises(DatasetError) as info:
            build_datasets(DataConfig.model_validate({"name": "s3dis", "root": root, **overrides}))
        one_line_error(info, *fragments)
    explicit = build_datasets(DataConfig(name="s3dis", root=root, test_area=None))
    assert "no test split (data.test_area=null)" in capsys.readouterr().out and len(explicit.test) == 0
    none = build_datasets(DataConfig(name="s3dis", root=root, val_fraction=0.0))
    assert len(none.val) == 0 and len(none.train.scenes) == 2   # refused by preflight (test below)


@pytest.mark.realdata
def test_build_datasets_on_the_scannet_sample(capsys):
    data = build_datasets(DataConfig(name="scannet", root=str(real(SCANNET))))
    line = capsys.readouterr().out
    assert "[pointtune] data scannet" in line and "2 scenes are split by pointtune" in line
    assert "1 train (scene0000_" in line and "1 validation (scene0000_" in line and "no test split" in line
    assert data.kind == "scenes" and data.class_names == SCANNET20_CLASSES and data.num_classes == 20
    assert (len(data.train), len(data.val), len(data.test)) == (6, 1, 0)
    keys = {"points", "color", "height", "seg", "mask", "point_index", "index", "instance"}
    for split in (data.train, data.val):
        check_items(split, 4096, 20, keys)
    scene = data.val.scenes[0]["segment"]
    assert (scene == IGNORE_INDEX).mean() > 0.05 and (data.val[0]["seg"] >= 0).sum() > 1000   # NYU40 classes
    # outside the 20 are read as ignored
    assert describe_split(data.val).class_counts.sum() == int((data.val.scenes[0]["segment"] >= 0).sum())


def link_scannet(root: Path, scenes: dict[str, str]) -> Path:
    """A ScanNet directory of symlinks: ``{new name: sample scene}``."""
    root.mkdir()
    for new, old in scenes.items():
        for path in real(SCANNET).glob(f"{old}_*.npy"):
            (root / path.name.replace(old, new)).symlink_to(path)
    return root


@pytest.mark.realdata
def test_scannet_official_lists_and_a_seeded_test_split(tmp_path, capsys):
    copies = {"scene0000_00": "scene0000_00", "scene0000_01": "scene0000_01", "scene0000_02": "scene0000_00"}
    three = link_scannet(tmp_path / "three", copies)
    data = build_datasets(DataConfig(name="scannet", root=str(three)))
    assert (len(data.train.scenes), len(data.val), len(data.test)) == (1, 1, 1)
    assert "3 scenes are split by pointtune" in capsys.readouterr().out
    (three / "scannetv2_train.txt").write_text("scene0000_00\nscene0000_02\n")
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(name="scannet", root=str(three)))
    one_line_error(info, "scannetv2_val.txt")
    (three / "scannetv2_val.txt").write_text("scene0000_01\n")
    data = build_datasets(DataConfig(name="scannet", root=str(three)))
    line = capsys.readouterr().out
    assert "the official lists: 1 train and 1 validation scenes" in line and "1 test scenes" in line
    assert data.test.scenes.names == ["scene0000_01"] and len(data.val) == 1 and len(data.train.scenes) == 1
    assert set(data.train.scenes.names + data.val.scenes.names) == {"scene0000_00", "scene0000_02"}
    (three / "scannetv2_train.txt").write_text("scene0000_00\n")
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(name="scannet", root=str(three)))
    one_line_error(info, "data.val_fraction: 0.1 of the 1 training scenes", "gives no validation scene")


# ---------------------------------------------------------------------------------------- loader and loop


@pytest.mark.realdata
def test_the_loops_data_loader_collates_scene_batches():
    data = build_datasets(DataConfig(name="scannet", root=str(real(SCANNET)), num_points=1024))
    loader = DataLoader(data.train, batch_size=4, shuffle=True, drop_last=True)   # as the loop builds it
    batches = list(loader)
    assert len(batches) == 1
    batch = batches[0]
    assert batch["points"].shape == (4, 1024, 3) and batch["color"].shape == (4, 1024, 3)
    assert batch["height"].shape == (4, 1024, 1) and batch["seg"].shape == (4, 1024)
    assert batch["mask"].shape == (4, 1024) and batch["mask"].dtype == torch.bool
    assert batch["point_index"].shape == (4, 1024) and batch["index"].shape == (4,)
    items = [data.val[0], data.val[0]]
    stacked = collate_scenes(items)
    assert all(torch.equal(stacked[k], torch.utils.data.default_collate(items)[k]) for k in stacked)


@pytest.mark.realdata
def test_preflight_of_a_segmentation_method_on_scenes():
    exp = scene_exp("s3dis", real(S3DIS))
    result = preflight(exp, objective="val/point_acc")
    assert {"loss", "acc"} <= set(result.loss_terms) and result.data.kind == "scenes"
    bad = [
        (scene_exp("s3dis", S3DIS, **{"train.batch_size": 64}), ConfigError,
         ["train.batch_size: 64 items per worker", "30 training items (1 scene(s) x data.loop 30)", "data.loop"]),
        (scene_exp("s3dis", S3DIS, **{"data.val_fraction": 0.0}), DatasetError, ["data.val_fraction"]),
        (build_config("cedr", overrides={"data.name": "s3dis", "data.root": str(S3DIS), "train.batch_size": 4}),
         ConfigError, ["scene dataset", "classification"]),
    ]
    for exp, error, fragments in bad:
        with pytest.raises(error) as info:
            preflight(exp)
        one_line_error(info, *fragments)


@pytest.mark.realdata
def test_preflight_needs_two_classes_in_the_training_points(tmp_path):
    room = np.load(real(S3DIS) / "Area_1_hallway_1.npy")
    np.save(tmp_path / "Area_1_hallway_1.npy", room[room[:, 6] == room[0, 6]])   # one class only
    np.save(tmp_path / "Area_2_other_1.npy", room)
    exp = scene_exp("s3dis", tmp_path, **{"data.val_area": 2})
    with pytest.raises(DatasetError) as info:
        preflight(exp)
    one_line_error(info, "data: the training scenes of dataset 's3dis' hold labelled points of 1 class(es)")


@pytest.mark.realdata
@pytest.mark.parametrize("name,root", [("s3dis", S3DIS), ("scannet", SCANNET)])
def test_one_epoch_of_the_shared_loop_on_scenes(name, root, capsys):
    exp = scene_exp(name, real(root), **{"data.num_points": 2048})
    session = Recorder()
    run_loop(LoopConfig(exp, "val/point_acc", "max"), session)
    out = capsys.readouterr().out
    loop = 30 if name == "s3dis" else 6
    assert f"[pointtune] data {name} train: {loop} items (1 scene x loop {loop}" in out
    (metrics,) = session.reports
    assert metrics["epoch"] == 1 and np.isfinite(metrics["train/loss"]) and 0 <= metrics["val/point_acc"] <= 1
    assert not any(k.startswith("test/") for k in metrics)   # neither sample has a test split


@pytest.mark.realdata
def test_one_epoch_with_the_default_segmentation_protocol(capsys):
    if "scene_seg" not in protocol_names():
        pytest.skip("no scene_seg protocol registered yet")
    exp = scene_exp("scannet", real(SCANNET), **{"data.num_points": 2048, "protocol.name": None})
    session = Recorder()
    run_loop(LoopConfig(exp, "val/mIoU", "max"), session)
    (metrics,) = session.reports
    assert 0 <= metrics["val/mIoU"] <= 1 and np.isfinite(metrics["train/loss"])
