"""pointtune.data.transforms: each transform's geometry, its effect on normals, and its randomness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointtune.data import PointCloudSet
from pointtune.data.transforms import (
    Compose,
    Jitter,
    NormalizeUnitSphere,
    RandomScale,
    RandomTranslate,
    RotateUp,
    Shuffle,
    Subsample,
    fps_subsample_set,
    rotation_about_axis,
)


def sphere(n=500, seed=0, radius=1.0, centre=(0.0, 0.0, 0.0)):
    """Points on a sphere and their outward unit normals, float32."""
    d = np.random.default_rng(seed).normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return (radius * d + np.asarray(centre)).astype(np.float32), d.astype(np.float32)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_normalize_unit_sphere():
    pts, nrm = sphere(radius=3.0, centre=(5.0, -2.0, 1.0))
    out, out_n = NormalizeUnitSphere()(pts, nrm, rng())
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-5)
    assert np.linalg.norm(out, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    assert out_n is nrm and out.dtype == np.float32
    expected = (pts - pts.mean(0)) / np.linalg.norm(pts - pts.mean(0), axis=1).max()
    np.testing.assert_allclose(out, expected, atol=1e-6)
    same, _ = NormalizeUnitSphere()(np.ones((4, 3), np.float32), None, rng())
    np.testing.assert_array_equal(same, 0.0)  # degenerate cloud: centred, not divided by zero


def test_random_scale_per_axis_and_normals():
    pts, nrm = sphere()
    out, out_n = RandomScale(0.5, 2.0)(pts, nrm, rng(3))
    factors = out / pts  # one factor per axis, shared by every point
    np.testing.assert_allclose(factors, np.broadcast_to(factors[0], factors.shape), rtol=1e-5)
    assert np.all((factors[0] >= 0.5) & (factors[0] <= 2.0)) and np.ptp(factors[0]) > 0
    # sphere scaled by s is the ellipsoid sum (x/s)^2 = 1, whose normal is x / s^2
    expected = out / factors[0] ** 2
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out_n, expected, atol=1e-5)
    defaults = [RandomScale()(pts, None, rng(s))[0][0] / pts[0] for s in range(50)]
    assert np.min(defaults) >= 2 / 3 - 1e-6 and np.max(defaults) <= 1.5 + 1e-6
    with pytest.raises(ValueError):
        RandomScale(1.5, 1.0)


def test_random_translate_constant_offset_within_bounds():
    pts, nrm = sphere()
    offsets = []
    for s in range(50):
        out, out_n = RandomTranslate(0.2)(pts, nrm, rng(s))
        delta = out - pts
        np.testing.assert_allclose(delta, np.broadcast_to(delta[0], delta.shape), atol=1e-6)
        offsets.append(delta[0])
        assert out_n is nrm
    offsets = np.array(offsets)
    assert np.abs(offsets).max() <= 0.2 + 1e-6 and np.abs(offsets).max() > 0.15


def test_jitter_is_clipped_gaussian():
    pts = np.zeros((20000, 3), np.float32)
    out, _ = Jitter(0.01, 0.05)(pts, None, rng())
    assert np.abs(out).max() <= 0.05 + 1e-7
    assert out.std() == pytest.approx(0.01, rel=0.05)
    clipped, _ = Jitter(0.1, 0.02)(pts, None, rng())
    assert np.abs(clipped).max() <= 0.02 + 1e-7 and np.mean(np.abs(clipped) >= 0.02 - 1e-7) > 0.5


def test_rotation_matrix_matches_pointnet_and_is_proper():
    theta = 0.7
    c, s = np.cos(theta), np.sin(theta)
    np.testing.assert_allclose(rotation_about_axis(1, theta), [[c, 0, s], [0, 1, 0], [-s, 0, c]])
    for axis in range(3):
        r = rotation_about_axis(axis, theta)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        np.testing.assert_allclose(r[:, axis], np.eye(3)[axis])  # the axis is fixed
    # right-handed: a quarter turn about z takes x to y
    np.testing.assert_allclose(rotation_about_axis(2, np.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


@pytest.mark.parametrize("axis", [1, 2])
def test_rotate_up_preserves_norms_up_coordinate_and_normals(axis):
    pts, nrm = sphere(centre=(0.3, 0.2, -0.1))
    out, out_n = RotateUp(axis=axis)(pts, nrm, rng(1))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(pts, axis=1), atol=1e-5)
    np.testing.assert_allclose(out[:, axis], pts[:, axis], atol=1e-6)
    np.testing.assert_allclose((out * out_n).sum(1), (pts * nrm).sum(1), atol=1e-5)  # rigid: normals follow
    # the same rotation moves points and normals: solve for it from the points
    r, *_ = np.linalg.lstsq(pts, out, rcond=None)
    np.testing.assert_allclose(nrm @ r, out_n, atol=1e-4)


def test_rotate_up_angle_range():
    pts = np.array([[1.0, 0.0, 0.0]], np.float32)
    def angles(range_deg):
        outs = np.array([RotateUp(1, range_deg)(pts, None, rng(s))[0][0] for s in range(400)])
        return np.degrees(np.arctan2(-outs[:, 2], outs[:, 0]))  # rotation about y takes x towards -z
    small = angles(30.0)
    assert np.abs(small).max() <= 15.0 + 1e-4 and np.abs(small).max() > 13.0
    full = angles(360.0)
    assert full.min() < -170 and full.max() > 170  # the whole circle
    np.testing.assert_allclose(RotateUp(1, 0.0)(pts, None, rng())[0], pts)
    with pytest.raises(ValueError):
        RotateUp(axis=3)


def test_shuffle_permutes_points_with_their_normals():
    pts, nrm = sphere(100)
    out, out_n = Shuffle()(pts, nrm, rng())
    assert not np.array_equal(out, pts)
    order = np.lexsort(out.T)
    np.testing.assert_array_equal(out[order], pts[np.lexsort(pts.T)])
    np.testing.assert_allclose(np.cross(out, out_n), 0.0, atol=1e-6)  # each normal still at its point


def test_subsample_first_and_random():
    pts, nrm = sphere(300)
    out, out_n = Subsample(64, "first")(pts, nrm, rng())
    np.testing.assert_array_equal(out, pts[:64])
    np.testing.assert_array_equal(out_n, nrm[:64])
    a, a_n = Subsample(64, "random")(pts, nrm, rng(1))
    b, _ = Subsample(64, "random")(pts, nrm, rng(2))
    again, _ = Subsample(64, "random")(pts, nrm, rng(1))
    assert a.shape == (64, 3) and len(np.unique(a, axis=0)) == 64
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, again)
    rows = [int(np.flatnonzero((pts == p).all(1))[0]) for p in a]
    np.testing.assert_array_equal(a_n, nrm[rows])
    with pytest.raises(ValueError, match="cannot subsample 400 points from a cloud of 300"):
        Subsample(400, "random")(pts, nrm, rng())
    with pytest.raises(ValueError):
        Subsample(10, "poisson")


def _min_pairwise(p):
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    return d[~np.eye(len(p), dtype=bool)].min()


def test_subsample_fps_picks_well_spread_points():
    from pointtune.ops import fps

    # a dense blob plus a few far points: FPS must take the far points, random sampling mostly the blob
    g = rng(0)
    pts = np.vstack([g.normal(0, 0.05, (990, 3)), g.uniform(-1, 1, (10, 3)) * 3]).astype(np.float32)
    out, _ = Subsample(32, "fps")(pts, None, rng())
    assert len(np.unique(out, axis=0)) == 32
    np.testing.assert_array_equal(out[0], pts[0])  # FPS starts at row 0
    assert np.isin(np.arange(990, 1000), [int(np.flatnonzero((pts == p).all(1))[0]) for p in out]).all()
    rand, _ = Subsample(32, "random")(pts, None, rng())
    assert _min_pairwise(out) > 2 * _min_pairwise(rand)
    idx = fps(torch.from_numpy(pts)[None], 32)[0].numpy()
    np.testing.assert_array_equal(out, pts[idx])
    # on a sphere: evenly spread (covering radius small) compared with the first rows
    sph, sph_n = sphere(2000)
    fps_pts, fps_n = Subsample(100, "fps")(sph, sph_n, rng())
    cover = lambda sub: np.linalg.norm(sph[:, None] - sub[None], axis=-1).min(1).max()
    assert cover(fps_pts) < 0.8 * cover(sph[:100])
    np.testing.assert_allclose(np.cross(fps_pts, fps_n), 0.0, atol=1e-6)


def test_fps_subsample_set_matches_per_cloud_fps():
    clouds = np.stack([sphere(200, seed=s)[0] for s in range(5)])
    normals = np.stack([sphere(200, seed=s)[1] for s in range(5)])
    pcs = PointCloudSet(clouds, np.arange(5) % 2, ["a", "b"], normals)
    out = fps_subsample_set(pcs, 50, chunk=2)
    assert out.points.shape == (5, 50, 3) and out.labels.tolist() == [0, 1, 0, 1, 0]
    for i in range(5):
        p, n = Subsample(50, "fps")(clouds[i], normals[i], rng())
        np.testing.assert_array_equal(out.points[i], p)
        np.testing.assert_array_equal(out.normals[i], n)


def test_compose_is_ordered_and_reproducible():
    pts, nrm = sphere(256, centre=(2.0, 0.0, 0.0))
    pipeline = Compose([Subsample(128, "random"), NormalizeUnitSphere(), RotateUp(), RandomScale(),
                        RandomTranslate(), Jitter(), Shuffle()])
    a, a_n = pipeline(pts, nrm, rng(4))
    b, b_n = pipeline(pts, nrm, rng(4))
    c, _ = pipeline(pts, nrm, rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a_n, b_n)
    assert a.shape == (128, 3) and a_n.shape == (128, 3) and not np.allclose(a, c)
    np.testing.assert_allclose(np.linalg.norm(a_n, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(a, axis=1).max() < 1.5 * 1.0 + 0.2 * np.sqrt(3) + 0.05  # scale, shift, jitter bounds
    assert "RotateUp" in repr(pipeline)
    assert np.array_equal(pts, sphere(256, centre=(2.0, 0.0, 0.0))[0])  # inputs untouched
