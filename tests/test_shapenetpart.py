"""ShapeNetPart readers (text and HDF5 layouts) on the real sample, per-point ``seg`` labels through
PointCloudSet / transforms / PointCloudDataset / build_datasets, and the ``modelnet10`` dataset.

Real-data tests skip only where ../shared/data is absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from pointtune.data import (
    MODELNET10_CLASSES,
    SHAPENETPART_CLASSES,
    SHAPENETPART_SEG_CLASSES,
    Compose,
    DataConfig,
    DatasetError,
    NormalizeUnitSphere,
    PointCloudDataset,
    PointCloudSet,
    RandomScale,
    RotateUp,
    Shuffle,
    Subsample,
    build_datasets,
    filter_classes,
    fps_subsample_set,
    get_dataset_loader,
    read_shapenetpart_h5,
    read_shapenetpart_txt,
    train_val_split,
)
from pointtune.data.shapenetpart import TXT_FOLDER, resample_indices

from conftest import SHARED_DATA
from helpers import one_line_error, real

SNP = SHARED_DATA / "shapenetpart_subset"
SNP_TXT = SNP / TXT_FOLDER
MN40_H5 = SHARED_DATA / "modelnet40_subset"
CAP, SKATEBOARD, TABLE = (SHAPENETPART_CLASSES.index(c) for c in ("Cap", "Skateboard", "Table"))
SYNSETS = {"Cap": "02954340", "Skateboard": "04225987", "Table": "04379243"}


def assert_parts_in_range(pcs: PointCloudSet) -> None:
    for label, seg in zip(pcs.labels, pcs.seg):
        ids = SHAPENETPART_SEG_CLASSES[pcs.class_names[label]]
        assert seg.min() >= ids[0] and seg.max() <= ids[-1], (pcs.class_names[label], np.unique(seg))


def split_layout(tmp_path: Path) -> Path:
    """The sample's text layout (files linked, not copied) plus official-style split lists: test = the cap
    test files, one skateboard and one table; val = the cap val files; train = the other two shapes."""
    root = tmp_path / TXT_FOLDER
    root.mkdir()
    for entry in real(SNP_TXT).iterdir():
        (root / entry.name).symlink_to(entry)
    lists = {"train": [], "val": [], "test": []}
    for synset in SYNSETS.values():
        for i, path in enumerate(sorted((SNP_TXT / synset).glob("*.txt"))):
            split = "val" if "_val_" in path.name else "test" if "_test_" in path.name or i == 0 else "train"
            lists[split].append(f"shape_data/{synset}/{path.stem}")
    (root / "train_test_split").mkdir()
    for split, entries in lists.items():
        (root / "train_test_split" / f"shuffled_{split}_file_list.json").write_text(json.dumps(entries))
    return root


# ---------------------------------------------------------------------------------------------- constants


def test_seg_classes_are_the_standard_50_part_ids():
    assert list(SHAPENETPART_SEG_CLASSES) == SHAPENETPART_CLASSES and len(SHAPENETPART_CLASSES) == 16
    assert sum(SHAPENETPART_SEG_CLASSES.values(), []) == list(range(50))
    ranges = {name: (ids[0], ids[-1]) for name, ids in SHAPENETPART_SEG_CLASSES.items()}
    assert ranges["Airplane"] == (0, 3) and ranges["Cap"] == (6, 7) and ranges["Motorbike"] == (30, 35)
    assert ranges["Skateboard"] == (44, 46) and ranges["Table"] == (47, 49)


def test_resample_indices_rule():
    more = resample_indices(2500, 2048)
    assert more.shape == (2048,) and len(np.unique(more)) == 2048
    np.testing.assert_array_equal(more, np.random.default_rng(0).permutation(2500)[:2048])
    np.testing.assert_array_equal(more, resample_indices(2500, 2048))  # fixed, whatever was read before
    fewer = resample_indices(100, 250)
    assert fewer.shape == (250,) and set(fewer[:100].tolist()) == set(range(100)) and fewer.max() < 100
    with pytest.raises(ValueError):
        resample_indices(0, 10)


# ------------------------------------------------------------------------------------------ readers (sample)


def test_txt_sample_counts_names_and_parts():
    pcs = read_shapenetpart_txt(real(SNP_TXT), "all")
    assert pcs.class_names == SHAPENETPART_CLASSES
    assert pcs.points.shape == (20, 2048, 3) and pcs.points.dtype == np.float32
    assert pcs.normals.shape == (20, 2048, 3) and pcs.seg.shape == (20, 2048) and pcs.seg.dtype == np.int64
    counts = dict(zip(pcs.class_names, pcs.class_counts().tolist()))
    assert counts["Cap"] == 16 and counts["Skateboard"] == 2 and counts["Table"] == 2 and len(pcs) == 20
    # Normals as stored: about 1% of the release's rows are not unit length (some are zero); not fixed up.
    assert (np.abs(np.linalg.norm(pcs.normals, axis=-1) - 1.0) < 1e-3).mean() > 0.95
    assert_parts_in_range(pcs)
    # Global ids as stored: the caps use both their parts, one table all three.
    assert set(np.unique(pcs.seg[pcs.labels == CAP]).tolist()) == {6, 7}
    assert set(np.unique(pcs.seg[pcs.labels == TABLE]).tolist()) == {47, 48, 49}
    # split=None is 'all', and the release's parent directory works as root.
    for other in (read_shapenetpart_txt(SNP_TXT, None), read_shapenetpart_txt(SNP, "all")):
        np.testing.assert_array_equal(other.points, pcs.points)
        np.testing.assert_array_equal(other.seg, pcs.seg)


def test_txt_rows_are_resampled_file_rows():
    path = real(SNP_TXT) / SYNSETS["Skateboard"] / "1ad8d7573dc57ebc247a956ed3779e34.txt"
    rows = np.loadtxt(path)
    pcs = read_shapenetpart_txt(SNP_TXT, "all", num_points=300)
    i = int(np.flatnonzero(pcs.labels == SKATEBOARD)[0])
    expected = rows[resample_indices(len(rows), 300)]
    np.testing.assert_allclose(pcs.points[i], expected[:, :3], atol=1e-6)
    np.testing.assert_allclose(pcs.normals[i], expected[:, 3:6], atol=1e-6)
    np.testing.assert_array_equal(pcs.seg[i], expected[:, 6].astype(np.int64))
    big = read_shapenetpart_txt(SNP_TXT, "all", num_points=3000)  # more than any file: every row, some twice
    assert big.points.shape == (20, 3000, 3)
    assert len(np.unique(big.points[i], axis=0)) == len(np.unique(rows[:, :3].astype(np.float32), axis=0))


def test_h5_sample_counts_names_and_parts():
    pcs = read_shapenetpart_h5(real(SNP), "all")
    assert pcs.class_names == SHAPENETPART_CLASSES
    assert pcs.points.shape == (20, 2048, 3) and pcs.seg.shape == (20, 2048) and pcs.normals is not None
    assert pcs.seg.dtype == np.int64 and pcs.labels.dtype == np.int64
    assert pcs.labels.tolist() == [CAP] * 16 + [SKATEBOARD] * 2 + [TABLE] * 2
    assert_parts_in_range(pcs)


def test_both_layouts_give_the_same_points_and_part_labels():
    """Pair every HDF5 cloud with the text cloud holding all its points (within 1e-5), then compare part
    labels and normals point by point. The text clouds are read with 3000 points, more than any file has,
    so each holds every row of its file."""
    h5 = read_shapenetpart_h5(real(SNP), "all")
    txt = read_shapenetpart_txt(SNP_TXT, "all", num_points=3000)
    trees = [cKDTree(cloud) for cloud in txt.points]
    paired = []
    for i in range(len(h5)):
        matches = []
        for j, tree in enumerate(trees):
            dist, rows = tree.query(h5.points[i], distance_upper_bound=1e-5)
            if np.isfinite(dist).all():
                matches.append((j, rows))
        assert len(matches) == 1, f"h5 cloud {i} matches txt clouds {[j for j, _ in matches]}"
        j, rows = matches[0]
        assert txt.labels[j] == h5.labels[i]
        np.testing.assert_array_equal(txt.seg[j][rows], h5.seg[i])
        np.testing.assert_allclose(txt.normals[j][rows], h5.normals[i], atol=1e-5)
        assert len(np.unique(rows)) == h5.num_points
        paired.append(j)
    assert sorted(paired) == list(range(20))  # one to one


# ------------------------------------------------------------------------------------------------ loaders


def test_txt_loader_uses_the_official_split_lists(tmp_path):
    root = split_layout(tmp_path)
    train, test = get_dataset_loader("shapenetpart")(DataConfig(name="shapenetpart", root=str(root)))
    assert (len(train), len(test)) == (2 + 5, 11 + 2)  # train then val lists; test list
    assert train.labels.tolist() == [SKATEBOARD, TABLE] + [CAP] * 5
    assert train.seg.shape == (7, 2048) and test.num_points == 2048
    assert_parts_in_range(train)
    assert_parts_in_range(test)
    assert len(read_shapenetpart_txt(root, "val")) == 5 and len(read_shapenetpart_txt(root, "train")) == 2
    # More points asked than the default: the loader resamples to num_points.
    train, _ = get_dataset_loader("shapenetpart")(DataConfig(name="shapenetpart", root=str(root), num_points=2500))
    assert train.points.shape == (7, 2500, 3)


def test_loaders_without_an_official_split_name_the_missing_file():
    with pytest.raises(DatasetError) as err:
        get_dataset_loader("shapenetpart")(DataConfig(name="shapenetpart", root=str(real(SNP))))
    one_line_error(err, str(SNP_TXT / "train_test_split" / "shuffled_train_file_list.json"), "all")
    with pytest.raises(DatasetError) as err:
        get_dataset_loader("shapenetpart_h5")(DataConfig(name="shapenetpart_h5", root=str(SNP)))
    one_line_error(err, str(SNP / "ply_data_train*.h5"), "ply_data_all0.h5")
    with pytest.raises(DatasetError) as err:
        build_datasets(DataConfig(name="shapenetpart"))
    one_line_error(err, "data.root")


def test_h5_loader_reads_train_val_test_files(tmp_path):
    src = read_shapenetpart_h5(real(SNP), "all")
    parts = {"train0": [16, 18], "val0": [0, 1, 2], "test0": [3, 4, 17, 19]}
    for name, idx in parts.items():
        with h5py.File(tmp_path / f"ply_data_{name}.h5", "w") as f:
            f["data"], f["label"] = src.points[idx], src.labels[idx, None].astype(np.uint8)
            f["pid"] = src.seg[idx].astype(np.uint8)
    train, test = get_dataset_loader("shapenetpart_h5")(DataConfig(name="shapenetpart_h5", root=str(tmp_path)))
    np.testing.assert_array_equal(train.points, src.points[[16, 18, 0, 1, 2]])
    np.testing.assert_array_equal(train.seg, src.seg[[16, 18, 0, 1, 2]])
    np.testing.assert_array_equal(test.labels, src.labels[[3, 4, 17, 19]])
    assert train.normals is None  # no 'normal' key written
    assert len(read_shapenetpart_h5(tmp_path, "all")) == 9


# ------------------------------------------------------------------------------------ seg through the pipeline


def source_rows(source: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Row of ``source`` (N, 3) that every row of ``points`` (P, 3) is an exact copy of."""
    index = {row.tobytes(): i for i, row in enumerate(source)}
    assert len(index) == len(source)  # distinct points: identification is unambiguous
    return np.asarray([index[row.tobytes()] for row in points])


@pytest.mark.parametrize("method", ["random", "fps"])
def test_dataset_items_carry_seg_with_subsample_and_shuffle(method):
    pcs = read_shapenetpart_h5(real(SNP), "all").subset([0, 16, 19])
    ds = PointCloudDataset(pcs, Compose([Subsample(256, method), Shuffle()]), train=True, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        assert item["seg"].shape == (256,) and item["seg"].dtype == torch.int64
        rows = source_rows(pcs.points[i], item["points"].numpy())
        assert len(np.unique(rows)) == 256
        np.testing.assert_array_equal(item["seg"].numpy(), pcs.seg[i][rows])
        np.testing.assert_array_equal(item["normals"].numpy(), pcs.normals[i][rows])


def test_seg_does_not_change_the_random_draws():
    """The same transform and seed give the same points with and without seg (the geometric steps run as
    usual), and seg follows the rows the row-selecting steps chose."""
    pcs = read_shapenetpart_h5(real(SNP), "all").subset([2, 18])
    bare = PointCloudSet(pcs.points, pcs.labels, pcs.class_names, pcs.normals)
    transform = Compose([Subsample(300, "random"), NormalizeUnitSphere(), RotateUp(1), RandomScale(), Shuffle()])
    with_seg = PointCloudDataset(pcs, transform, train=True, seed=5)
    without = PointCloudDataset(bare, transform, train=True, seed=5)
    # The same random draws with identity geometry (a zero-degree rotation, unit scale): its points are
    # exact copies of source rows, so they identify which source row each output row came from.
    twin = Compose([Subsample(300, "random"), Compose([RotateUp(1, 0.0), RandomScale(1.0, 1.0)]), Shuffle()])
    plain = PointCloudDataset(pcs, twin, train=True, seed=5)
    for i in range(len(pcs)):
        a, b, c = with_seg[i], without[i], plain[i]
        assert "seg" not in b
        np.testing.assert_array_equal(a["points"].numpy(), b["points"].numpy())
        np.testing.assert_array_equal(a["normals"].numpy(), b["normals"].numpy())
        np.testing.assert_array_equal(a["seg"].numpy(), pcs.seg[i][source_rows(pcs.points[i], c["points"].numpy())])


def test_seg_rejects_a_step_that_drops_rows_without_indices():
    pcs = read_shapenetpart_h5(real(SNP), "all").subset([0])

    def halve(points, normals, rng):
        return points[::2], None if normals is None else normals[::2]

    with pytest.raises(ValueError, match="indices"):
        PointCloudDataset(pcs, halve)[0]
    item = PointCloudDataset(pcs, None)[0]
    np.testing.assert_array_equal(item["seg"].numpy(), pcs.seg[0])


def test_set_operations_keep_seg():
    pcs = read_shapenetpart_h5(real(SNP), "all")
    sub = pcs.subset(np.asarray([19, 0]))
    np.testing.assert_array_equal(sub.seg, pcs.seg[[19, 0]])
    np.testing.assert_array_equal(pcs.without_normals().seg, pcs.seg)
    caps = filter_classes(pcs, ["Table", "Cap"])
    assert caps.labels.tolist() == [1] * 16 + [0] * 2
    np.testing.assert_array_equal(caps.seg, pcs.seg[pcs.labels != SKATEBOARD])  # global ids unchanged
    train, val = train_val_split(pcs, 0.25, seed=0)
    assert train.seg.shape == (len(train), 2048) and val.seg.shape == (len(val), 2048)
    fps = fps_subsample_set(pcs.subset([0, 18]), 128, device="cpu")
    for k, i in enumerate([0, 18]):
        np.testing.assert_array_equal(fps.seg[k], pcs.seg[i][source_rows(pcs.points[i], fps.points[k])])


def test_point_cloud_set_checks_seg():
    pts = np.zeros((2, 5, 3), np.float32)
    assert PointCloudSet(pts, [0, 1], ["a", "b"], seg=np.ones((2, 5), np.uint8)).seg.dtype == np.int64
    with pytest.raises(ValueError, match="seg"):
        PointCloudSet(pts, [0, 1], ["a", "b"], seg=np.ones((2, 4), np.int64))
    with pytest.raises(ValueError, match="seg"):
        PointCloudSet(pts, [0, 1], ["a", "b"], seg=np.ones((2, 5), np.float32))


@pytest.mark.parametrize("sampling", ["random", "fps"])
def test_build_datasets_items_have_seg(tmp_path, sampling):
    root = split_layout(tmp_path)
    cfg = DataConfig(name="shapenetpart", root=str(root), num_points=256, sampling=sampling, val_fraction=0.2,
                     use_normals=True, classes=["Cap", "Table"])
    bundle = build_datasets(cfg)
    assert bundle.class_names == ["Cap", "Table"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (5, 1, 12)
    for ds in (bundle.train, bundle.val, bundle.test):
        for i in range(len(ds)):
            item = ds[i]
            assert item["points"].shape == (256, 3) and item["seg"].shape == (256,)
            ids = SHAPENETPART_SEG_CLASSES[bundle.class_names[int(item["label"])]]
            assert ids[0] <= int(item["seg"].min()) and int(item["seg"].max()) <= ids[-1]
    src, item = bundle.train.pcs, bundle.train[0]
    if sampling == "fps":  # presampled clouds of 256 points: the item's seg is a permutation of the cloud's
        assert src.seg.shape == (5, 256)
        assert sorted(item["seg"].tolist()) == sorted(src.seg[0].tolist())
    else:  # 256 of the cloud's 2048 points
        assert (np.bincount(item["seg"].numpy(), minlength=50) <= np.bincount(src.seg[0], minlength=50)).all()


# ---------------------------------------------------------------------------------------------- modelnet10


def test_modelnet10_is_the_modelnet40_subset():
    cfg = DataConfig(name="modelnet10", root=str(real(MN40_H5)))
    train, test = get_dataset_loader("modelnet10")(cfg)
    assert train.class_names == test.class_names == MODELNET10_CLASSES
    assert train.labels.max() < 10 and test.labels.max() < 10
    counts = dict(zip(train.class_names, train.class_counts().tolist()))
    assert counts["bathtub"] == 106 and dict(zip(test.class_names, test.class_counts().tolist()))["bathtub"] == 50
    bundle = build_datasets(cfg.model_copy(update={"classes": ["bed", "bathtub"], "num_points": 64,
                                                   "val_fraction": 0.0}))
    assert bundle.class_names == ["bed", "bathtub"]
    assert np.bincount(bundle.train.labels, minlength=2)[1] == 106
    with pytest.raises(DatasetError) as err:
        build_datasets(cfg.model_copy(update={"classes": ["airplane"]}))
    one_line_error(err, "data.classes", "airplane")


# --------------------------------------------------------------------------------------------------- errors


def test_missing_category_file_is_named(tmp_path):
    root = tmp_path / "release"
    root.mkdir()
    (root / SYNSETS["Cap"]).symlink_to(real(SNP_TXT) / SYNSETS["Cap"])
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_txt(root, "all")
    one_line_error(err, str(root / "synsetoffset2category.txt"), "missing file")
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_txt(tmp_path / "nowhere", "all")
    one_line_error(err, str(tmp_path / "nowhere"), "no such dataset directory")


def test_bad_text_files_are_named(tmp_path):
    root = tmp_path / "release"
    (root / SYNSETS["Cap"]).mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text(f"Cap\t{SYNSETS['Cap']}\n")
    rows = np.loadtxt(real(SNP_TXT) / SYNSETS["Cap"] / "tp3d_cap_test_00.txt")[:50]
    local = rows.copy()
    local[:, 6] -= 6  # per-category ids 0/1 instead of the global 6/7
    bad = root / SYNSETS["Cap"] / "local.txt"
    np.savetxt(bad, local, fmt="%.6f")
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_txt(root, "all")
    one_line_error(err, str(bad), "category Cap", "6..7")
    np.savetxt(bad, rows[:, :6], fmt="%.6f")
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_txt(root, "all")
    one_line_error(err, str(bad), "7 values")
    np.savetxt(bad, rows, fmt="%.6f")
    assert read_shapenetpart_txt(root, "all", num_points=64).seg.shape == (1, 64)
    (root / "synsetoffset2category.txt").write_text("Cup 02954340\n")
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_txt(root, "all")
    one_line_error(err, str(root / "synsetoffset2category.txt"), "'Cup'")
    (root / "synsetoffset2category.txt").write_text(f"Cap\t{SYNSETS['Cap']}\n")
    (root / "train_test_split").mkdir()
    (root / "train_test_split" / "shuffled_test_file_list.json").write_text('["shape_data/04379243/x"]')
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_txt(root, "test")
    one_line_error(err, str(root / "train_test_split" / "shuffled_test_file_list.json"), "04379243")
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_txt(root, "validation")
    one_line_error(err, "'validation'", "trainval")


def test_bad_h5_files_are_named(tmp_path):
    src = read_shapenetpart_h5(real(SNP), "all")
    path = tmp_path / "ply_data_all0.h5"
    with h5py.File(path, "w") as f:
        f["data"], f["label"], f["seg"] = src.points[:2], src.labels[:2, None], src.seg[:2]
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_h5(tmp_path, "all")
    one_line_error(err, str(path), "missing HDF5 key 'pid'")
    with h5py.File(path, "w") as f:
        f["data"], f["label"], f["pid"] = src.points[:2], src.labels[:2, None], src.seg[:2] - 6
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_h5(tmp_path, "all")
    one_line_error(err, str(path), "'pid'", "category Cap", "6..7")
    with h5py.File(path, "w") as f:
        f["data"], f["label"], f["pid"] = src.points[:2], src.labels[:2, None], src.seg[:2, :100]
    with pytest.raises(DatasetError) as err:
        read_shapenetpart_h5(tmp_path, "all")
    one_line_error(err, str(path), "'pid'", "(2, 2048)")
    shutil.copy(real(SNP) / "ply_data_all0.h5", path)
    assert len(read_shapenetpart_h5(tmp_path, "all")) == 20


@pytest.mark.parametrize("name", ["shapenetpart", "shapenetpart_h5"])
def test_variant_all_pretrains_on_every_shape(name):
    """``data.variant: all``: the 20 sample shapes are training data (validation carved out), the test split is
    empty: what a self-supervised method pretrains on, judged on another dataset (``protocol.data``)."""
    data = build_datasets(DataConfig(name=name, root=str(real(SNP)), variant="all", num_points=512, cache=False))
    assert len(data.train) + len(data.val) == 20 and len(data.test) == 0
    assert data.train[0]["points"].shape == (512, 3) and data.class_names == SHAPENETPART_CLASSES
    with pytest.raises(DatasetError) as info:
        build_datasets(DataConfig(name=name, root=str(real(SNP)), variant="trainval", cache=False))
    one_line_error(info, "data.variant:", "official, all", "'trainval'")
