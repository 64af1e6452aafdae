"""pointtune.ops against brute-force loop references on small random clouds."""

import numpy as np
import pytest
import torch

from pointtune.ops import ball_query, fps, gather_points, group, knn, square_distance

B, N = 2, 64


@pytest.fixture
def clouds():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(B, N, 3, generator=g, dtype=torch.float64) * 2 - 1
    return xyz


def ref_fps(pts: np.ndarray, m: int) -> list[int]:
    chosen = [0]
    dist = np.full(len(pts), np.inf)
    for _ in range(m - 1):
        last = pts[chosen[-1]]
        for j in range(len(pts)):
            d = sum((pts[j, c] - last[c]) ** 2 for c in range(3))
            dist[j] = min(dist[j], d)
        best = 0
        for j in range(len(pts)):
            if dist[j] > dist[best]:
                best = j
        chosen.append(best)
    return chosen


def test_fps_matches_greedy_loop(clouds):
    idx = fps(clouds, 16)
    assert idx.shape == (B, 16) and idx.dtype == torch.long
    for b in range(B):
        assert idx[b].tolist() == ref_fps(clouds[b].numpy(), 16)
        assert len(set(idx[b].tolist())) == 16


def test_fps_float32_and_full_size(clouds):
    idx = fps(clouds.float(), N)
    assert sorted(idx[0].tolist()) == list(range(N))
    assert (idx[:, 0] == 0).all()


@pytest.mark.parametrize("channels", [3, 7])
def test_knn_matches_sorted_distances(channels):
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(B, N, channels, generator=g, dtype=torch.float64)
    query = torch.randn(B, 10, channels, generator=g, dtype=torch.float64)
    k = 5
    idx = knn(query, ref, k)
    assert idx.shape == (B, 10, k) and idx.dtype == torch.long
    for b in range(B):
        for i in range(10):
            d_all = np.array([np.linalg.norm(query[b, i].numpy() - ref[b, j].numpy()) for j in range(N)])
            expected = np.sort(d_all)[:k]
            got = d_all[idx[b, i].numpy()]
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)  # same set, nearest first


def test_knn_self_is_first(clouds):
    idx = knn(clouds, clouds, 4)
    assert (idx[..., 0] == torch.arange(N)).all()


def test_square_distance_matches_cdist(clouds):
    d2 = square_distance(clouds[:, :9], clouds)
    torch.testing.assert_close(d2, torch.cdist(clouds[:, :9], clouds) ** 2)


def ref_ball_query(pts: np.ndarray, centres: np.ndarray, radius: float, k: int) -> list[list[int]]:
    out = []
    for c in centres:
        d2 = [float(((p - c) ** 2).sum()) for p in pts]
        found = [j for j in range(len(pts)) if d2[j] < radius**2][:k]
        if not found:
            found = [int(np.argmin(d2))]
        out.append(found + [found[0]] * (k - len(found)))
    return out


@pytest.mark.parametrize("radius,k", [(0.3, 8), (0.6, 8), (0.05, 4), (10.0, 80)])
def test_ball_query_matches_index_order_loop(clouds, radius, k):
    g = torch.Generator().manual_seed(2)
    centres = torch.cat([clouds[:, :6], torch.rand(B, 6, 3, generator=g, dtype=torch.float64) * 2 - 1], dim=1)
    idx = ball_query(clouds, centres, radius, k)
    assert idx.shape == (B, 12, k) and idx.dtype == torch.long
    for b in range(B):
        assert idx[b].tolist() == ref_ball_query(clouds[b].numpy(), centres[b].numpy(), radius, k)


def test_ball_query_empty_ball_uses_nearest(clouds):
    far = torch.full((B, 1, 3), 5.0, dtype=torch.float64)
    idx = ball_query(clouds, far, 0.1, 3)
    nearest = ((clouds - far) ** 2).sum(-1).argmin(-1)
    assert (idx == nearest[:, None, None]).all()


def test_gather_points_matches_loop(clouds):
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(B, N, 5, generator=g)
    idx2 = torch.randint(0, N, (B, 7), generator=g)
    idx3 = torch.randint(0, N, (B, 7, 4), generator=g)
    out2, out3 = gather_points(feats, idx2), gather_points(feats, idx3)
    assert out2.shape == (B, 7, 5) and out3.shape == (B, 7, 4, 5)
    for b in range(B):
        for m in range(7):
            assert torch.equal(out2[b, m], feats[b, idx2[b, m]])
            for j in range(4):
                assert torch.equal(out3[b, m, j], feats[b, idx3[b, m, j]])


def test_gather_points_gradient():
    x = torch.randn(B, 5, 2, requires_grad=True)
    idx = torch.tensor([[0, 0, 3], [4, 1, 1]])
    gather_points(x, idx).sum().backward()
    expected = torch.zeros(B, 5, 2)
    expected[0, 0], expected[0, 3], expected[1, 4], expected[1, 1] = 2, 1, 1, 2
    assert torch.equal(x.grad, expected)


def test_group_relative_and_features(clouds):
    feats = torch.randn(B, N, 4, dtype=torch.float64)
    centres = gather_points(clouds, fps(clouds, 5))
    idx = ball_query(clouds, centres, 0.5, 6)
    grouped = group(clouds, centres, idx, feats)
    assert grouped.shape == (B, 5, 6, 7)
    torch.testing.assert_close(grouped[..., :3], gather_points(clouds, idx) - centres[:, :, None])
    torch.testing.assert_close(grouped[..., 3:], gather_points(feats, idx))
    assert group(clouds, centres, idx, relative=False).shape == (B, 5, 6, 3)
    assert (grouped[..., :3].norm(dim=-1) < 0.5).all()


def test_errors(clouds):
    with pytest.raises(ValueError, match="m=65"):
        fps(clouds, N + 1)
    with pytest.raises(ValueError):
        fps(clouds, 0)
    with pytest.raises(ValueError):
        fps(clouds[..., :2], 4)
    with pytest.raises(TypeError):
        fps(clouds, 2.0)
    with pytest.raises(ValueError, match="k=65"):
        knn(clouds, clouds, N + 1)
    with pytest.raises(ValueError, match="batch"):
        knn(clouds[:1], clouds, 3)
    with pytest.raises(ValueError, match="channel"):
        knn(clouds[..., :2], clouds, 3)
    with pytest.raises(ValueError, match="radius"):
        ball_query(clouds, clouds[:, :3], 0.0, 4)
    with pytest.raises(ValueError):
        ball_query(clouds, clouds[:, :3], 0.1, 0)
    with pytest.raises(TypeError):
        knn(torch.zeros(B, 4, 3, dtype=torch.long), torch.zeros(B, 4, 3, dtype=torch.long), 2)
    with pytest.raises(TypeError):
        gather_points(clouds, torch.zeros(B, 3))
    with pytest.raises(ValueError, match="batch"):
        gather_points(clouds, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        gather_points(clouds, torch.zeros(B, dtype=torch.long))
