"""``pointtune data inspect`` on the real samples in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from pointtune.cli import main
from pointtune.data.errors import DatasetError
from pointtune.data.inspection import inspect_dataset
from pointtune.data.scenes import read_s3dis

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_inspect_modelnet40_sample(shared_data, tmp_path):
    report = inspect_dataset(shared_data / "modelnet40_subset", "modelnet40", png=tmp_path / "m.png", items=3)
    assert report.layout == "hdf5" and len(report.class_names) == 40
    train, test = report.splits
    assert (train.items, test.items) == (1019, 197)  # the sample's README
    assert (train.points_min, train.points_median, train.points_max) == (2048, 2048, 2048)
    airplane = report.class_names.index("airplane")
    assert (train.class_counts[airplane], test.class_counts[airplane]) == (626, 100)
    assert train.class_counts.sum() == 1019
    assert (tmp_path / "m.png").read_bytes()[:8] == PNG_MAGIC


def test_inspect_s3dis_sample_counts_points_per_class(shared_data, tmp_path):
    root = shared_data / "s3dis_subset"
    report = inspect_dataset(root, "s3dis", png=tmp_path / "s.png")
    assert report.layout == "Area_1 npy"
    train = report.splits[0]
    rooms = read_s3dis(root)
    sizes = rooms.num_points()
    assert (train.items, train.points_min, train.points_max) == (2, sizes.min(), sizes.max())
    np.testing.assert_array_equal(train.class_counts, rooms.label_counts())
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC


def test_inspect_command_on_the_scannet_sample(shared_data, tmp_path, capsys):
    png = tmp_path / "scannet.png"
    assert main(["data", "inspect", str(shared_data / "scannet_subset"), "--dataset", "scannet",
                 "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "layout arrays" in out and "train      2 items, points per item min 80583 / median 80976 / max 81369" in out
    assert "otherfurniture" in out and png.read_bytes()[:8] == PNG_MAGIC


def test_inspect_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        inspect_dataset(tmp_path, "nope")
    (tmp_path / "Area_1_office_1.npy").write_bytes(b"not an array")
    assert main(["data", "inspect", str(tmp_path), "--dataset", "s3dis", "--png", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "Area_1_office_1.npy") in err
