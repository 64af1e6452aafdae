"""``pointtune data prepare`` on small raw files written here (a ScanNet .ply pair and its aggregation, an S3DIS
room with the release's broken line, two ModelNet .off meshes), and Pointcept's layout read by the scene readers
(made here from the real samples)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import one_line_error
from pointtune.cli import main
from pointtune.data.errors import DatasetError
from pointtune.data.modelnet import read_modelnet40_h5
from pointtune.data.prepare import prepare
from pointtune.data.raw_modelnet import read_off, sample_mesh
from pointtune.data.scenes import (
    NYU40_TO_SCANNET20,
    S3DIS_CLASSES,
    read_s3dis,
    read_s3dis_room_npy,
    read_scannet_scene,
    s3dis_layout,
    scannet_layout,
    scannet_splits,
)

SCENE = "scene0007_00"
# x y z r g b of 4 mesh vertices, and their NYU40 ids in the labels.ply
VERTICES = np.array([[0, 0, 0, 10, 20, 30], [1, 0, 0, 40, 50, 60], [0, 1, 0, 70, 80, 90], [0, 0, 1, 1, 2, 3]],
                    dtype=np.float32)
NYU40 = [1, 5, 0, 33]


def _ply(path, rows, label=None):
    """An ASCII PLY mesh with the ScanNet vertex properties (and ``label`` when given), one triangle."""
    header = ["ply", "format ascii 1.0", f"element vertex {len(rows)}", *[f"property float {a}" for a in "xyz"],
              *[f"property uchar {c}" for c in ("red", "green", "blue", "alpha")]]
    header += ["property ushort label"] if label is not None else []
    header += ["element face 1", "property list uchar int vertex_indices", "end_header"]
    lines = [" ".join(f"{v:g}" for v in row) + " 255" + (f" {label[i]}" if label is not None else "")
             for i, row in enumerate(rows)]
    path.write_text("\n".join(header + lines + ["3 0 1 2"]) + "\n")


def _scannet_raw(tmp_path, aggregation: bool):
    raw = tmp_path / "raw"
    scene = raw / "scans" / SCENE
    scene.mkdir(parents=True)
    _ply(scene / f"{SCENE}_vh_clean_2.ply", VERTICES)
    if aggregation:
        (scene / f"{SCENE}_vh_clean_2.0.010000.segs.json").write_text(json.dumps({"segIndices": [7, 7, 9, 4]}))
        groups = [{"id": 0, "objectId": 0, "label": "office chair", "segments": [7]},
                  {"id": 1, "objectId": 3, "label": "mystery thing", "segments": [4]}]
        (scene / f"{SCENE}.aggregation.json").write_text(json.dumps({"segGroups": groups}))
        (raw / "scannetv2-labels.combined.tsv").write_text(
            "id\traw_category\tcategory\tcount\tnyu40id\n2\toffice chair\tchair\t10\t5\n")
    else:
        _ply(scene / f"{SCENE}_vh_clean_2.labels.ply", VERTICES, label=NYU40)
    return raw


def test_scannet_labels_ply_to_the_reader_layout(tmp_path, capsys):
    out = tmp_path / "out"
    report = prepare("scannet", _scannet_raw(tmp_path, aggregation=False), out, progress=False)
    assert (report.written, report.skipped) == (1, 0)
    scene = read_scannet_scene(out, SCENE)
    np.testing.assert_array_equal(scene["coord"], VERTICES[:, :3])
    np.testing.assert_array_equal(scene["color"], VERTICES[:, 3:])
    assert scene["segment"].tolist() == NYU40_TO_SCANNET20[NYU40].tolist()
    assert "instance" not in scene  # labels.ply knows no instances
    # a rerun skips the finished scene
    assert prepare("scannet", tmp_path / "raw", out, progress=False).line().endswith("(1 already there)")


def test_scannet_aggregation_gives_labels_and_instances(tmp_path):
    out = tmp_path / "out"
    prepare("scannet", _scannet_raw(tmp_path, aggregation=True), out, progress=False)
    # vertices 0, 1: segment 7 = object 0 'office chair' (NYU40 5); vertex 2: no group; vertex 3: object 3
    # whose raw category the table lacks (NYU40 0)
    assert np.load(out / f"{SCENE}_sem_label.npy").tolist() == [5, 5, 0, 0]
    assert np.load(out / f"{SCENE}_ins_label.npy").tolist() == [1, 1, 0, 4]
    assert read_scannet_scene(out, SCENE)["instance"].tolist() == [1, 1, 0, 4]


def test_scannet_partial_output_is_redone_and_bad_files_name_themselves(tmp_path, capsys):
    raw, out = _scannet_raw(tmp_path, aggregation=False), tmp_path / "out"
    out.mkdir()
    (out / f"{SCENE}_vert.npy.part").write_bytes(b"half a file")  # an interrupted write: not finished
    assert prepare("scannet", raw, out, progress=False).written == 1
    assert not (out / f"{SCENE}_vert.npy.part").exists()
    mesh = raw / "scans" / SCENE / f"{SCENE}_vh_clean_2.ply"
    mesh.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 9\nproperty float x\nend_header\n\x00")
    with pytest.raises(DatasetError) as err:
        prepare("scannet", raw, tmp_path / "out2", progress=False)
    one_line_error(err, str(mesh), "cannot read PLY")
    capsys.readouterr()
    assert main(["data", "prepare", "scannet", "--raw", str(raw), "--out", str(tmp_path / "out3"),
                 "--no-progress"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and str(mesh) in stderr


def _annotation(path, rows):
    path.write_text("".join(" ".join(f"{v:g}" for v in row) + "\n" for row in rows))


def test_s3dis_broken_line_is_repaired_with_a_note(tmp_path, capsys):
    room = tmp_path / "raw" / "Area_5" / "hallway_6" / "Annotations"
    room.mkdir(parents=True)
    ceiling = np.array([[1.5, 2.25, 3.0, 10, 20, 30], [1.0, 2.0, 3.5, 11, 21, 31], [4.0, 5.0, 6.0, 12, 22, 32]])
    _annotation(room / "ceiling_1.txt", ceiling)
    text = (room / "ceiling_1.txt").read_text().splitlines()
    text[1] = text[1].replace(" ", "\x10", 1)  # the release's stray character where a space belongs
    text.append("7 8 9 1 2 3 4")  # a line no repair makes 6 numbers: skipped
    (room / "ceiling_1.txt").write_text("\n".join(text) + "\n")
    wall = np.array([[0.0, 0.0, 0.0, 1, 2, 3]])
    _annotation(room / "wall_1.txt", wall)
    out = tmp_path / "out"
    report = prepare("s3dis", tmp_path / "raw", out, progress=False)
    printed = capsys.readouterr().out
    assert f"{room / 'ceiling_1.txt'}: line 2: repaired" in printed
    assert f"{room / 'ceiling_1.txt'}: line 4: skipped" in printed
    assert report.written == 1
    rows = np.load(out / "Area_5_hallway_6.npy")
    expected = np.concatenate([np.column_stack([ceiling, np.zeros(3)]),
                               np.column_stack([wall, [S3DIS_CLASSES.index("wall")]])])
    np.testing.assert_allclose(rows, expected)
    assert read_s3dis(out)[0]["segment"].tolist() == [0, 0, 0, 2]
    assert prepare("s3dis", tmp_path / "raw", out, progress=False).skipped == 1


def test_s3dis_corrupt_file_names_its_file(tmp_path):
    room = tmp_path / "Stanford3dDataset_v1.2_Aligned_Version" / "Area_1" / "office_1" / "Annotations"
    room.mkdir(parents=True)
    (room / "chair_1.txt").write_text("garbage\n" * 20)
    with pytest.raises(DatasetError) as err:
        prepare("s3dis", tmp_path, tmp_path / "out", progress=False)
    one_line_error(err, str(room / "chair_1.txt"), "corrupt")
    assert not (tmp_path / "out" / "Area_1_office_1.npy").exists()


CUBE = """OFF
8 6 0
-1 -1 -1
1 -1 -1
1 1 -1
-1 1 -1
-1 -1 1
1 -1 1
1 1 1
-1 1 1
4 0 3 2 1
4 4 5 6 7
4 0 1 5 4
4 2 3 7 6
4 1 2 6 5
4 0 4 7 3
"""
# ModelNet's malformed header (OFF glued to the counts) and two parallel triangles of areas 0.5 and 1.5
GLUED = """OFF6 2 0
0 0 0
1 0 0
0 1 0
0 0 1
3 0 1
0 1 1
3 0 1 2
3 3 4 5
"""


def _modelnet_raw(tmp_path):
    raw = tmp_path / "ModelNet40"
    (raw / "box" / "train").mkdir(parents=True)
    (raw / "plane" / "test").mkdir(parents=True)
    (raw / "box" / "train" / "box_0001.off").write_text(CUBE)
    (raw / "plane" / "test" / "plane_0001.off").write_text(GLUED)
    return raw


def test_off_reader_takes_both_headers_and_names_bad_lines(tmp_path):
    raw = _modelnet_raw(tmp_path)
    vertices, faces = read_off(raw / "box" / "train" / "box_0001.off")
    assert vertices.shape == (8, 3) and faces.shape == (12, 3)  # quads split into fans
    vertices, faces = read_off(raw / "plane" / "test" / "plane_0001.off")
    assert vertices.shape == (6, 3) and faces.tolist() == [[0, 1, 2], [3, 4, 5]]
    bad = tmp_path / "bad.off"
    bad.write_text(GLUED.replace("3 0 1 2", "3 0 1 9"))
    with pytest.raises(DatasetError) as err:
        read_off(bad)
    one_line_error(err, str(bad), "line 8")
    bad.write_text(GLUED.replace("0 1 1", "0 x 1"))
    with pytest.raises(DatasetError) as err:
        read_off(bad)
    one_line_error(err, str(bad), "line 7")


def test_surface_sampling_is_area_weighted_and_seeded(tmp_path):
    path = _modelnet_raw(tmp_path) / "plane" / "test" / "plane_0001.off"
    cloud = sample_mesh(path, 4000, seed=0, shape_id="plane_0001")
    np.testing.assert_allclose(cloud[:, 3:], np.tile([0, 0, 1], (4000, 1)), atol=1e-6)  # face normals
    assert np.linalg.norm(cloud[:, :3], axis=1).max() == pytest.approx(1.0, abs=1e-5)  # unit sphere
    upper = cloud[:, 2] > cloud[:, 2].mean()
    assert upper.mean() == pytest.approx(1.5 / 2.0, abs=0.03)  # the larger triangle takes 3/4 of the points
    np.testing.assert_array_equal(cloud, sample_mesh(path, 4000, seed=0, shape_id="plane_0001"))
    assert not np.array_equal(cloud, sample_mesh(path, 4000, seed=1, shape_id="plane_0001"))


def test_modelnet40_meshes_to_the_h5_layout_resumably(tmp_path):
    raw, out = _modelnet_raw(tmp_path), tmp_path / "out"
    report = prepare("modelnet40", raw.parent, out, progress=False, num_points=64, seed=3)
    assert (report.written, report.skipped) == (2, 0)
    train, test = read_modelnet40_h5(out, "train"), read_modelnet40_h5(out, "test")
    assert train.class_names == ["box", "plane"]
    assert (train.points.shape, train.labels.tolist(), test.labels.tolist()) == ((1, 64, 3), [0], [1])
    np.testing.assert_allclose(np.linalg.norm(train.normals, axis=-1), 1.0, atol=1e-5)
    first = train.points.copy()
    rerun = prepare("modelnet40", raw.parent, out, progress=False, num_points=64, seed=3)
    assert (rerun.written, rerun.skipped) == (0, 2)
    np.testing.assert_array_equal(read_modelnet40_h5(out, "train").points, first)
    assert (out / "train_ids.txt").read_text() == "box_0001\n"


def _pointcept(root, split, name, scene):
    """Write ``scene`` (a reader sample) as Pointcept's ``<split>/<name>/*.npy``."""
    d = root / split / name
    d.mkdir(parents=True)
    np.save(d / "coord.npy", scene["coord"])
    np.save(d / "color.npy", scene["color"].astype(np.uint8))
    return d


def test_pointcept_scannet_layout_is_read_directly(shared_data, tmp_path):
    sample = shared_data / "scannet_subset"
    for split, name in (("train", "scene0000_00"), ("val", "scene0000_01")):
        scene = read_scannet_scene(sample, name)
        d = _pointcept(tmp_path, split, name, scene)
        np.save(d / "segment20.npy", scene["segment"])
        np.save(d / "instance.npy", scene["instance"])
        np.save(d / "normal.npy", np.tile(np.float32([0, 0, 1]), (len(scene["coord"]), 1)))
    assert scannet_layout(tmp_path) == "pointcept" and scannet_layout(sample) == "arrays"
    train, val, test = scannet_splits(tmp_path, val_fraction=0.0)
    assert (train.names, test.names, len(val)) == (["scene0000_00"], ["scene0000_01"], 0)
    original = read_scannet_scene(sample, "scene0000_01")
    np.testing.assert_array_equal(test[0]["segment"], original["segment"])
    np.testing.assert_array_equal(test[0]["coord"], original["coord"])
    assert test[0]["normal"].shape == original["coord"].shape
    np.save(tmp_path / "val" / "scene0000_01" / "segment20.npy", np.full(len(original["coord"]), 20))
    with pytest.raises(DatasetError) as err:
        read_scannet_scene(tmp_path, "scene0000_01")
    one_line_error(err, str(tmp_path / "val" / "scene0000_01" / "segment20.npy"), "row 0", "-1..19")


def test_pointcept_s3dis_layout_is_read_directly(shared_data, tmp_path):
    npy = shared_data / "s3dis_subset" / "Area_1_hallway_1.npy"
    room = read_s3dis_room_npy(npy)
    d = _pointcept(tmp_path, "Area_1", "hallway_1", room)
    np.save(d / "segment.npy", room["segment"][:, None])  # Pointcept stores (N, 1)
    assert s3dis_layout(tmp_path, 1) == "pointcept"
    scenes = read_s3dis(tmp_path)
    assert scenes.names == ["Area_1_hallway_1"]
    np.testing.assert_array_equal(scenes[0]["segment"], room["segment"])


def test_s3dis_sample_annotations_give_the_sample_npy_rows(shared_data, tmp_path):
    sample = shared_data / "s3dis_subset"
    prepare("s3dis", sample, tmp_path, progress=False)
    for room in ("conferenceRoom_1", "hallway_1"):
        np.testing.assert_array_equal(np.load(tmp_path / f"Area_1_{room}.npy"), np.load(sample / f"Area_1_{room}.npy"))
