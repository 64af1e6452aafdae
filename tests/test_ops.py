"""pointtune.ops against brute-force loop references on small random clouds.

Every neighbour-search test on coordinates runs on both searches (the ``search`` fixture: the k-d tree and
the blocked brute force), which must agree bit for bit.
"""

import numpy as np
import pytest
import torch

from pointtune import ops
from pointtune.ops import (
    ball_query,
    fps,
    fps_reference,
    gather_points,
    group,
    knn,
    square_distance,
    three_interpolate,
    three_nn,
)
from pointtune.sampling import fps_indices

B, N = 2, 64


@pytest.fixture(params=["kdtree", "brute"])
def search(request):
    """The neighbour search forced on knn / ball_query / three_nn of CPU coordinates."""
    return request.param


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


@pytest.mark.parametrize("channels,search", [(3, "kdtree"), (3, "brute"), (7, "brute")])
def test_knn_matches_sorted_distances(channels, search):
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(B, N, channels, generator=g, dtype=torch.float64)
    query = torch.randn(B, 10, channels, generator=g, dtype=torch.float64)
    k = 5
    idx = knn(query, ref, k, search=search)
    assert idx.shape == (B, 10, k) and idx.dtype == torch.long
    for b in range(B):
        for i in range(10):
            d_all = np.array([np.linalg.norm(query[b, i].numpy() - ref[b, j].numpy()) for j in range(N)])
            expected = np.sort(d_all)[:k]
            got = d_all[idx[b, i].numpy()]
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)  # same set, nearest first


def test_knn_self_is_first(clouds, search):
    idx = knn(clouds, clouds, 4, search=search)
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
def test_ball_query_matches_index_order_loop(clouds, radius, k, search):
    g = torch.Generator().manual_seed(2)
    centres = torch.cat([clouds[:, :6], torch.rand(B, 6, 3, generator=g, dtype=torch.float64) * 2 - 1], dim=1)
    idx = ball_query(clouds, centres, radius, k, search=search)
    assert idx.shape == (B, 12, k) and idx.dtype == torch.long
    for b in range(B):
        assert idx[b].tolist() == ref_ball_query(clouds[b].numpy(), centres[b].numpy(), radius, k)


def test_ball_query_empty_ball_uses_nearest(clouds, search):
    far = torch.full((B, 1, 3), 5.0, dtype=torch.float64)
    idx = ball_query(clouds, far, 0.1, 3, search=search)
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


def test_group_relative_and_features(clouds, search):
    feats = torch.randn(B, N, 4, dtype=torch.float64)
    centres = gather_points(clouds, fps(clouds, 5))
    idx = ball_query(clouds, centres, 0.5, 6, search=search)
    grouped = group(clouds, centres, idx, feats)
    assert grouped.shape == (B, 5, 6, 7)
    torch.testing.assert_close(grouped[..., :3], gather_points(clouds, idx) - centres[:, :, None])
    torch.testing.assert_close(grouped[..., 3:], gather_points(feats, idx))
    assert group(clouds, centres, idx, relative=False).shape == (B, 5, 6, 3)
    assert (grouped[..., :3].norm(dim=-1) < 0.5).all()


def test_errors(clouds, search):
    with pytest.raises(ValueError, match="m=65"):
        fps(clouds, N + 1)
    with pytest.raises(ValueError):
        fps(clouds, 0)
    with pytest.raises(ValueError):
        fps(clouds[..., :2], 4)
    with pytest.raises(TypeError):
        fps(clouds, 2.0)
    with pytest.raises(ValueError, match="k=65"):
        knn(clouds, clouds, N + 1, search=search)
    with pytest.raises(ValueError, match="batch"):
        knn(clouds[:1], clouds, 3, search=search)
    with pytest.raises(ValueError, match="channel"):
        knn(clouds[..., :2], clouds, 3, search=search)
    with pytest.raises(ValueError, match="radius"):
        ball_query(clouds, clouds[:, :3], 0.0, 4, search=search)
    with pytest.raises(ValueError):
        ball_query(clouds, clouds[:, :3], 0.1, 0, search=search)
    with pytest.raises(ValueError, match="no points"):
        ball_query(clouds[:, :0], clouds[:, :3], 0.1, 4, search=search)
    with pytest.raises(TypeError):
        knn(torch.zeros(B, 4, 3, dtype=torch.long), torch.zeros(B, 4, 3, dtype=torch.long), 2, search=search)
    with pytest.raises(TypeError):
        gather_points(clouds, torch.zeros(B, 3))
    with pytest.raises(ValueError, match="batch"):
        gather_points(clouds, torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        gather_points(clouds, torch.zeros(B, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------
# scaling: FPS against the reference loop, blocked neighbour searches against the dense version


def grid_cloud(side: int, dtype=torch.float64) -> torch.Tensor:
    """(1, side**3, 3) integer grid: every distance is an exact small integer, full of ties."""
    axis = torch.arange(side, dtype=dtype)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)


def tie_clouds(dtype):
    g = torch.Generator().manual_seed(10)
    rand = torch.rand(3, 700, 3, generator=g, dtype=dtype) * 2 - 1
    dup = rand.clone()
    dup[:, 400:] = dup[:, :300]  # exact duplicates: zero distances and re-picks once the cloud is covered
    far = torch.rand(1, 3000, 3, generator=g, dtype=dtype) * 30 + 40  # metre-scale, far from the origin
    return [rand, dup, grid_cloud(9, dtype), far]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_identical_to_reference(dtype):
    for cloud in tie_clouds(dtype):
        n = cloud.shape[1]
        for m in (1, 2, 37, n // 3, n):
            expected = fps_reference(cloud, m)
            assert torch.equal(fps(cloud, m), expected), (tuple(cloud.shape), m)
            for bucket_size in (1, 5, 64, n + 1):  # one point per bucket ... one bucket for the whole cloud
                picked = fps_indices(cloud.numpy(), m, bucket_size)
                assert np.array_equal(picked, expected.numpy()), (tuple(cloud.shape), m, bucket_size)


def test_fps_identical_to_reference_on_a_real_scene(shared_data):
    """ScanNet scene0000_00 (metre-scale, walls and floors full of near-ties), 6k points -> 1.5k."""
    vert = np.load(shared_data / "scannet_subset" / "scene0000_00_vert_all.npy")
    xyz = torch.from_numpy(np.ascontiguousarray(vert[::13, :3], dtype=np.float32))[None, :6000]
    assert torch.equal(fps(xyz, 1500), fps_reference(xyz, 1500))


def test_fps_other_dtypes_and_inputs():
    g = torch.Generator().manual_seed(11)
    cloud = torch.rand(2, 300, 3, generator=g)
    half = cloud.to(torch.float16)  # sampled in float32
    assert torch.equal(fps(half, 50), fps_reference(half.float(), 50))
    grad = cloud.clone().requires_grad_(True)
    strided = torch.rand(2, 3, 300, generator=g).transpose(1, 2)  # non-contiguous
    assert torch.equal(fps(grad, 40), fps_reference(cloud, 40))
    assert torch.equal(fps(strided, 40), fps_reference(strided.contiguous(), 40))
    idx = fps(cloud, 8)
    assert idx.dtype == torch.long and idx.device == cloud.device and idx.shape == (2, 8)
    assert fps(cloud[:, :1], 1).tolist() == [[0], [0]]
    with pytest.raises(ValueError, match="bucket_size must be >= 1"):
        fps_indices(cloud.numpy(), 4, 0)


def test_fps_reference_matches_greedy_loop(clouds):
    for b in range(B):
        assert fps_reference(clouds, 12)[b].tolist() == ref_fps(clouds[b].numpy(), 12)


def dense_budgets(b: int, m: int, n: int) -> list:
    """Budgets giving one row per block, blocks that do not divide ``m``, one block short of all, and none."""
    return [1, b * n * 7 + 3, b * n * (m - 1), None]


def record_blocks(monkeypatch) -> list:
    seen = []
    original = ops._Distances.block

    def block(self, start, stop):
        out = original(self, start, stop)
        seen.append(tuple(out.shape))
        return out

    monkeypatch.setattr(ops._Distances, "block", block)
    return seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_blocked_identical_to_dense(dtype, search):
    g = torch.Generator().manual_seed(12)
    for ref in tie_clouds(dtype):
        b, n = ref.shape[:2]
        query = torch.cat([ref[:, :20], torch.rand(b, 23, 3, generator=g, dtype=dtype) * 2 - 1], 1)  # M = 43
        dense_d2, dense_idx = ops._knn(query, ref, 24, None, "knn", "brute")
        for budget in dense_budgets(b, 43, n):
            assert torch.equal(knn(query, ref, 24, budget=budget, search=search), dense_idx), budget
            d2, idx = ops._knn(query, ref, 24, budget, "knn", search)
            assert torch.equal(d2, dense_d2) and torch.equal(idx, dense_idx), budget


def test_knn_blocked_features_match_dense():
    """C > 3 (DGCNN features) keeps the matmul: equal indices wherever no two distances tie within rounding."""
    g = torch.Generator().manual_seed(13)
    feats = torch.randn(2, 90, 16, generator=g, dtype=torch.float64)
    dense = knn(feats, feats, 10, budget=None)
    for budget in dense_budgets(2, 90, 90):
        assert torch.equal(knn(feats, feats, 10, budget=budget), dense)
    assert (dense[..., 0] == torch.arange(90)).all()


def test_knn_exact_on_grid_ties(search):
    grid = grid_cloud(6)
    idx = knn(grid, grid, 7, budget=1, search=search)  # each point: itself, then its 6 face neighbours at 1
    d2 = ((gather_points(grid, idx) - grid[:, :, None]) ** 2).sum(-1)
    expected = torch.tensor([0.0, 1, 1, 1, 1, 1, 1], dtype=torch.float64)
    interior = (grid[0] > 0).all(-1) & (grid[0] < 5).all(-1)
    assert torch.equal(d2[0, interior], expected.expand(int(interior.sum()), 7))
    assert (idx[..., 0] == torch.arange(grid.shape[1])).all()


def test_knn_metre_scale_is_exact(search):
    """Clouds far from the origin: the matmul expansion cancels, the exact kernel does not."""
    g = torch.Generator().manual_seed(14)
    local = torch.rand(1, 2000, 3, generator=g) * 0.5
    query, ref = local[:, :200] + 50.0, local + 50.0
    d2 = ops._knn(query, ref, 8, None, "knn", search)[0]
    exact = ((query.double()[:, :, None] - ref.double()[:, None]) ** 2).sum(-1).sort(-1).values[..., :8]
    torch.testing.assert_close(d2.double(), exact, rtol=1e-5, atol=1e-9)
    assert (d2[..., 0] == 0).all()  # every query is one of the reference points
    mm = square_distance(query, ref).topk(8, largest=False).values
    assert (mm.double() - exact).abs().max() > 1e-5  # what the previous single-matmul path got


@pytest.mark.parametrize("radius,k", [(0.2, 8), (0.5, 16), (0.05, 4), (10.0, 800)])
def test_ball_query_blocked_identical_to_dense_and_loop(radius, k, search):
    g = torch.Generator().manual_seed(15)
    xyz = torch.rand(2, 600, 3, generator=g, dtype=torch.float64) * 2 - 1
    xyz[:, 500:] = xyz[:, :100]
    centres = torch.cat([xyz[:, ::17], torch.rand(2, 6, 3, generator=g, dtype=torch.float64) * 4 - 2], 1)
    m = centres.shape[1]
    dense = ball_query(xyz, centres, radius, k, budget=None, search="brute")
    for b in range(2):
        assert dense[b].tolist() == ref_ball_query(xyz[b].numpy(), centres[b].numpy(), radius, k)
    for budget in dense_budgets(2, m, 600):
        assert torch.equal(ball_query(xyz, centres, radius, k, budget=budget, search=search), dense), budget


def test_ball_query_strict_radius_on_grid(search):
    grid = grid_cloud(5)
    centre = grid[:, 62:63]  # (2, 2, 2): 6 face neighbours at distance exactly 1
    inside = ball_query(grid, centre, 1.0, 10, budget=1, search=search)[0, 0].tolist()
    assert inside == [62] * 10  # strictly below radius**2: only the centre itself
    ring = ball_query(grid, centre, 1.0 + 1e-9, 10, budget=1, search=search)[0, 0].tolist()
    assert ring == [37, 57, 61, 62, 63, 67, 87, 37, 37, 37]  # index order, padded with the first


def test_ball_query_k_above_n_and_empty_balls_blocked(search):
    g = torch.Generator().manual_seed(16)
    xyz = torch.rand(2, 9, 3, generator=g, dtype=torch.float64)
    centres = torch.cat([xyz[:, :3], torch.full((2, 2, 3), 7.0, dtype=torch.float64)], 1)
    for budget in (1, 10, None):
        idx = ball_query(xyz, centres, 0.4, 20, budget=budget, search=search)
        assert idx.shape == (2, 5, 20)
        for b in range(2):
            assert idx[b].tolist() == ref_ball_query(xyz[b].numpy(), centres[b].numpy(), 0.4, 20)


def test_blocks_stay_within_budget(monkeypatch):
    seen = record_blocks(monkeypatch)
    g = torch.Generator().manual_seed(17)
    xyz = torch.rand(2, 1000, 3, generator=g)
    centres = xyz[:, :250]
    budget = 2 * 1000 * 30 + 999  # 30 rows per block
    ball_query(xyz, centres, 0.1, 16, budget=budget, search="brute")
    knn(centres, xyz, 16, budget=budget, search="brute")
    three_nn(xyz, centres, budget=2 * 250 * 64, search="brute")
    assert seen and all(b * rows * n <= max(budget, 2 * n) for b, rows, n in seen)
    assert {rows for _, rows, _ in seen} == {30, 10, 64, 40}  # 250 = 8 x 30 + 10; 1000 = 15 x 64 + 40
    seen.clear()
    knn(centres, xyz, 16, search="brute")  # 500k distances: one block, as before
    assert seen == [(2, 250, 1000)]


def test_three_nn_matches_loop_and_exact_matches(search):
    g = torch.Generator().manual_seed(18)
    known = torch.rand(2, 40, 3, generator=g) * 10 + 30  # metre-scale
    query = torch.cat([known[:, 5:15], torch.rand(2, 17, 3, generator=g) * 10 + 30], 1)
    dense_d2, dense_idx = three_nn(query, known, budget=None, search="brute")
    assert dense_d2.shape == dense_idx.shape == (2, 27, 3) and dense_idx.dtype == torch.long
    assert torch.equal(dense_d2[:, :10, 0], torch.zeros(2, 10))  # d = 0 exactly on coincident points
    assert torch.equal(dense_idx[:, :10, 0], torch.arange(5, 15).expand(2, 10))
    for b in range(2):
        for i in range(27):
            d2 = ((known[b].double() - query[b, i].double()) ** 2).sum(-1)
            np.testing.assert_allclose(dense_d2[b, i].double().numpy(), np.sort(d2.numpy())[:3], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(dense_d2[b, i], ((known[b, dense_idx[b, i]] - query[b, i]) ** 2).sum(-1))
    for budget in dense_budgets(2, 27, 40):
        d2, idx = three_nn(query, known, budget=budget, search=search)
        assert d2.dtype == dense_d2.dtype and torch.equal(d2, dense_d2) and torch.equal(idx, dense_idx)


def test_three_nn_fewer_than_three_refs(search):
    g = torch.Generator().manual_seed(19)
    query = torch.rand(1, 5, 3, generator=g)
    d2, idx = three_nn(query, query[:, :2], search=search)
    assert d2.shape == idx.shape == (1, 5, 2)
    assert idx[0, 0].tolist() == [0, 1] and d2[0, 0, 0] == 0
    with pytest.raises(ValueError, match="no points"):
        three_nn(query, query[:, :0], search=search)


def brute_interpolate(features, idx, dist2, eps):
    b_, m_, k_ = idx.shape
    out = torch.zeros(b_, m_, features.shape[-1], dtype=features.dtype)
    for b in range(b_):
        for i in range(m_):
            w = [1.0 / (float(dist2[b, i, j]) ** 0.5 + eps) for j in range(k_)]
            for j in range(k_):
                out[b, i] += w[j] / sum(w) * features[b, idx[b, i, j]]
    return out


def test_three_interpolate_matches_loop():
    g = torch.Generator().manual_seed(20)
    known = torch.rand(2, 12, 3, generator=g, dtype=torch.float64)
    feats = torch.randn(2, 12, 5, generator=g, dtype=torch.float64)
    query = torch.cat([known[:, :3], torch.rand(2, 6, 3, generator=g, dtype=torch.float64)], 1)
    d2, idx = three_nn(query, known)
    out = three_interpolate(feats, idx, d2)
    assert out.shape == (2, 9, 5) and out.dtype == torch.float64
    torch.testing.assert_close(out, brute_interpolate(feats, idx, d2, 1e-8))
    # on a known point: its own feature, up to eps / (distance to the others)
    torch.testing.assert_close(out[:, :3], feats[:, :3], rtol=0, atol=1e-5)
    one = three_interpolate(feats, idx[..., :1], d2[..., :1], eps=0.5)  # k = 1: the nearest feature
    torch.testing.assert_close(one, gather_points(feats, idx[..., 0]))
    torch.testing.assert_close(three_interpolate(feats, idx, d2, eps=0.3), brute_interpolate(feats, idx, d2, 0.3))
    constant = three_interpolate(torch.ones(2, 12, 1, dtype=torch.float64), idx, d2)
    torch.testing.assert_close(constant, torch.ones(2, 9, 1, dtype=torch.float64))  # weights sum to 1
    half = three_interpolate(feats.float(), idx, d2)
    assert half.dtype == torch.float32


def test_three_interpolate_gradient():
    g = torch.Generator().manual_seed(21)
    known = torch.rand(1, 6, 3, generator=g, dtype=torch.float64)
    query = torch.rand(1, 4, 3, generator=g, dtype=torch.float64)
    d2, idx = three_nn(query, known)
    feats = torch.randn(1, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: three_interpolate(f, idx, d2, eps=1e-3), (feats,))
    d2g = d2.clone().requires_grad_(True)
    three_interpolate(feats, idx, d2g).sum().backward()
    assert d2g.grad is None and feats.grad is not None  # constant weights, as in PointNet++


def test_scaling_errors(clouds, search):
    with pytest.raises(ValueError, match="budget"):
        knn(clouds, clouds, 3, budget=0, search=search)
    with pytest.raises(TypeError, match="budget"):
        ball_query(clouds, clouds, 0.1, 3, budget=2.5, search=search)
    with pytest.raises(TypeError, match="budget"):
        three_nn(clouds, clouds, budget=True, search=search)
    with pytest.raises(ValueError, match="batch"):
        ball_query(clouds[:1], clouds, 0.1, 3, search=search)
    with pytest.raises(ValueError, match="channel"):
        three_nn(clouds[..., :2], clouds, search=search)
    d2, idx = three_nn(clouds[:, :4], clouds)
    feats = torch.randn(B, N, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="idx"):
        three_interpolate(feats, idx.double(), d2)
    with pytest.raises(TypeError, match="dist2"):
        three_interpolate(feats, idx, idx)
    with pytest.raises(ValueError, match="does not match"):
        three_interpolate(feats, idx, d2[..., :2])
    with pytest.raises(ValueError, match="batch"):
        three_interpolate(feats[:1], idx, d2)
    with pytest.raises(ValueError, match="eps"):
        three_interpolate(feats, idx, d2, eps=0.0)
    with pytest.raises(ValueError, match="k >= 1"):
        three_interpolate(feats, idx[..., :0], d2[..., :0])


def test_matmul_switch(monkeypatch, clouds):
    """EXACT_MAX_CHANNELS = 0 sends coordinates through the matmul expansion too (same neighbours here)."""
    exact = knn(clouds, clouds, 6)
    monkeypatch.setattr(ops, "EXACT_MAX_CHANNELS", 0)
    assert not ops._Distances(clouds, clouds).exact
    assert torch.equal(knn(clouds, clouds, 6), exact)
    assert torch.equal(ball_query(clouds, clouds[:, :5], 0.5, 8), ball_query(clouds, clouds[:, :5], 0.5, 8, budget=1))


# ---------------------------------------------------------------------------------------------------------
# the k-d tree search: identical to the brute force, and chosen for CPU coordinates only


def tree_clouds(dtype):
    """``(cloud, extent)``: (3, 1200, 3) clouds full of exact and float32-rounding ties: duplicates, a 5 cm
    lattice, and points 1 km from the origin 1 mm apart (float32 spacing there is 61 um, so many distances
    round equal)."""
    g = torch.Generator().manual_seed(30)
    rand = torch.rand(3, 1200, 3, generator=g, dtype=torch.float64) * 2 - 1
    rand[:, 900:] = rand[:, :300]  # every point of the first quarter twice
    rand[:, 600:610] = rand[:, 7:8]  # one point 12 times: ties straddle the k-th neighbour
    lattice = (torch.rand(3, 1200, 3, generator=g, dtype=torch.float64) * 20).round() * 0.05
    far = 1000.0 + (torch.rand(3, 1200, 3, generator=g, dtype=torch.float64) * 100).round() * 1e-3
    return [(rand.to(dtype), 2.0), (lattice.to(dtype), 1.0), (far.to(dtype), 0.1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kdtree_identical_to_brute_force_on_ties(dtype):
    g = torch.Generator().manual_seed(31)
    for ref, extent in tree_clouds(dtype):
        near = ref[:, :200] + torch.rand(3, 200, 3, generator=g, dtype=dtype) * 0.05 * extent
        query = torch.cat([ref[:, ::6], near], 1)  # M = 400: points of the cloud and points near them
        for k, budget in [(1, None), (3, None), (16, None), (40, None), (16, 1)]:  # budget=1: widened rows -> brute
            tree = ops._knn(query, ref, k, budget, "knn", "kdtree")
            brute = ops._knn(query, ref, k, None, "knn", "brute")
            assert tree[0].dtype == brute[0].dtype == dtype
            assert torch.equal(tree[0], brute[0]) and torch.equal(tree[1], brute[1]), (k, budget)
        for radius in (0.025 * extent, 0.05 * extent, 0.15 * extent):
            brute = ball_query(ref, query, radius, 24, search="brute")
            assert torch.equal(ball_query(ref, query, radius, 24, search="kdtree"), brute), radius
        small_blocks = ball_query(ref, query, 0.05 * extent, 24, budget=4 * 500, search="kdtree")  # ~50 centres
        assert torch.equal(small_blocks, ball_query(ref, query, 0.05 * extent, 24, search="brute"))


@pytest.mark.parametrize("radius", [0.05, 0.3])  # most balls within k slots / most crowded (the probe's choice)
def test_ball_candidates_give_every_ball_once_within_the_block_bound(radius):
    """Every query once, each ball the exact in-reach set in index order, no block over ``max_entries``
    candidates (one ball excepted), in both orders that the probe of ball sizes chooses."""
    from pointtune import kdtree

    rng = np.random.default_rng(34)
    points, query = rng.random((2000, 3)), rng.random((700, 3))
    tree = kdtree.build(points)
    seen, k, entries = {}, 12, 300
    for rows, counts, flat in kdtree.ball_candidates(tree, query, radius**2, k, 0.0, 0.0, 1, entries):
        assert len(rows) == len(counts) and counts.sum() == len(flat)
        assert len(rows) == 1 or counts.sum() <= entries
        for row, ball in zip(rows.tolist(), np.split(flat, np.cumsum(counts)[:-1])):
            assert row not in seen
            seen[row] = ball.tolist()
    assert sorted(seen) == list(range(len(query)))
    d2 = ((query[:, None] - points[None]) ** 2).sum(-1)
    for row, ball in seen.items():
        assert ball == np.flatnonzero(d2[row] <= radius**2).tolist()


def test_knn_ties_go_to_the_lower_index(search):
    cloud = torch.rand(1, 50, 3, generator=torch.Generator().manual_seed(32), dtype=torch.float64)
    cloud[:, [40, 3, 10]] = cloud[:, 25:26].clone()  # four copies of point 25
    d2, idx = ops._knn(cloud[:, 25:26], cloud, 3, None, "knn", search)
    assert idx[0, 0].tolist() == [3, 10, 25] and d2[0, 0].tolist() == [0.0, 0.0, 0.0]
    grid = grid_cloud(3)  # centre 13: six face neighbours at exactly 1, in index order
    assert knn(grid[:, 13:14], grid, 5, search=search)[0, 0].tolist() == [13, 4, 10, 12, 14]


def test_kdtree_batches_strides_grad_and_degenerate_clouds():
    g = torch.Generator().manual_seed(33)
    planar = torch.rand(4, 3, 500, generator=g, requires_grad=True)
    xyz = planar.transpose(1, 2)  # non-contiguous, requires grad
    centres = xyz[:, ::5]
    for op in (lambda s: knn(centres, xyz, 8, search=s), lambda s: three_nn(xyz, centres, search=s),
               lambda s: ball_query(xyz, centres, 0.15, 16, search=s)):
        tree, brute = op("kdtree"), op("brute")
        for t, b in zip(tree if isinstance(tree, tuple) else [tree], brute if isinstance(brute, tuple) else [brute]):
            assert torch.equal(t, b) and not t.requires_grad
    same = torch.zeros(2, 300, 3)  # one point 300 times: every distance ties
    for budget in (None, 1):
        assert knn(same, same, 5, budget=budget, search="kdtree").tolist() == [[[0, 1, 2, 3, 4]] * 300] * 2
    assert knn(xyz[:, :0], xyz, 3, search="kdtree").shape == (4, 0, 3)
    assert ball_query(xyz, xyz[:, :0], 0.1, 3, search="kdtree").shape == (4, 0, 3)
    bad = xyz.detach().clone()
    bad[1, 17, 2] = float("nan")
    with pytest.raises(ValueError, match="points must be finite, got nan at point 17"):
        knn(xyz, bad, 3, search="kdtree")
    with pytest.raises(ValueError, match="queries must be finite"):
        knn(bad, xyz, 3, search="kdtree")
    with pytest.raises(ValueError, match="queries must be finite"):
        ball_query(xyz, bad, 0.1, 3, search="kdtree")


def test_search_dispatch(monkeypatch):
    calls = []
    monkeypatch.setattr(ops, "_tree_knn", lambda *a: calls.append("tree") or ops._brute_knn(*a))
    monkeypatch.setattr(ops, "_tree_ball_query", lambda *a: calls.append("tree ball") or torch.zeros(1, 2, 4))
    xyz = torch.rand(1, 30, 3)
    knn(xyz, xyz, 4)  # 900 pairs per cloud: below TREE_MIN_PAIRS, one brute-force block
    assert calls == []
    monkeypatch.setattr(ops, "TREE_MIN_PAIRS", 20 * 30)
    knn(xyz, xyz, 4)
    three_nn(xyz, xyz[:, :20])
    ball_query(xyz, xyz[:, :19], 0.2, 4)  # 570 pairs
    assert calls == ["tree", "tree"]  # auto: CPU float32 coordinates take the tree from TREE_MIN_PAIRS on
    ball_query(xyz, xyz[:, :20], 0.2, 4)
    assert calls == ["tree", "tree", "tree ball"]
    calls.clear()
    feats = torch.rand(1, 30, 7)
    knn(feats, feats, 4)  # DGCNN's feature space
    knn(xyz.half(), xyz.half(), 4)
    knn(xyz, xyz, 4, search="brute")
    assert calls == []
    meta = torch.empty(1, 30, 3, device="meta")  # any non-CPU device (CUDA) goes to the brute force
    assert not ops._use_tree("auto", "knn", meta, meta) and ops._use_tree("auto", "knn", xyz, xyz.double())
    with pytest.raises(ValueError, match="search='kdtree' needs CPU float32/float64 coordinates"):
        knn(feats, feats, 4, search="kdtree")
    with pytest.raises(ValueError, match="search='kdtree'"):
        ops._use_tree("kdtree", "ball_query", meta, meta)
    with pytest.raises(ValueError, match="search must be one of auto, kdtree, brute, got 'tree'"):
        three_nn(xyz, xyz, search="tree")
