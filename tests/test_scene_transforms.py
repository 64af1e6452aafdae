"""Scene transforms (pointtune.data.scene_transforms): each transform's defining property on small made-up
scenes, plus one grid-sampling check on a real ScanNet scene (skipped only where ../shared/data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from pointtune.data.scene_transforms import (
    POINT_KEYS,
    CenterShift,
    ChromaticAutoContrast,
    ChromaticDrop,
    ChromaticNormalize,
    GridSample,
    HeightFeature,
    PadPoints,
    PointJitter,
    RandomSubsample,
    RotateZ,
    ScaleMirror,
    SceneCompose,
    ShufflePoints,
    SphereCrop,
    select_points,
)
from pointtune.data.scenes import IGNORE_INDEX, read_scannet_scene

from conftest import SHARED_DATA
from helpers import real


def make_scene(n: int = 2000, seed: int = 0, normals: bool = False) -> dict[str, np.ndarray]:
    """A room-sized random scene: 4 m x 3 m x 2.5 m, colours 10..240, 5 classes, 7 instances."""
    rng = np.random.default_rng(seed)
    scene = {
        "coord": (rng.random((n, 3)) * [4.0, 3.0, 2.5] + [10.0, -5.0, 0.3]).astype(np.float32),
        "color": rng.uniform(10, 240, size=(n, 3)).astype(np.float32),
        "segment": rng.integers(0, 5, size=n).astype(np.int64),
        "instance": rng.integers(0, 7, size=n).astype(np.int64),
    }
    if normals:
        v = rng.normal(size=(n, 3))
        scene["normal"] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    return scene


def copy_of(scene):
    return {k: v.copy() for k, v in scene.items()}


def assert_rows_follow(out, scene):
    """Every per-point key of ``out`` holds the rows ``out['point_index']`` of ``scene``."""
    idx = out["point_index"]
    for key in ("color", "segment", "instance", "normal"):
        if key in scene:
            np.testing.assert_array_equal(out[key], scene[key][idx])


def pairwise(x):
    return np.linalg.norm(x[:, None, :].astype(np.float64) - x[None, :, :], axis=-1)


# ------------------------------------------------------------------------------------------- select_points


def test_select_points_indexes_every_point_key_and_composes_point_index():
    scene = make_scene(50)
    scene["name"] = np.array("room")
    first = select_points(scene, np.array([4, 2, 2, 9]))
    np.testing.assert_array_equal(first["point_index"], [4, 2, 2, 9])
    assert first["name"] is scene["name"]  # not a per-point key: passed through
    second = select_points(first, np.array([3, 0]))
    np.testing.assert_array_equal(second["point_index"], [9, 4])
    np.testing.assert_array_equal(second["coord"], scene["coord"][[9, 4]])
    assert set(POINT_KEYS) >= {"coord", "color", "segment", "instance", "mask", "height", "point_index"}


# --------------------------------------------------------------------------------------------- GridSample


def test_grid_sample_train_keeps_exactly_one_point_per_occupied_voxel():
    scene = make_scene(5000)
    grid = GridSample(0.25, "train")
    keys = grid.voxel_keys(scene["coord"])
    out = grid(scene, np.random.default_rng(1))
    kept = keys[out["point_index"]]
    assert len(np.unique(kept)) == len(kept) == len(np.unique(keys))  # one per voxel, every voxel
    np.testing.assert_array_equal(out["coord"], scene["coord"][out["point_index"]])
    assert_rows_follow(out, scene)
    other = grid(scene, np.random.default_rng(2))
    assert not np.array_equal(np.sort(other["point_index"]), np.sort(out["point_index"]))  # random pick
    again = grid(scene, np.random.default_rng(1))
    np.testing.assert_array_equal(again["point_index"], out["point_index"])


def test_grid_sample_test_passes_cover_every_point_and_inverse_votes_back():
    scene = make_scene(3000)
    grid = GridSample(0.3, "test")
    keys = grid.voxel_keys(scene["coord"])
    _, counts = np.unique(keys, return_counts=True)
    passes = grid.passes(scene)
    assert len(passes) == counts.max() > 1
    seen = np.zeros(len(keys), dtype=int)
    for p, part in enumerate(passes):
        assert len(part["coord"]) == len(counts)
        assert len(np.unique(keys[part["point_index"]])) == len(counts)  # one row per voxel
        # inverse: the row of this pass in every input point's voxel
        np.testing.assert_array_equal(keys[part["point_index"][part["inverse"]]], keys)
        assert_rows_follow(part, scene)
        seen[part["point_index"]] += 1
    assert (seen >= 1).all()
    # the test-mode call is pass 0 (first point of every voxel), deterministic
    single = grid(scene, np.random.default_rng(5))
    np.testing.assert_array_equal(single["point_index"], passes[0]["point_index"])
    assert len(grid.passes(scene, max_passes=2)) == 2


def test_grid_sample_pass_p_keeps_the_p_th_point_of_each_voxel():
    coord = np.array([[0.01, 0, 0], [0.02, 0, 0], [0.03, 0, 0], [1.5, 0, 0]], dtype=np.float32)
    scene = {"coord": coord, "color": np.zeros((4, 3), np.float32), "segment": np.arange(4)}
    passes = GridSample(1.0, "test").passes(scene)
    assert [sorted(p["point_index"].tolist()) for p in passes] == [[0, 3], [1, 3], [2, 3]]


def test_grid_sample_on_a_real_scannet_scene():
    scene = read_scannet_scene(real(SHARED_DATA / "scannet_subset"), "scene0000_00")
    grid = GridSample(0.04, "train")
    out = grid(scene, np.random.default_rng(0))
    keys = grid.voxel_keys(scene["coord"])
    assert len(out["coord"]) == len(np.unique(keys)) < len(scene["coord"])
    assert len(np.unique(keys[out["point_index"]])) == len(out["coord"])


def test_grid_sample_rejects_bad_knobs():
    with pytest.raises(ValueError):
        GridSample(0.0)
    with pytest.raises(ValueError):
        GridSample(0.1, "val")


# ----------------------------------------------------------------------------------------------- crops


def test_sphere_crop_keeps_the_max_points_nearest_to_its_centre():
    scene = make_scene(3000)
    crop = SphereCrop(500, "random")
    out = crop(scene, np.random.default_rng(3))
    assert len(out["coord"]) == 500
    assert_rows_follow(out, scene)
    # the centre is the point the same generator draws; the crop is exactly its 500 nearest points
    centre = scene["coord"][np.random.default_rng(3).integers(3000)]
    nearest = np.argsort(np.linalg.norm(scene["coord"] - centre, axis=1))
    assert set(out["point_index"]) == set(nearest[:500])
    kept_far = np.linalg.norm(out["coord"] - centre, axis=1).max()
    assert kept_far <= np.linalg.norm(scene["coord"][nearest[500]] - centre)
    # middle: the point nearest the bounding-box centre, deterministic
    mid = SphereCrop(500, "middle")
    a, b = mid(scene, np.random.default_rng(0)), mid(scene, np.random.default_rng(1))
    np.testing.assert_array_equal(a["point_index"], b["point_index"])
    box = (scene["coord"].min(0) + scene["coord"].max(0)) / 2
    c = scene["coord"][np.argmin(np.linalg.norm(scene["coord"] - box, axis=1))]
    expect = np.argsort(np.linalg.norm(scene["coord"] - c, axis=1))[:500]
    assert set(a["point_index"]) == set(expect)


def test_sphere_crop_leaves_small_samples_whole_and_cover_holds_every_point():
    scene = make_scene(300)
    out = SphereCrop(500)(scene, np.random.default_rng(0))
    np.testing.assert_array_equal(out["coord"], scene["coord"])
    big = make_scene(4000, seed=1)
    crops = SphereCrop(700).cover(big)
    assert all(len(c["coord"]) == 700 for c in crops)
    covered = np.zeros(4000, dtype=bool)
    for c in crops:
        covered[c["point_index"]] = True
        assert_rows_follow(c, big)
    assert covered.all() and len(crops) < 4000 / 700 * 4


def test_random_subsample_and_shuffle_keep_rows_aligned():
    scene = make_scene(1000)
    out = RandomSubsample(100)(scene, np.random.default_rng(0))
    assert len(out["coord"]) == 100 == len(np.unique(out["point_index"]))
    assert_rows_follow(out, scene)
    shuffled = ShufflePoints()(scene, np.random.default_rng(0))
    assert sorted(shuffled["point_index"].tolist()) == list(range(1000))
    assert_rows_follow(shuffled, scene)


# --------------------------------------------------------------------------------------------- geometry


def test_center_shift_centres_xy_and_puts_the_floor_at_zero():
    scene = make_scene(500)
    out = CenterShift("bbox", z_min=True)(scene, None)
    c = out["coord"]
    np.testing.assert_allclose((c[:, :2].min(0) + c[:, :2].max(0)) / 2, 0, atol=1e-5)
    assert abs(c[:, 2].min()) < 1e-6
    mean = CenterShift("mean", z_min=False)(scene, None)["coord"]
    np.testing.assert_allclose(mean[:, :2].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(mean[:, 2], scene["coord"][:, 2])
    low = CenterShift("min")(scene, None)["coord"]
    np.testing.assert_allclose(low.min(0), 0, atol=1e-6)


def test_rotate_z_keeps_distances_and_heights_and_rotates_normals():
    scene = make_scene(200, normals=True)
    out = RotateZ()(scene, np.random.default_rng(4))
    np.testing.assert_allclose(pairwise(out["coord"]), pairwise(scene["coord"]), atol=1e-4)
    np.testing.assert_allclose(out["coord"][:, 2], scene["coord"][:, 2], atol=1e-5)
    assert not np.allclose(out["coord"], scene["coord"])
    # normal . (p_i - p_j) is invariant under one rotation of both
    dots_before = ((scene["coord"][1:] - scene["coord"][0]) * scene["normal"][1:]).sum(1)
    dots_after = ((out["coord"][1:] - out["coord"][0]) * out["normal"][1:]).sum(1)
    np.testing.assert_allclose(dots_after, dots_before, atol=1e-4)
    still = RotateZ(0.0)(scene, np.random.default_rng(4))
    np.testing.assert_allclose(still["coord"], scene["coord"], atol=1e-6)


def test_scale_mirror_scales_within_range_and_mirrors_by_probability():
    scene = make_scene(100, normals=True)
    out = ScaleMirror(0.8, 1.2, anisotropic=True, mirror=(1.0, 0.0, 0.0))(scene, np.random.default_rng(0))
    ratio = out["coord"] / scene["coord"]
    assert np.allclose(ratio, ratio[0], atol=1e-4)  # one factor per axis
    assert -1.2 - 1e-4 <= ratio[0, 0] <= -0.8 + 1e-4 and all(0.8 - 1e-4 <= r <= 1.2 + 1e-4 for r in ratio[0, 1:])
    np.testing.assert_allclose(np.linalg.norm(out["normal"], axis=1), 1, atol=1e-5)
    iso = ScaleMirror(0.5, 2.0, anisotropic=False)(scene, np.random.default_rng(1))["coord"] / scene["coord"]
    np.testing.assert_allclose(iso, iso[0, 0], rtol=1e-4)
    with pytest.raises(ValueError):
        ScaleMirror(mirror=(0.2, -1, -1))


def test_point_jitter_is_bounded_by_clip():
    scene = make_scene(1000)
    out = PointJitter(0.01, 0.02)(scene, np.random.default_rng(0))
    delta = np.abs(out["coord"] - scene["coord"])
    assert delta.max() <= 0.02 + 1e-5 and delta.mean() > 1e-3


# ----------------------------------------------------------------------------------------------- colour


def test_chromatic_auto_contrast_stretches_each_channel_to_the_full_range():
    scene = make_scene(500)
    full = ChromaticAutoContrast(p=1.0, blend_factor=1.0)(scene, np.random.default_rng(0))["color"]
    np.testing.assert_allclose(full.min(0), 0, atol=1e-3)
    np.testing.assert_allclose(full.max(0), 255, atol=1e-3)
    half = ChromaticAutoContrast(p=1.0, blend_factor=0.5)(scene, np.random.default_rng(0))["color"]
    np.testing.assert_allclose(half, (scene["color"] + full) / 2, atol=1e-3)
    never = ChromaticAutoContrast(p=0.0)(scene, np.random.default_rng(0))["color"]
    np.testing.assert_array_equal(never, scene["color"])


def test_chromatic_drop_and_normalize():
    scene = make_scene(100)
    np.testing.assert_array_equal(ChromaticDrop(1.0)(scene, np.random.default_rng(0))["color"], 0)
    np.testing.assert_array_equal(ChromaticDrop(0.0)(scene, np.random.default_rng(0))["color"], scene["color"])
    norm = ChromaticNormalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    out = norm({**scene, "color": np.array([[255.0, 127.5, 0.0]], np.float32)}, None)["color"]
    np.testing.assert_allclose(out, [[2.0, 0.0, -0.5]], atol=1e-6)


def test_height_feature_is_z_minus_min_z():
    scene = make_scene(300)
    out = HeightFeature()(scene, None)
    assert out["height"].shape == (300, 1) and out["height"].dtype == np.float32
    np.testing.assert_allclose(out["height"][:, 0], scene["coord"][:, 2] - scene["coord"][:, 2].min(), atol=1e-6)


# ------------------------------------------------------------------------------------------------ padding


def test_pad_points_ignores_the_padding_labels_and_masks_them():
    scene = make_scene(37)
    out = PadPoints(64)(scene, np.random.default_rng(0))
    assert len(out["coord"]) == 64 and out["mask"].dtype == bool
    assert out["mask"][:37].all() and not out["mask"][37:].any()
    np.testing.assert_array_equal(out["segment"][:37], scene["segment"])
    assert (out["segment"][37:] == IGNORE_INDEX).all() and (out["instance"][37:] == -1).all()
    np.testing.assert_array_equal(out["coord"], scene["coord"][out["point_index"]])  # copies of real points
    assert (scene["segment"] >= 0).all()  # input untouched
    exact = PadPoints(37)(scene, np.random.default_rng(0))
    assert exact["mask"].all() and len(exact["coord"]) == 37
    with pytest.raises(ValueError, match="crop it first"):
        PadPoints(10)(scene, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------ compose


def test_compose_is_reproducible_and_never_modifies_its_input():
    scene = make_scene(3000, normals=True)
    before = copy_of(scene)
    pipeline = SceneCompose([
        GridSample(0.1), SphereCrop(800), CenterShift(), RotateZ(), ScaleMirror(mirror=(0.5, 0.5, 0)),
        PointJitter(), ChromaticAutoContrast(p=1.0), ChromaticDrop(0.5), ChromaticNormalize(), HeightFeature(),
        ShufflePoints(), PadPoints(1000),
    ])
    a = pipeline(scene, np.random.default_rng(7))
    b = pipeline(scene, np.random.default_rng(7))
    for key in before:
        np.testing.assert_array_equal(scene[key], before[key])
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert len(a["coord"]) == 1000 and a["height"].shape == (1000, 1)
    np.testing.assert_array_equal(a["segment"][a["mask"]], scene["segment"][a["point_index"][a["mask"]]])
    assert "SphereCrop(800" in repr(pipeline)
