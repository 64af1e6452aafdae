"""The dataset cache: built once per data config, the same clouds back, keyed by what changes them."""

import numpy as np
import pytest

import pointtune.data.build as build_module
from helpers import real
from conftest import SHARED_DATA
from pointtune.config import build_config
from pointtune.data import build_datasets
from pointtune.data.cache import cache_dir, cache_key


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POINTTUNE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def count_builds(monkeypatch):
    calls = []
    original = build_module._build_splits
    monkeypatch.setattr(build_module, "_build_splits", lambda cfg: calls.append(cfg) or original(cfg))
    return calls


def _data(**overrides):
    return build_config("cedr", overrides={"data.synthetic_per_class": 8, "data.num_points": 64, **overrides}).data


def _same(a, b):
    for split in ("train", "val", "test", "train_eval"):
        x, y = getattr(a, split).pcs, getattr(b, split).pcs
        assert np.array_equal(x.points, y.points) and np.array_equal(x.labels, y.labels)
    assert a.class_names == b.class_names


def test_second_build_reads_the_cache(cache, count_builds):
    first, second = build_datasets(_data()), build_datasets(_data())
    assert len(count_builds) == 1 and len(list(cache.glob("datasets/synthetic-*.npz"))) == 1
    _same(first, second)
    assert cache_dir() == cache / "datasets"


def test_per_item_settings_share_an_entry_but_clouds_do_not(cache, count_builds):
    build_datasets(_data())
    build_datasets(_data(**{"data.augment.jitter_sigma": 0.01, "data.normalize": False}))
    assert len(count_builds) == 1
    build_datasets(_data(**{"data.split_seed": 1}))
    build_datasets(_data(**{"data.num_points": 32}))
    assert len(count_builds) == 3


def test_cache_off_and_unreadable_files(cache, count_builds):
    build_datasets(_data(**{"data.cache": False}))
    assert not cache.exists() and len(count_builds) == 1
    build_datasets(_data())
    (entry,) = cache.glob("datasets/*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated: rebuilt, not an error
    build_datasets(_data())
    assert len(count_builds) == 3


def test_fps_splits_come_back_identical(cache, count_builds):
    root = real(SHARED_DATA / "modelnet40_subset")
    cfg = _data(**{"data.name": "modelnet40", "data.root": str(root), "data.sampling": "fps",
                   "data.num_points": 128, "data.classes": ["bathtub", "bench"]})
    first, second = build_datasets(cfg), build_datasets(cfg)
    assert len(count_builds) == 1
    _same(first, second)
    assert first.train.pcs.points.shape[1] == 128


def test_key_follows_the_files_on_disk(tmp_path):
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.h5").write_bytes(b"x")
    cfg = _data(**{"data.name": "modelnet40", "data.root": str(root)})
    before = cache_key(cfg)
    assert cache_key(cfg) == before
    (root / "sub" / "b.txt").write_text("new file")
    assert cache_key(cfg) != before
