"""pointtune.data: readers (real samples and generated files), errors, splits, synthetic data, build_datasets."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from pointtune.data import (
    SCANOBJECTNN_CLASSES,
    SYNTHETIC_CLASSES,
    DataConfig,
    DatasetError,
    PointCloudDataset,
    PointCloudSet,
    build_datasets,
    dataset_names,
    filter_classes,
    make_synthetic,
    read_modelnet40_h5,
    read_modelnet40_resampled,
    read_scanobjectnn,
    register_dataset,
    train_val_split,
)

from conftest import SHARED_DATA
from helpers import one_line_error, real

MN40_H5 = SHARED_DATA / "modelnet40_subset"
MN40_TXT = SHARED_DATA / "modelnet40_normal_resampled_sample"


def write_h5(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def tiny_h5_layout(root: Path, n_train=6, n_test=4, points=32, classes=("a", "b", "c")) -> Path:
    """A modelnet40_ply_hdf5_2048-style directory with two train files (official list-file paths)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("\n".join(classes) + "\n")
    (root / "train_files.txt").write_text(
        "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\ndata/modelnet40_ply_hdf5_2048/ply_data_train1.h5\n"
    )
    (root / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n")
    for name, m, offset in (("train0", n_train, 0), ("train1", 2, 1), ("test0", n_test, 2)):
        labels = ((np.arange(m) + offset) % len(classes)).astype(np.uint8)[:, None]
        write_h5(root / f"ply_data_{name}.h5", data=rng.normal(size=(m, points, 3)).astype(np.float32),
                 normal=rng.normal(size=(m, points, 3)).astype(np.float32), label=labels)
    return root


# ----------------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_modelnet40_h5_reads_the_real_sample():
    root = real(MN40_H5)
    names = (root / "shape_names.txt").read_text().split()
    train, test = read_modelnet40_h5(root, "train"), read_modelnet40_h5(root, "test")
    assert len(train) == 1019 and len(test) == 197
    for ds in (train, test):
        assert ds.points.shape[1:] == (2048, 3) and ds.points.dtype == np.float32
        assert ds.labels.dtype == np.int64 and ds.normals.shape == ds.points.shape
        assert ds.class_names == names and len(names) == 40
        assert np.linalg.norm(ds.points, axis=-1).max() < 1.01  # the release is in the unit sphere
    assert (names.index("airplane"), names.index("bathtub"), names.index("bench")) == (0, 1, 3)
    with h5py.File(root / "ply_data_train0.h5") as f:
        np.testing.assert_array_equal(train.labels, f["label"][:, 0])
        np.testing.assert_array_equal(train.points[17], f["data"][17])
    counts = train.class_counts()
    assert (counts[0], counts[1], counts[3]) == (626, 106, 173)


@pytest.mark.realdata
def test_filter_classes_on_real_sample_gives_official_counts():
    root = real(MN40_H5)
    classes = ["airplane", "bathtub", "bench"]
    train = filter_classes(read_modelnet40_h5(root, "train"), classes)
    test = filter_classes(read_modelnet40_h5(root, "test"), classes)
    assert train.class_names == classes == test.class_names
    assert train.class_counts().tolist() == [626, 106, 173]
    assert test.class_counts().tolist() == [100, 50, 20]
    # reordered classes re-index the labels in the given order
    swapped = filter_classes(read_modelnet40_h5(root, "test"), ["bench", "airplane"])
    assert swapped.class_counts().tolist() == [20, 100]


@pytest.mark.realdata
def test_modelnet40_resampled_reads_the_real_sample():
    root = real(MN40_TXT)
    train = read_modelnet40_resampled(root, "train")
    test = read_modelnet40_resampled(root, "test")
    ids = (root / "modelnet40_train.txt").read_text().split()
    assert len(train) == len(ids) == 36 and len(test) == 3
    assert train.points.shape == (36, 10000, 3) and train.normals.shape == (36, 10000, 3)
    assert [test.class_names[i] for i in test.labels] == ["car", "stairs", "wardrobe"]
    assert [train.class_names[i] for i in train.labels] == [i.rsplit("_", 1)[0] for i in ids]
    assert "night_stand" in [train.class_names[i] for i in train.labels]  # class names with underscores
    np.testing.assert_allclose(np.linalg.norm(train.normals, axis=-1), 1.0, atol=1e-3)
    raw = np.loadtxt(root / "airplane" / "airplane_0126.txt", delimiter=",", max_rows=100)
    few = read_modelnet40_resampled(root, "train", num_points=100)
    assert few.points.shape == (36, 100, 3)
    np.testing.assert_allclose(few.points[0], raw[:, :3], atol=1e-6)
    np.testing.assert_allclose(few.normals[0], raw[:, 3:6], atol=1e-6)


@pytest.mark.realdata
def test_build_datasets_on_real_modelnet40():
    root = real(MN40_H5)
    cfg = DataConfig(name="modelnet40", root=str(root), classes=["airplane", "bathtub", "bench"], num_points=512)
    data = build_datasets(cfg)
    assert data.class_names == ["airplane", "bathtub", "bench"] and data.num_classes == 3
    counts = data.train.pcs.class_counts() + data.val.pcs.class_counts()
    assert counts.tolist() == [626, 106, 173]
    assert data.val.pcs.class_counts().tolist() == [63, 11, 17]  # round(0.1 * n) per class
    assert len(data.test) == 170
    item = data.test[5]
    assert item["points"].shape == (512, 3) and item["label"].dtype == torch.int64
    assert abs(float(item["points"].norm(dim=1).max()) - 1.0) < 1e-5


@pytest.mark.realdata
def test_build_datasets_on_real_resampled_sample_with_normals():
    root = real(MN40_TXT)
    with pytest.raises(DatasetError) as info:  # one shape per class: nothing to hold out
        build_datasets(DataConfig(name="modelnet40_resampled", root=str(root), num_points=256))
    one_line_error(info, "data.val_fraction")
    data = build_datasets(DataConfig(name="modelnet40_resampled", root=str(root), num_points=256,
                                     val_fraction=0.0, use_normals=True))
    assert (len(data.train), len(data.val), len(data.test), data.num_classes) == (36, 0, 3, 40)
    item = data.test[0]
    assert item["points"].shape == item["normals"].shape == (256, 3)
    assert data.class_names[int(item["label"])] == "car"
    torch.testing.assert_close(item["normals"].norm(dim=1), torch.ones(256), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------------------------- readers


def test_h5_reader_concatenates_listed_files(tmp_path):
    root = tiny_h5_layout(tmp_path / "mn")
    train = read_modelnet40_h5(root, "train")
    assert len(train) == 8 and train.points.shape == (8, 32, 3) and train.labels.dtype == np.int64
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2, 1, 2]
    assert train.class_names == ["a", "b", "c"] and train.normals is not None
    # without the list file, ply_data_train*.h5 are found in natural order
    (root / "train_files.txt").unlink()
    assert read_modelnet40_h5(root, "train").labels.tolist() == train.labels.tolist()


def test_missing_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(missing, "train")
    one_line_error(info, str(missing), "modelnet40_ply_hdf5_2048")
    for reader in (lambda: read_modelnet40_resampled(missing, "test"),
                   lambda: read_scanobjectnn(missing, "OBJ_BG", "test")):
        with pytest.raises(DatasetError) as info:
            reader()
        one_line_error(info, str(missing))
    assert issubclass(DatasetError, ValueError)


def test_missing_h5_file_is_named(tmp_path):
    root = tiny_h5_layout(tmp_path / "mn")
    (root / "ply_data_train1.h5").unlink()
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(root, "train")
    one_line_error(info, str(root / "ply_data_train1.h5"), "missing file")
    (root / "shape_names.txt").unlink()
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(root, "test")
    one_line_error(info, str(root / "shape_names.txt"))


def test_wrong_h5_key_is_named(tmp_path):
    root = tiny_h5_layout(tmp_path / "mn")
    bad = write_h5(root / "ply_data_test0.h5", data=np.zeros((2, 8, 3), np.float32), labels=np.zeros((2, 1), np.uint8))
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(root, "test")
    one_line_error(info, f"{bad}: missing HDF5 key 'label' (expected keys data, label")


@pytest.mark.parametrize("data,label,fragment", [
    (np.zeros((2, 8, 2), np.float32), np.zeros((2, 1), np.uint8), "'data' has shape (2, 8, 2), expected (M, N, 3)"),
    (np.zeros((2, 8, 3), np.float32), np.zeros((3, 1), np.uint8), "'label' has shape (3, 1)"),
    (np.zeros((2, 8, 3), np.float32), np.array([[0], [7]], np.uint8), "labels in [0, 7], expected [0, 2]"),
    (np.zeros((2, 8, 3), np.float32), np.zeros((2, 1), np.float32), "integers"),
])
def test_wrong_h5_shapes_are_named(tmp_path, data, label, fragment):
    root = tiny_h5_layout(tmp_path / "mn")
    bad = write_h5(root / "ply_data_test0.h5", data=data, label=label)
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(root, "test")
    one_line_error(info, str(bad), fragment)


def test_corrupt_and_truncated_h5_files_are_named(tmp_path):
    root = tiny_h5_layout(tmp_path / "mn")
    target = root / "ply_data_test0.h5"
    good = target.read_bytes()
    target.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(root, "test")
    one_line_error(info, str(target), "cannot read HDF5 file")
    target.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(root, "test")
    one_line_error(info, str(target))


def test_mismatched_point_counts_between_files(tmp_path):
    root = tiny_h5_layout(tmp_path / "mn")
    bad = write_h5(root / "ply_data_train1.h5", data=np.zeros((2, 16, 3), np.float32), label=np.zeros((2, 1), np.uint8))
    with pytest.raises(DatasetError) as info:
        read_modelnet40_h5(root, "train")
    one_line_error(info, str(bad), "16 points per cloud, expected 32")


def txt_layout(root: Path, rows: int = 20) -> Path:
    rng = np.random.default_rng(1)
    (root / "chair").mkdir(parents=True)
    (root / "night_stand").mkdir()
    (root / "modelnet40_shape_names.txt").write_text("chair\nnight_stand\n")
    (root / "modelnet40_train.txt").write_text("chair_0001\nnight_stand_0002\n")
    (root / "modelnet40_test.txt").write_text("night_stand_0003\n")
    for shape in ("chair/chair_0001", "night_stand/night_stand_0002", "night_stand/night_stand_0003"):
        xyz = rng.normal(size=(rows, 3))
        normals = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
        np.savetxt(root / f"{shape}.txt", np.hstack([xyz, normals]), delimiter=",", fmt="%.6f")
    return root


def test_resampled_reader_and_its_errors(tmp_path):
    root = txt_layout(tmp_path / "txt")
    train = read_modelnet40_resampled(root, "train")
    assert train.points.shape == (2, 20, 3) and train.labels.tolist() == [0, 1]
    np.testing.assert_allclose(np.linalg.norm(train.normals, axis=-1), 1.0, atol=1e-5)
    assert read_modelnet40_resampled(root, "test", num_points=5).points.shape == (1, 5, 3)
    with pytest.raises(DatasetError) as info:
        read_modelnet40_resampled(root, "test", num_points=50)
    one_line_error(info, "night_stand_0003.txt", "has 20 points, expected 50")
    bad = root / "chair" / "chair_0001.txt"
    bad.write_text("0.1,0.2,0.3,0,0,1\n0.1,oops,0.3,0,0,1\n")
    with pytest.raises(DatasetError) as info:
        read_modelnet40_resampled(root, "train")
    one_line_error(info, str(bad), "cannot parse")
    bad.write_text("0.1,0.2,0.3\n")
    with pytest.raises(DatasetError) as info:
        read_modelnet40_resampled(root, "train")
    one_line_error(info, str(bad), "expected rows of 6 values")
    bad.unlink()
    with pytest.raises(DatasetError) as info:
        read_modelnet40_resampled(root, "train")
    one_line_error(info, str(bad), "missing file")
    (root / "modelnet40_test.txt").write_text("sofa_0001\n")
    with pytest.raises(DatasetError) as info:
        read_modelnet40_resampled(root, "test")
    one_line_error(info, "'sofa'", "modelnet40_shape_names.txt")


SOO_FILES = {
    "OBJ_BG": ("main_split", "objectdataset.h5"),
    "OBJ_ONLY": ("main_split_nobg", "objectdataset.h5"),
    "PB_T50_RS": ("main_split", "objectdataset_augmentedrot_scale75.h5"),
}


def scanobjectnn_layout(root: Path) -> Path:
    rng = np.random.default_rng(2)
    for i, (variant, (folder, stem)) in enumerate(SOO_FILES.items()):
        for split, m in (("training", 15 + i), ("test", 5)):
            write_h5(root / folder / f"{split}_{stem}", data=rng.normal(size=(m, 64, 3)).astype(np.float32),
                     label=(np.arange(m) % 15).astype(np.int8), mask=np.zeros((m, 64), np.int8))
    return root


def test_scanobjectnn_variants_and_errors(tmp_path):
    root = scanobjectnn_layout(tmp_path / "h5_files")
    for i, variant in enumerate(SOO_FILES):
        train = read_scanobjectnn(root, variant, "train")
        test = read_scanobjectnn(root, variant, "test")
        assert train.points.shape == (15 + i, 64, 3) and len(test) == 5  # each variant reads its own file
        assert train.labels.dtype == np.int64 and train.labels.tolist() == [j % 15 for j in range(15 + i)]
        assert train.class_names == SCANOBJECTNN_CLASSES and train.normals is None
    assert SCANOBJECTNN_CLASSES[:3] == ["bag", "bin", "box"] and SCANOBJECTNN_CLASSES[-1] == "toilet"
    assert len(SCANOBJECTNN_CLASSES) == 15
    with pytest.raises(DatasetError) as info:
        read_scanobjectnn(root, "PB_T25", "train")
    one_line_error(info, "'PB_T25'", "OBJ_BG, OBJ_ONLY, PB_T50_RS")
    missing = root / "main_split_nobg" / "test_objectdataset.h5"
    missing.unlink()
    with pytest.raises(DatasetError) as info:
        read_scanobjectnn(root, "OBJ_ONLY", "test")
    one_line_error(info, str(missing))
    write_h5(root / "main_split" / "test_objectdataset.h5", data=np.zeros((3, 8, 3), np.float32),
             label=np.array([0, 15, 2], np.int8))
    with pytest.raises(DatasetError) as info:
        read_scanobjectnn(root, "OBJ_BG", "test")
    one_line_error(info, "test_objectdataset.h5", "expected [0, 14]")


# ----------------------------------------------------------------------------------------------- set and splits


def toy_set(counts=(10, 5, 2, 1), points=4) -> PointCloudSet:
    labels = np.repeat(np.arange(len(counts)), counts)
    pts = np.arange(len(labels) * points * 3, dtype=np.float64).reshape(len(labels), points, 3)
    return PointCloudSet(pts, labels, [f"c{i}" for i in range(len(counts))], normals=np.ones_like(pts))


def test_point_cloud_set_dtypes_subset_and_validation():
    ds = toy_set()
    assert ds.points.dtype == np.float32 and ds.labels.dtype == np.int64 and len(ds) == 18
    sub = ds.subset([17, 0])
    assert sub.labels.tolist() == [3, 0] and sub.normals.shape == (2, 4, 3) and sub.class_names == ds.class_names
    np.testing.assert_array_equal(sub.points[0], ds.points[17])
    assert len(ds.subset(ds.labels == 1)) == 5
    with pytest.raises(ValueError, match="labels must lie"):
        PointCloudSet(np.zeros((2, 4, 3)), [0, 2], ["a", "b"])
    with pytest.raises(ValueError, match=r"\(M, N, 3\)"):
        PointCloudSet(np.zeros((2, 4)), [0, 1], ["a", "b"])


def test_filter_classes_reindexes_and_rejects_unknown():
    ds = toy_set()
    out = filter_classes(ds, ["c3", "c1"])
    assert out.class_names == ["c3", "c1"] and out.labels.tolist() == [1] * 5 + [0]
    np.testing.assert_array_equal(out.points[-1], ds.points[17])
    with pytest.raises(DatasetError) as info:
        filter_classes(ds, ["c1", "dog"])
    one_line_error(info, "'dog'", "c0, c1, c2, c3")
    with pytest.raises(DatasetError, match="more than once"):
        filter_classes(ds, ["c1", "c1"])


def test_train_val_split_is_seeded_stratified_and_deterministic():
    ds = toy_set((10, 5, 2, 1))
    train, val = train_val_split(ds, 0.3, seed=7)
    # per class round(0.3 n) half up, at most n - 1; a singleton class stays in train
    assert val.class_counts().tolist() == [3, 2, 1, 0]
    assert train.class_counts().tolist() == [7, 3, 1, 1]
    train_ids = {float(p[0, 0]) for p in train.points}
    val_ids = {float(p[0, 0]) for p in val.points}
    assert not train_ids & val_ids and len(train_ids | val_ids) == len(ds)
    again_train, again_val = train_val_split(ds, 0.3, seed=7)
    np.testing.assert_array_equal(again_val.points, val.points)
    np.testing.assert_array_equal(again_train.points, train.points)
    picks = {tuple(np.sort(train_val_split(ds, 0.3, seed=s)[1].points[:, 0, 0])) for s in range(6)}
    assert len(picks) > 1  # the seed matters
    # a class with 2 clouds keeps one in train even at a large fraction
    big_train, big_val = train_val_split(ds, 0.9, seed=0)
    assert big_train.class_counts().min() >= 1 and big_val.class_counts().tolist() == [9, 4, 1, 0]
    empty_train, empty_val = train_val_split(ds, 0.0, seed=0)
    assert len(empty_val) == 0 and len(empty_train) == len(ds) and empty_val.points.shape == (0, 4, 3)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(ds, bad, seed=0)


def test_train_val_split_per_class_independent_of_other_classes():
    ds = toy_set((10, 6, 4))
    _, val_all = train_val_split(ds, 0.5, seed=3)
    _, val_two = train_val_split(ds.subset(ds.labels != 2), 0.5, seed=3)
    keep = val_all.labels != 2
    np.testing.assert_array_equal(val_all.points[keep], val_two.points)


# ----------------------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_determinism_and_splits():
    ds = make_synthetic(num_classes=8, per_class=6, num_points=256, seed=0, split="train")
    assert ds.points.shape == (48, 256, 3) and ds.points.dtype == np.float32 and ds.labels.dtype == np.int64
    assert ds.class_counts().tolist() == [6] * 8 and ds.class_names == SYNTHETIC_CLASSES[:8]
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES) >= 10
    np.testing.assert_allclose(np.linalg.norm(ds.normals, axis=-1), 1.0, atol=1e-5)
    again = make_synthetic(num_classes=8, per_class=6, num_points=256, seed=0, split="train")
    np.testing.assert_array_equal(ds.points, again.points)
    test = make_synthetic(num_classes=8, per_class=6, num_points=256, seed=0, split="test")
    other_seed = make_synthetic(num_classes=8, per_class=6, num_points=256, seed=1, split="train")
    assert not np.allclose(ds.points, test.points) and not np.allclose(ds.points, other_seed.points)
    # a class does not depend on how many classes are generated
    ten = make_synthetic(num_classes=10, per_class=6, num_points=256, seed=0, split="train")
    np.testing.assert_array_equal(ten.points[:48], ds.points)
    with pytest.raises(ValueError, match="num_classes"):
        make_synthetic(num_classes=11)
    with pytest.raises(ValueError, match="split"):
        make_synthetic(split="val")


def test_synthetic_geometry_pose_noise_and_occlusion():
    ds = make_synthetic(num_classes=10, per_class=8, num_points=512, seed=0)
    name = {n: i for i, n in enumerate(ds.class_names)}
    radius = np.linalg.norm(ds.points, axis=-1)
    sphere = radius[ds.labels == name["sphere"]]
    assert 0.6 < sphere.min() and sphere.max() < 1.25  # a scaled, noisy sphere around the origin
    assert radius[ds.labels == name["torus"]].min() > 0.25  # the torus has a hole
    sheets = ds.points[ds.labels == name["square_sheet"]]
    sheet_normals = ds.normals[ds.labels == name["square_sheet"]]
    for pts, nrm in zip(sheets, sheet_normals):
        evals, evecs = np.linalg.eigh(np.cov(pts.T))
        assert evals[0] < 1e-2 * evals[2]  # flat: noise only across the sheet
        assert np.abs(nrm @ evecs[:, 0]).min() > 0.98  # normals perpendicular to the sheet
    # random poses: the sheets' planes point in different directions
    plane_normals = np.array([np.linalg.eigh(np.cov(p.T))[1][:, 0] for p in sheets])
    assert np.abs(plane_normals @ plane_normals.T).min() < 0.9
    # occlusion drops one side: sphere centroids leave the origin
    centroids = np.linalg.norm(ds.points[ds.labels == name["sphere"]].mean(1), axis=1)
    assert centroids.max() > 0.1


def test_synthetic_is_fast():
    make_synthetic(num_classes=2, per_class=2, num_points=64)
    began = time.perf_counter()
    make_synthetic(num_classes=8, per_class=64, num_points=1024)
    assert time.perf_counter() - began < 2.0  # about 0.45 s on one CPU core


def _d2_features(ds: PointCloudSet) -> np.ndarray:
    """Rotation-invariant shape features: D2 distance histogram and radius histogram after normalising."""
    rng = np.random.default_rng(0)
    pts = ds.points - ds.points.mean(1, keepdims=True)
    pts /= np.linalg.norm(pts, axis=-1).max(1)[:, None, None]
    pairs = rng.integers(0, pts.shape[1], (2, 2000))
    d2 = np.linalg.norm(pts[:, pairs[0]] - pts[:, pairs[1]], axis=-1)
    radius = np.linalg.norm(pts, axis=-1)
    hist = [np.histogram(row, 16, (0, 2))[0] / row.size for row in d2]
    hist_r = [np.histogram(row, 8, (0, 1))[0] / row.size for row in radius]
    return np.hstack([hist, hist_r])


def test_synthetic_is_learnable_but_not_trivial():
    train = make_synthetic(num_classes=8, per_class=24, num_points=512, split="train")
    test = make_synthetic(num_classes=8, per_class=24, num_points=512, split="test")
    xtr, xte = _d2_features(train), _d2_features(test)
    # 5-nearest-neighbour vote on handcrafted shape features
    dist = ((xte[:, None] - xtr[None]) ** 2).sum(-1)
    votes = train.labels[np.argsort(dist, axis=1)[:, :5]]
    pred = np.array([np.bincount(v, minlength=8).argmax() for v in votes])
    acc = (pred == test.labels).mean()
    assert 0.5 < acc < 0.97, acc  # far above chance (0.125), but not solved by a trivial classifier
    # a global statistic alone (spread of the normalised cloud) is weak
    spread = xtr @ np.linspace(0, 2, 16 + 8)  # one scalar per cloud
    centres = np.array([spread[train.labels == c].mean() for c in range(8)])
    spread_te = xte @ np.linspace(0, 2, 16 + 8)
    assert (np.abs(spread_te[:, None] - centres).argmin(1) == test.labels).mean() < 0.6


# ----------------------------------------------------------------------------------------------- config


def test_data_config_defaults_and_validation():
    cfg = DataConfig()
    assert (cfg.name, cfg.num_points, cfg.sampling, cfg.val_fraction, cfg.normalize) == (
        "synthetic", 1024, "first", 0.1, True)
    aug = cfg.augment
    assert (aug.scale_low, aug.scale_high, aug.translate, aug.jitter_sigma, aug.jitter_clip) == pytest.approx(
        (2 / 3, 1.5, 0.2, 0.0, 0.05))
    assert aug.rotate_up is False and aug.rotate_range_deg == 360.0 and aug.shuffle is True
    for bad in ({"num_points": 0}, {"val_fraction": 1.0}, {"val_fraction": -0.1}, {"sampling": "poisson"},
                {"bogus": 1}, {"augment": {"scale_low": 2.0, "scale_high": 1.0}}, {"augment": {"jitter": 1}},
                {"classes": []}, {"classes": ["a", "a"]}):
        with pytest.raises(ValidationError):
            DataConfig.model_validate(bad)


# ----------------------------------------------------------------------------------------------- build_datasets


def small_cfg(**kw) -> DataConfig:
    return DataConfig.model_validate({"num_points": 128, "synthetic_per_class": 10, **kw})


def test_build_datasets_synthetic_items():
    data = build_datasets(small_cfg())
    assert data.num_classes == 8 and data.class_names == SYNTHETIC_CLASSES[:8]
    assert len(data.train) + len(data.val) == 80 and len(data.val) == 8 and len(data.test) == 80
    assert len(data.train_eval) == len(data.train)
    item = data.train[3]
    assert set(item) == {"points", "label", "index"}
    assert item["points"].shape == (128, 3) and item["points"].dtype == torch.float32
    assert item["label"].shape == () and item["label"].dtype == torch.int64
    assert item["index"].dtype == torch.int64 and int(item["index"]) == 3
    ev = data.val[2]["points"]
    torch.testing.assert_close(ev, data.val[2]["points"])  # evaluation is deterministic
    assert float(ev.norm(dim=1).max()) == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(ev.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    batch = next(iter(torch.utils.data.DataLoader(data.train, batch_size=4)))
    assert batch["points"].shape == (4, 128, 3) and batch["label"].shape == (4,)


def test_training_items_fresh_per_epoch_and_reproducible():
    data = build_datasets(small_cfg(sampling="random"))
    assert data.train.pcs.num_points == 256  # synthetic clouds are generated with 2x points to sample from
    torch.manual_seed(5)
    data.train.set_epoch(0)
    first = data.train[0]["points"]
    second_visit = data.train[0]["points"]
    data.train.set_epoch(1)
    next_epoch = data.train[0]["points"]
    assert not torch.allclose(first, second_visit) and not torch.allclose(first, next_epoch)
    data.train.set_epoch(0)
    torch.testing.assert_close(data.train[0]["points"], first)  # same torch seed and epoch: same item
    torch.manual_seed(6)
    data.train.set_epoch(0)
    assert not torch.allclose(data.train[0]["points"], first)
    # evaluation items use the first points, normalised, no augmentation
    pts = data.train_eval.pcs.points[0, :128]
    centred = pts - pts.mean(0)
    np.testing.assert_allclose(data.train_eval[0]["points"].numpy(), centred / np.linalg.norm(centred, axis=1).max(),
                               atol=1e-6)


def test_build_datasets_normals_classes_and_fps():
    data = build_datasets(small_cfg(use_normals=True, classes=["torus", "sphere"], sampling="fps",
                                    augment={"rotate_up": True}))
    assert data.class_names == ["torus", "sphere"] and data.num_classes == 2
    item = data.train[0]
    assert set(item) == {"points", "label", "index", "normals"} and item["normals"].shape == (128, 3)
    torch.testing.assert_close(item["normals"].norm(dim=1), torch.ones(128), atol=1e-5, rtol=0)
    assert data.test.pcs.points.shape == (20, 128, 3)  # farthest point sampling done once at build time
    torch.testing.assert_close(data.test[1]["points"], data.test[1]["points"])


def test_build_datasets_errors(tmp_path):
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(name="modelnet99"))
    one_line_error(info, "'modelnet99'", "known datasets: " + ", ".join(dataset_names()),
                   "modelnet40, modelnet40_resampled")
    for name in ("modelnet40", "modelnet40_resampled", "scanobjectnn"):
        with pytest.raises(DatasetError) as info:
            build_datasets(DataConfig(name=name))
        one_line_error(info, "data.root", name)
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(name="modelnet40", root="/nonexistent/mn40"))
    one_line_error(info, "/nonexistent/mn40")
    root = tiny_h5_layout(tmp_path / "mn", points=32)
    assert len(build_datasets(DataConfig(name="modelnet40", root=str(root), num_points=32, val_fraction=0.5)).test) == 4
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(name="modelnet40", root=str(root), num_points=64))
    one_line_error(info, "data.num_points", "64 points asked", "have 32")
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(name="scanobjectnn", root=str(scanobjectnn_layout(tmp_path / "soo")),
                                  num_points=32, use_normals=True))
    one_line_error(info, "data.use_normals", "scanobjectnn")
    with pytest.raises(DatasetError) as info:
        build_datasets(small_cfg(classes=["sphere", "dodecahedron"]))
    one_line_error(info, "data.classes: unknown class 'dodecahedron'", "sphere")


def test_loader_workers_draw_fresh_augmentations():
    data = build_datasets(small_cfg(num_points=64, synthetic_per_class=2, sampling="random", val_fraction=0.0))
    torch.manual_seed(0)
    for persistent in (False, True):  # persistent workers never see set_epoch: visit counts keep them fresh
        loader = torch.utils.data.DataLoader(data.train, batch_size=4, num_workers=2, persistent_workers=persistent)
        epochs = []
        for epoch in range(2):
            data.train.set_epoch(epoch)
            epochs.append(torch.cat([b["points"] for b in loader]))
        assert epochs[0].shape == (16, 64, 3) and not torch.allclose(epochs[0], epochs[1])


def test_registry_accepts_new_datasets(tmp_path):
    name = "toy_for_test_data"
    if name not in dataset_names():
        @register_dataset(name)
        def _toy(cfg):
            return toy_set((6, 6), points=16), toy_set((2, 2), points=16)

    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(name)(lambda cfg: None)
    data = build_datasets(DataConfig(name=name, num_points=8, val_fraction=0.5))
    assert len(data.train) == 6 and len(data.val) == 6 and len(data.test) == 4
    assert data.train[0]["points"].shape == (8, 3)


def test_scanobjectnn_through_build_datasets(tmp_path):
    root = scanobjectnn_layout(tmp_path / "h5_files")
    cfg = {"name": "scanobjectnn", "root": str(root), "num_points": 32, "val_fraction": 0.5}
    data = build_datasets(DataConfig(**cfg, variant="OBJ_ONLY"))
    assert data.num_classes == 15 and len(data.train) + len(data.val) == 16 and len(data.test) == 5
    assert len(data.val) == 1  # only class 0 has two clouds
    default = build_datasets(DataConfig(**cfg))
    assert len(default.train) + len(default.val) == 17  # PB_T50_RS by default


def test_point_cloud_dataset_without_transform():
    ds = PointCloudDataset(toy_set(), transform=None)
    item = ds[-1]
    assert int(item["index"]) == 17 and int(item["label"]) == 3 and item["normals"].shape == (4, 3)
    with pytest.raises(IndexError):
        ds[18]


def test_limited_datasets_keep_their_streams_and_spread_over_the_classes(shared_data):
    """``limited(n)`` (train.limit_batches): point clouds take the first cloud of every class, then the
    second...; scene datasets their first scenes; both keep transform, streams and crops."""
    from pointtune.data import PointCloudDataset, PointCloudSet
    from pointtune.data.scene_dataset import SceneDataset
    from pointtune.data.scenes import read_scannet

    labels = np.array([2, 2, 0, 1, 2, 0, 1, 1])
    pcs = PointCloudSet(np.random.default_rng(0).normal(size=(8, 16, 3)).astype(np.float32), labels, ["a", "b", "c"])
    full = PointCloudDataset(pcs, None, train=True, seed=7)
    cut = full.limited(5)
    # first of each class: 2 (a), 3 (b), 0 (c); then the second of each: 5 (a), 6 (b)
    assert [int(cut[i]["label"]) for i in range(len(cut))] == [2, 0, 1, 0, 1]
    assert np.array_equal(cut.pcs.points, pcs.points[[0, 2, 3, 5, 6]]) and cut.train and cut.seed == 7
    assert len(full.limited(100)) == 8
    with pytest.raises(ValueError, match="count must be >= 1"):
        full.limited(0)
    scenes = read_scannet(shared_data / "scannet_subset")
    ds = SceneDataset(scenes, None, voxel_size=0.05, max_points=2048, train=False, loop=2, seed=3)
    one = ds.limited(1)
    assert one.scenes.names == scenes.names[:1] and len(one) == 2 and one.max_points == 2048
    assert torch.equal(one[0]["points"], ds[0]["points"])
