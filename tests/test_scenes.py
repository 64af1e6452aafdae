"""Scene readers (S3DIS both layouts, ScanNet v2 per-scene arrays) on the real samples in ../shared/data,
their splits, their one-line errors on small hand-made files, and SceneDataset / collate_scenes.

Real-data tests skip only where ../shared/data is absent. The samples are linked into tmp_path where a test
needs another layout, never copied."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pointtune.data.errors import DatasetError
from pointtune.data.scene_dataset import SceneDataset, collate_scenes
from pointtune.data.scene_transforms import CenterShift, ChromaticNormalize, HeightFeature, RotateZ, SceneCompose
from pointtune.data.scenes import (
    IGNORE_INDEX,
    NYU40_TO_SCANNET20,
    S3DIS_CLASSES,
    SCANNET20_CLASSES,
    SCANNET20_NYU40_IDS,
    SceneSet,
    read_s3dis,
    read_s3dis_room_npy,
    read_s3dis_room_txt,
    read_scannet,
    read_scannet_scene,
    s3dis_areas,
    s3dis_splits,
    scannet_scene_names,
    scannet_splits,
    seeded_scene_split,
)

from conftest import SHARED_DATA
from helpers import one_line_error, real

S3DIS = SHARED_DATA / "s3dis_subset"
SCANNET = SHARED_DATA / "scannet_subset"
# What ../shared/data/README.md and the files say: partial rooms, 2 classes each.
S3DIS_ROOMS = {"Area_1_conferenceRoom_1": (100000, {"wall": 50000, "beam": 50000}),
               "Area_1_hallway_1": (69370, {"ceiling": 50000, "chair": 19370})}
SCANNET_POINTS = {"scene0000_00": 81369, "scene0000_01": 80583}
# scene0000_00: points per ScanNet-20 class after the NYU40 map, and the ignored rest (NYU40 0 = unannotated,
# and the ids 15, 18, 19, 22, 25, 32, 38, 40 that the benchmark leaves out).
SCENE0_CLASSES = {"wall": 13899, "floor": 10234, "cabinet": 9809, "bed": 2954, "sofa": 5099, "table": 4479,
                  "door": 1414, "window": 824, "counter": 462, "desk": 1897, "curtain": 5519, "refrigerator": 1404,
                  "toilet": 454, "sink": 362, "otherfurniture": 642}
SCENE0_IGNORED, SCENE1_IGNORED = 21917, 17369


def histogram(segment: np.ndarray, classes: list[str]) -> dict[str, int]:
    counts = np.bincount(segment[segment >= 0], minlength=len(classes))
    return {classes[i]: int(c) for i, c in enumerate(counts) if c}


def link_tree(src: Path, dst: Path, keep=lambda p: True) -> Path:
    """``dst`` with a symlink to every entry of ``src`` that ``keep`` accepts."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        if keep(entry):
            (dst / entry.name).symlink_to(entry)
    return dst


def write_rows(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tiny_room(root: Path, area: int = 1, room: str = "office_1") -> Path:
    """A valid 2-object room in the annotation layout."""
    ann = root / f"Area_{area}" / room / "Annotations"
    write_rows(ann / "floor_1.txt", "0 0 0 10 20 30\n1 0 0 10 20 30\n")
    write_rows(ann / "chair_1.txt", "0.5 0.5 0.4 200 100 0\n")
    return root


# ------------------------------------------------------------------------------------------ class maps


def test_class_lists_and_the_nyu40_map():
    assert S3DIS_CLASSES[0] == "ceiling" and S3DIS_CLASSES[7:9] == ["table", "chair"] and len(S3DIS_CLASSES) == 13
    assert len(SCANNET20_CLASSES) == len(SCANNET20_NYU40_IDS) == 20
    np.testing.assert_array_equal(NYU40_TO_SCANNET20[list(SCANNET20_NYU40_IDS)], np.arange(20))
    others = sorted(set(range(41)) - set(SCANNET20_NYU40_IDS))
    assert others[0] == 0 and len(others) == 21 and (NYU40_TO_SCANNET20[others] == IGNORE_INDEX).all()
    assert IGNORE_INDEX == -1 and not NYU40_TO_SCANNET20.flags.writeable


# ------------------------------------------------------------------------------------------ S3DIS, real


def test_s3dis_npy_rooms_have_the_known_points_and_labels():
    root = real(S3DIS)
    for name, (points, classes) in S3DIS_ROOMS.items():
        scene = read_s3dis_room_npy(root / f"{name}.npy")
        assert scene["coord"].shape == (points, 3) and scene["coord"].dtype == np.float32
        assert scene["color"].dtype == np.float32 and 0 <= scene["color"].min() and scene["color"].max() <= 255
        assert scene["segment"].dtype == np.int64 and "instance" not in scene
        assert histogram(scene["segment"], S3DIS_CLASSES) == classes
        assert np.abs(scene["coord"]).max() > 10  # metres in the building frame, as stored (not shifted)


def test_s3dis_annotation_layout_agrees_with_the_npy_layout():
    root = real(S3DIS)
    txt, npy = read_s3dis(root, layout="txt"), read_s3dis(root, layout="npy")
    assert txt.names == npy.names == sorted(S3DIS_ROOMS)
    for i, name in enumerate(txt.names):
        a, b = txt[i], npy[i]
        assert len(a["coord"]) == len(b["coord"]) == S3DIS_ROOMS[name][0]
        assert histogram(a["segment"], S3DIS_CLASSES) == histogram(b["segment"], S3DIS_CLASSES)
        np.testing.assert_array_equal(a["segment"], b["segment"])  # same row order: natural file order
        np.testing.assert_allclose(a["coord"], b["coord"], atol=1e-5)
        np.testing.assert_array_equal(a["color"], b["color"])
        # one instance per annotation file
        assert sorted(np.unique(a["instance"]).tolist()) == [0, 1]
    np.testing.assert_array_equal(txt.label_counts(), npy.label_counts())
    assert txt.label_counts()[S3DIS_CLASSES.index("chair")] == 19370


def test_s3dis_auto_layout_reads_annotations_when_there_is_no_npy(tmp_path):
    root = link_tree(real(S3DIS), tmp_path / "s3dis", keep=lambda p: p.is_dir())
    assert s3dis_areas(root) == [1]
    scenes = read_s3dis(root)  # auto: no .npy files here, so the annotation layout
    assert scenes.names == sorted(S3DIS_ROOMS) and "instance" in scenes[0]


def test_s3dis_splits_by_area_and_seeded_rooms(tmp_path):
    root = real(S3DIS)
    with pytest.raises(DatasetError) as err:  # the sample has no Area 5: the standard split names it
        s3dis_splits(root)
    one_line_error(err, "Area_5", "no such area directory")
    train, val, test = s3dis_splits(root, test_area=None, val_fraction=0.1, seed=0)
    assert len(train) == len(val) == 1 and len(test) == 0
    assert sorted(train.names + val.names) == sorted(S3DIS_ROOMS)
    again = s3dis_splits(root, test_area=None, seed=0)
    assert again[1].names == val.names
    # a second area linked in as Area_2 serves as the test area; validation never uses it
    two = link_tree(root, tmp_path / "two")
    (two / "Area_2_hallway_1.npy").symlink_to(root / "Area_1_hallway_1.npy")
    train, val, test = s3dis_splits(two, test_area=2, val_area=None)
    assert test.names == ["Area_2_hallway_1"] and not set(test.names) & set(train.names + val.names)
    train, val, test = s3dis_splits(two, test_area=None, val_area=2)
    assert val.names == ["Area_2_hallway_1"] and len(train) == 2
    with pytest.raises(DatasetError) as err:
        s3dis_splits(two, test_area=2, val_area=2)
    one_line_error(err, "validation area 2 is the test area")
    with pytest.raises(DatasetError) as err:
        s3dis_splits(two, test_area=1, val_area=2)
    one_line_error(err, "no S3DIS area left for training")


def test_seeded_scene_split_rules():
    kept, held = seeded_scene_split(10, 0.2, seed=3)
    assert len(held) == 2 and sorted(kept.tolist() + held.tolist()) == list(range(10))
    assert seeded_scene_split(10, 0.2, seed=3)[1].tolist() == held.tolist()
    assert len(seeded_scene_split(1, 0.5, 0)[1]) == 0  # one scene stays in train
    assert len(seeded_scene_split(5, 0.01, 0)[1]) == 1  # at least one when the fraction is > 0
    assert len(seeded_scene_split(5, 0.0, 0)[1]) == 0
    with pytest.raises(ValueError):
        seeded_scene_split(5, 1.0, 0)


# ------------------------------------------------------------------------------------------ ScanNet, real


def test_scannet_scenes_have_the_known_points_and_label_map():
    root = real(SCANNET)
    assert scannet_scene_names(root) == sorted(SCANNET_POINTS)
    scenes = read_scannet(root)
    for i, name in enumerate(scenes.names):
        s = scenes[i]
        assert s["coord"].shape == (SCANNET_POINTS[name], 3) and s["color"].shape == (SCANNET_POINTS[name], 3)
        assert s["segment"].dtype == np.int64 and s["instance"].shape == (SCANNET_POINTS[name],)
        assert s["segment"].min() == IGNORE_INDEX and s["segment"].max() < 20
        assert 0 <= s["color"].min() and s["color"].max() <= 255
    s0, s1 = scenes[scenes.index("scene0000_00")], scenes[scenes.index("scene0000_01")]
    assert len(s0["coord"]) == 81369
    assert (s0["segment"] == IGNORE_INDEX).sum() == SCENE0_IGNORED
    assert (s0["segment"] >= 0).sum() == 81369 - SCENE0_IGNORED
    assert histogram(s0["segment"], SCANNET20_CLASSES) == SCENE0_CLASSES
    assert (s1["segment"] == IGNORE_INDEX).sum() == SCENE1_IGNORED
    raw = np.load(root / "scene0000_00_sem_label_all.npy")
    np.testing.assert_array_equal(s0["segment"][raw == 0], IGNORE_INDEX)
    np.testing.assert_array_equal(s0["segment"][raw == 5], SCANNET20_CLASSES.index("chair"))


def test_scannet_plain_suffixes_and_lazy_reading(tmp_path):
    root = real(SCANNET)
    plain = tmp_path / "plain"
    plain.mkdir()
    for kind in ("vert", "sem_label"):
        (plain / f"scene0000_00_{kind}.npy").symlink_to(root / f"scene0000_00_{kind}_all.npy")
    scene = read_scannet_scene(plain, "scene0000_00")
    assert len(scene["coord"]) == 81369 and "instance" not in scene
    lazy = read_scannet(root, lazy=True)
    assert lazy.lazy and not read_scannet(plain).lazy
    eager = read_scannet(root)
    np.testing.assert_array_equal(lazy[0]["segment"], eager[0]["segment"])
    thawed = pickle.loads(pickle.dumps(lazy))  # travels to Ray workers
    np.testing.assert_array_equal(thawed[1]["coord"], eager[1]["coord"])
    assert lazy.num_points().tolist() == [SCANNET_POINTS[n] for n in lazy.names]


def test_scannet_splits_with_and_without_the_official_lists(tmp_path, capsys):
    root = real(SCANNET)
    train, val, test = scannet_splits(root, val_fraction=0.5, test_fraction=0.0, seed=0)
    assert "split by pointtune" in capsys.readouterr().out
    assert len(train) == len(val) == 1 and len(test) == 0 and set(train.names) | set(val.names) == set(SCANNET_POINTS)
    train, val, test = scannet_splits(root, test_fraction=0.2, seed=0, verbose=False)
    assert len(train) == 1 and len(val) == 0 and len(test) == 1
    listed = link_tree(root, tmp_path / "listed")
    (listed / "scannetv2_train.txt").write_text("scene0000_00\n")
    (listed / "scannetv2_val.txt").write_text("scene0000_01\n")
    train, val, test = scannet_splits(listed, val_fraction=0.1)
    assert train.names == ["scene0000_00"] and len(val) == 0 and test.names == ["scene0000_01"]
    (listed / "scannetv2_val.txt").write_text("scene0000_01\nscene9999_00\n")
    with pytest.raises(DatasetError) as err:
        scannet_splits(listed)
    one_line_error(err, "scene9999_00_vert.npy", "missing file")
    (listed / "scannetv2_val.txt").unlink()
    with pytest.raises(DatasetError) as err:
        scannet_splits(listed)
    one_line_error(err, "scannetv2_val.txt", "missing file")


# ------------------------------------------------------------------------------------------ bad input


def test_s3dis_text_errors_name_the_file_and_line(tmp_path):
    room = tiny_room(tmp_path / "ok") / "Area_1" / "office_1"
    assert len(read_s3dis_room_txt(room)["coord"]) == 3
    bad = write_rows(tmp_path / "cols" / "Annotations" / "wall_1.txt", "0 0 0 1 2 3\n\n0 0 0 1 2\n")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(bad.parent.parent)
    one_line_error(err, str(bad), "line 3", "5 values", "x y z r g b")
    bad = write_rows(tmp_path / "text" / "Annotations" / "wall_1.txt", "0 0 0 1 2 3\n0 0 0 1 2 3\x10\n")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(bad.parent.parent)
    one_line_error(err, str(bad), "line 2", "non-numeric")
    bad = write_rows(tmp_path / "same" / "Annotations" / "wall_1.txt", "0 0 0 1 2 3 4\n0 0 0 1 2 3 4\n")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(bad.parent.parent)
    one_line_error(err, str(bad), "line 1", "7 values")
    bad = write_rows(tmp_path / "nan" / "Annotations" / "wall_1.txt", "0 0 nan 1 2 3\n")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(bad.parent.parent)
    one_line_error(err, str(bad), "line 1", "non-finite")
    empty = write_rows(tmp_path / "empty" / "Annotations" / "wall_1.txt", "\n")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(empty.parent.parent)
    one_line_error(err, str(empty), "empty file")


def test_s3dis_class_names_and_missing_directories(tmp_path):
    bad = write_rows(tmp_path / "cls" / "Annotations" / "sofa_chair_1.txt", "0 0 0 1 2 3\n")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(bad.parent.parent)
    one_line_error(err, str(bad), "<class>_<n>.txt")
    bad = write_rows(tmp_path / "unknown" / "Annotations" / "lamp_2.txt", "0 0 0 1 2 3\n")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(bad.parent.parent)
    one_line_error(err, str(bad), "'lamp'", "not one of the 13 S3DIS classes")
    stairs = write_rows(tmp_path / "stairs" / "Annotations" / "stairs_1.txt", "0 0 0 1 2 3\n")
    assert read_s3dis_room_txt(stairs.parent.parent)["segment"].tolist() == [S3DIS_CLASSES.index("clutter")]
    (tmp_path / "noann").mkdir()
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_txt(tmp_path / "noann")
    one_line_error(err, str(tmp_path / "noann" / "Annotations"), "lacks Annotations")
    root = tiny_room(tmp_path / "areas")
    with pytest.raises(DatasetError) as err:
        read_s3dis(root, areas=[1, 3])
    one_line_error(err, str(root / "Area_3"), "no such area directory")
    with pytest.raises(DatasetError) as err:
        read_s3dis(tmp_path / "nowhere")
    one_line_error(err, str(tmp_path / "nowhere"), "no such dataset directory")
    with pytest.raises(DatasetError) as err:
        read_s3dis(root, layout="npy")
    one_line_error(err, "no Area_1_<room>.npy files")
    with pytest.raises(DatasetError) as err:
        read_s3dis(root, layout="ply")
    one_line_error(err, "unknown S3DIS layout")
    lazy = read_s3dis(tiny_room(tmp_path / "lazy"), lazy=True)
    (tmp_path / "lazy" / "Area_1" / "office_1" / "Annotations" / "floor_1.txt").write_text("1 2\n")
    with pytest.raises(DatasetError) as err:  # a lazy scene reports its file on access
        lazy[0]
    one_line_error(err, "floor_1.txt", "line 1")


def test_s3dis_npy_errors_name_the_file_and_row(tmp_path):
    rows = np.zeros((5, 7), np.float32)
    np.save(tmp_path / "Area_1_ok.npy", rows)
    assert len(read_s3dis_room_npy(tmp_path / "Area_1_ok.npy")["coord"]) == 5
    np.save(tmp_path / "cols.npy", rows[:, :6])
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_npy(tmp_path / "cols.npy")
    one_line_error(err, "cols.npy", "(5, 6)", "expected (N, 7)")
    label = rows.copy()
    label[3, 6] = 13
    np.save(tmp_path / "label.npy", label)
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_npy(tmp_path / "label.npy")
    one_line_error(err, "label.npy", "row 3", "label 13", "0..12")
    label[3, 6] = 2.5
    np.save(tmp_path / "frac.npy", label)
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_npy(tmp_path / "frac.npy")
    one_line_error(err, "frac.npy", "row 3", "not an integer")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetError) as err:
        read_s3dis_room_npy(tmp_path / "junk.npy")
    one_line_error(err, "junk.npy", "cannot read")


def test_scannet_errors_name_the_file_and_row(tmp_path):
    vert = np.zeros((4, 6), np.float32)
    np.save(tmp_path / "s_vert.npy", vert)
    np.save(tmp_path / "s_sem_label.npy", np.array([1, 2, 0, 39], np.uint32))
    assert read_scannet_scene(tmp_path, "s")["segment"].tolist() == [0, 1, IGNORE_INDEX, 19]
    np.save(tmp_path / "s_sem_label.npy", np.array([1, 2, 41, 39], np.uint32))
    with pytest.raises(DatasetError) as err:
        read_scannet_scene(tmp_path, "s")
    one_line_error(err, "s_sem_label.npy", "row 2", "NYU40 id 41", "0..40")
    np.save(tmp_path / "s_sem_label.npy", np.array([1, 2, 3], np.uint32))
    with pytest.raises(DatasetError) as err:
        read_scannet_scene(tmp_path, "s")
    one_line_error(err, "s_sem_label.npy", "expected (4,)")
    np.save(tmp_path / "s_vert.npy", vert[:, :5])
    with pytest.raises(DatasetError) as err:
        read_scannet_scene(tmp_path, "s")
    one_line_error(err, "s_vert.npy", "(4, 5)", "expected (N, 6)")
    with pytest.raises(DatasetError) as err:
        read_scannet_scene(tmp_path, "t")
    one_line_error(err, "t_vert.npy", "missing file")
    np.save(tmp_path / "u_vert.npy", vert)
    with pytest.raises(DatasetError) as err:
        read_scannet_scene(tmp_path, "u")
    one_line_error(err, "u_sem_label.npy", "missing file")
    with pytest.raises(DatasetError) as err:
        read_scannet(tmp_path / "none")
    one_line_error(err, "none", "no such dataset directory")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as err:
        read_scannet(tmp_path / "empty")
    one_line_error(err, "holds no <scene>_vert.npy")


# ------------------------------------------------------------------------------------------ SceneSet


def test_scene_set_subset_and_checks():
    scene = {"coord": np.zeros((3, 3), np.float32), "color": np.zeros((3, 3), np.float32),
             "segment": np.array([0, IGNORE_INDEX, 1])}
    scenes = SceneSet(["a", "b"], [scene, lambda: scene], ["x", "y"])
    assert len(scenes) == 2 and scenes.lazy and scenes.index("b") == 1
    assert scenes.label_counts().tolist() == [2, 2] and scenes.num_points().tolist() == [3, 3]
    assert scenes.subset([1]).names == ["b"]
    with pytest.raises(ValueError):
        SceneSet(["a", "a"], [scene, scene], ["x"])
    with pytest.raises(IndexError):
        scenes[2]
    with pytest.raises(KeyError):
        scenes.index("c")


# ------------------------------------------------------------------------------------------ SceneDataset


def synthetic_set(sizes=(3000, 40), seed=0) -> SceneSet:
    rng = np.random.default_rng(seed)
    scenes = [{"coord": (rng.random((n, 3)) * 3).astype(np.float32),
               "color": rng.uniform(0, 255, (n, 3)).astype(np.float32),
               "segment": rng.integers(-1, 4, n).astype(np.int64)} for n in sizes]
    return SceneSet([f"s{i}" for i in range(len(sizes))], scenes, ["a", "b", "c", "d"])


TRANSFORM = SceneCompose([CenterShift(), RotateZ(), ChromaticNormalize(), HeightFeature()])


def test_scene_dataset_items_are_fixed_size_with_padding_ignored():
    scenes = synthetic_set()
    ds = SceneDataset(scenes, TRANSFORM, voxel_size=0.05, max_points=512, train=True, loop=3, seed=1)
    assert len(ds) == 6 and ds.num_classes == 4
    big, small = ds[0], ds[1]
    for item in (big, small):
        assert item["points"].shape == (512, 3) and item["points"].dtype == torch.float32
        assert item["color"].shape == (512, 3) and item["height"].shape == (512, 1)
        assert item["seg"].dtype == torch.int64 and item["mask"].dtype == torch.bool
    assert big["mask"].all() and int(small["mask"].sum()) == 40
    assert (small["seg"][~small["mask"]] == IGNORE_INDEX).all()
    src = scenes[1]["segment"]
    np.testing.assert_array_equal(small["seg"][small["mask"]].numpy(), src[small["point_index"][small["mask"]].numpy()])
    assert [int(ds[i]["index"]) for i in range(6)] == [0, 1, 0, 1, 0, 1]
    # one point per voxel survives into the crop
    vox = np.floor((scenes[0]["coord"] - scenes[0]["coord"].min(0)) / 0.05).astype(int)
    kept = vox[big["point_index"].numpy()]
    assert len(np.unique(kept, axis=0)) == 512


def test_scene_dataset_random_streams():
    scenes = synthetic_set()
    ds = SceneDataset(scenes, TRANSFORM, voxel_size=0.05, max_points=256, train=True, loop=2)
    torch.manual_seed(0)
    ds.set_epoch(0)
    a, b = ds[0], ds[2]  # two repeats of scene 0 in one epoch differ
    assert not torch.equal(a["point_index"], b["point_index"])
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[0]["points"].numpy(), a["points"].numpy())
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["points"], a["points"])
    ev = SceneDataset(scenes, TRANSFORM, voxel_size=0.05, max_points=256)
    assert torch.equal(ev[0]["points"], ev[0]["points"])
    with pytest.raises(IndexError):
        ev[2]


def test_collate_stacks_into_batches_through_a_data_loader():
    ds = SceneDataset(synthetic_set(), TRANSFORM, voxel_size=0.05, max_points=300, train=True, loop=2)
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=True, collate_fn=collate_scenes)))
    assert batch["points"].shape == (3, 300, 3) and batch["color"].shape == (3, 300, 3)
    assert batch["height"].shape == (3, 300, 1) and batch["seg"].shape == (3, 300)
    assert batch["mask"].shape == (3, 300) and batch["mask"].dtype == torch.bool and batch["index"].shape == (3,)
    variable = SceneDataset(synthetic_set(), None)
    with pytest.raises(ValueError, match="max_points"):
        collate_scenes([variable[0], variable[1]])
    assert collate_scenes([variable[1]])["points"].shape == (1, 40, 3)
    with pytest.raises(ValueError):
        collate_scenes([])


def test_test_items_cover_every_point_of_a_real_scene():
    scenes = read_scannet(real(SCANNET), ["scene0000_00"])
    ds = SceneDataset(scenes, TRANSFORM, voxel_size=0.1, max_points=6000)
    items = ds.test_items(0)
    votes = np.zeros(81369, dtype=np.int64)
    for item in items:
        assert item["points"].shape == (6000, 3) and int(item["index"]) == 0
        votes[item["point_index"][item["mask"]].numpy()] += 1
    assert (votes >= 1).all()
    batch = collate_scenes(items[:4])
    assert batch["points"].shape == (4, 6000, 3)
    seg = scenes[0]["segment"]
    for item in items[:3]:
        m = item["mask"].numpy()
        np.testing.assert_array_equal(item["seg"].numpy()[m], seg[item["point_index"].numpy()[m]])
