"""Point-cloud primitives in pure PyTorch (and NumPy): sampling, neighbour search, interpolation, gathering.

Every function is batched over a leading batch dimension ``B`` and works on any device and dtype the input
lives on; only the k-d tree searches (CPU, below) loop over the batch, one tree per cloud. Clouds are
channels-last: ``(B, N, 3)`` coordinates, ``(B, N, C)`` features. Coordinates and radii are in the units of
the input (pointtune normalises object clouds into the unit sphere, so a radius of ``0.2`` is a fifth of the
cloud's radius; scenes stay in metres).

Index computations (:func:`fps`, :func:`knn`, :func:`ball_query`, :func:`three_nn`) run under
``torch.no_grad``: their outputs are integer indices (and distances), which carry no gradient; gradients flow
through :func:`gather_points`, :func:`group` and :func:`three_interpolate` instead.

Scaling to scenes (24k-64k points per sample)
---------------------------------------------
The brute-force :func:`knn`, :func:`ball_query` and :func:`three_nn` (``search='brute'``; on the CPU,
coordinates go to the k-d tree below instead) never hold more than ``budget`` query-to-reference
distances at once (keyword ``budget``, default :data:`DISTANCE_BUDGET` = 64 Mi entries, 256 MiB in float32):
the queries are cut into blocks of ``max(1, budget // (B * N))`` rows, so the peak memory is
``O(B * rows * N)`` instead of ``O(B * M * N)``. Inputs with ``B * M * N <= budget`` (every classification
backbone: e.g. PointNet++ SA1 is 32 x 512 x 1024 = 16 Mi) are one block, as before. ``budget=None`` is the
dense version (one block whatever the size), kept for tests and ``bench/ops.py``.

Distances. For coordinates (``C <= 3``, :data:`EXACT_MAX_CHANNELS`) a block is computed *exactly* from the
coordinate differences, ``((dx*dx + dy*dy) + dz*dz)``, with elementwise IEEE operations only (no fused
multiply-add, no matrix product). Two reasons: (1) the result of every query-reference pair is then the same
bits whichever block it falls in, so the chunked and dense versions return identical indices and distances (a
BLAS matmul rounds differently per block shape: chunks of 64 rows already differ from the full product in the
last bit); (2) the expansion ``|q|^2 - 2 q.r + |r|^2`` cancels catastrophically on metre-scale scenes far from
the origin (error ~ ``eps * |x|^2``: a few 1e-4 m^2 at 50 m in float32, a tenth or more of ScanNet's 5 cm ball
``r^2`` = 2.5e-3 m^2), while the differences are exact to ``eps * d^2`` and give exactly 0 for coincident
points (as PointNet++'s CUDA kernels, which also subtract coordinates). Cost on this 2-core CPU (1 thread, best
of 9): the exact block takes 1.6x the matmul one for in-cache blocks (4 Mi distances: 4.4 vs 2.8 ns each),
1.13x at 16 Mi (PointNet++ SA1, B = 32) and the same at scene sizes (67 Mi: 9.3 ns each), where both are memory
bound; end to end the classification backbones did not get slower (B = 32 x 1024 points, forward, 1 thread,
previous ops -> these: PointNet++ SSG 5.6 -> 5.0 s, DGCNN 21.4 -> 21.0 s, 3D-ViT 0.95 -> 0.89 s; FPS and the
int32 ball-query candidates pay for it). Features (``C > 3``, DGCNN's dynamic graph) keep the one-matmul
expansion (:func:`square_distance`) per block; there the chunked and dense versions can differ in the last bit,
i.e. only between neighbours whose distances tie to within float rounding. Setting :data:`EXACT_MAX_CHANNELS`
to 0 gives the matmul for every input.

Neighbour search on the CPU: k-d tree
-------------------------------------
The brute force costs ``O(M N)`` per cloud: on this 2-core CPU the blocked kNN took 3.8 s for the 16
nearest of 6,144 centres among 24,576 points and 15.4 s at 16,384 among 65,536, where SciPy's ``cKDTree``
takes 0.03-0.09 s. So :func:`knn`, :func:`three_nn` and :func:`ball_query` answer CPU float32/float64
coordinates (``1 <= C <=`` :data:`EXACT_MAX_CHANNELS`) with a k-d tree (``scipy.spatial.cKDTree``, Bentley
1975: ``O(N log N)`` to build, about ``O(log N + k)`` per query; :mod:`pointtune.kdtree`) when a cloud has at
least :data:`TREE_MIN_PAIRS` (1 Mi) query-reference pairs. CUDA tensors, half precision, features (DGCNN's
dynamic graph, ``C > 3``) and small clouds keep the blocked brute force. The keyword ``search`` (``auto``,
the default; ``kdtree``; ``brute``) forces either; the tests run every coordinate case on both.

Both searches return the same indices and bit-identical distances, because the tree only *proposes*
candidates and the brute force's kernel and rules rank them:

* kNN (and ``three_nn``): the tree's ``k + 1`` nearest in float64. A query is settled when its last
  candidate is farther than ``(1 + 2**-16)`` times its ``k``-th squared distance (plus 1e-30 for underflow):
  the margin is above twice the worst relative rounding of the float32 kernel (5 roundings of ``2**-24``),
  so every point the float32 ranking could put among its ``k`` is a candidate. Unsettled queries (exact ties,
  duplicates) are asked again with twice the width; past ``budget // 4`` candidates they go to the brute force.
* Ball query: every point within ``sqrt((1 + 2**-16) r**2)``, in index order, then the brute force's own
  test ``d2 < radius**2`` in the input's dtype and its slot and padding rule (the shared ``_ball_slots``);
  an empty ball takes the nearest point by the kNN above (``argmin``'s lowest index among ties).
* One tie rule: squared distance, then index, also for the points tied at the ``k``-th distance. ``topk``
  leaves those unspecified (and CPU and CUDA differ), so the brute force redoes, with one more int32 pass, the
  rows where such a tie straddles the cut.

The candidates' distances come from the same kernel function (``_exact_sq_dist``) in NumPy: the same
correctly rounded operations in the same order give the same bits, single-threaded. Interleaving many small
torch calls with SciPy's threads made torch wait on its own thread pool (40x slower per call on this shared
2-core machine). Threads: every tree query uses SciPy's ``workers = torch.get_num_threads()``, so
``torch.set_num_threads`` bounds both libraries; trees are built one after the other.

Cost (``bench/ops.py --sizes 24576 65536``: synthetic room, M = N/4 FPS centres, B = 1, 2 torch threads,
this 2-core CPU shared with other jobs at load average 3.9-5.3; ``scipy`` is raw ``cKDTree``, tree built in
the call, ``workers=2``; seconds, median of up to 3 calls in a fresh process):

========== ====== ======== ========================= ===== ==========
op         N      k-d tree blocked brute force (MiB) scipy tree/scipy
========== ====== ======== ========================= ===== ==========
knn k=16   24,576 0.044    2.30 (515)                0.038 1.2
knn k=16   65,536 0.145    15.4 (516)                0.092 1.6
ball 0.2 m 24,576 0.102    2.63 (578)                0.035 2.9
ball 0.2 m 65,536 0.567    20.3 (581)                0.222 2.6
three_nn   24,576 0.043    2.30 (514)                0.019 2.3
three_nn   65,536 0.187    13.7 (514)                0.094 2.0
========== ====== ======== ========================= ===== ==========

An earlier run at load 2.2-2.9 gave tree/scipy 2.2, 1.6, 2.3, 1.3, 1.5, 1.7 for the same rows: the ratios
move with the load; the tree's memory stays at 5-20 MiB.

The tree's extra time over raw SciPy is its own work: ``k + 1`` neighbours instead of ``k``, the finiteness
check, ranking the candidates with the exact kernel, and for the ball query index-sorted balls in blocks of
``budget // 4 // N`` centres (9 SciPy calls at 24k points, 64 at 64k, where raw SciPy makes one).

Farthest point sampling: what was chosen and why
------------------------------------------------
FPS is sequential by definition (each pick depends on all previous ones), so every exact implementation does
``m`` dependent steps. Options examined (torch 2.13, Python 3.11, 2-core CPU, no GPU here):

* A maintained FPS library from a wheel. ``torch-cluster`` and ``pytorch3d`` publish no wheels on PyPI (only
  a ``torch-cluster`` source tarball that needs torch and, for GPU, nvcc to build). ``fpsample`` (Rust, CPU)
  has a cp311 wheel only for its old 0.3.x line; its exact ``fps_sampling`` was slower than a NumPy loop and
  its fast ``bucket_fps_kdline_sampling`` ignored ``start_idx`` and returned a different sample set.
* A C++/CUDA extension of our own: a compiler and nvcc at install or first use on every CI run, Ray worker
  image and user machine. ``torch.compile`` of the loop body: 26 s of cold compilation here and no faster
  per step than eager.
* Previously: one Python iteration per sampled point, vectorised over the batch and all ``N`` points in
  NumPy (:func:`fps_reference` is the same loop in torch). 64k -> 16k points took 1.8 s, 24k -> 6k 0.34 s.
* Chosen: an exact *bucketed* FPS (QuickFPS-style box pruning over k-d tree leaves) compiled with Numba, a
  maintained JIT compiler that installs from a wheel (:mod:`pointtune.sampling`): no Python loop over points
  or samples, the *identical* picks of the dense loop (the tests compare it with :func:`fps_reference`),
  and most steps touch only the buckets near the new centre. On ScanNet scene0000_00 (this CPU, B = 1):
  24k -> 6k in 0.023 s, 64k -> 16k in 0.08 s (``bench/ops.py`` for the current table). It runs on the host:
  coordinates on another device are copied to the CPU for it (``B * N * 12`` bytes, 0.3 MiB for a 24k
  scene) and the indices copied back; half-precision coordinates are sampled in float32. Unmeasured on a
  GPU (none was available); on a GPU the alternative is the torch loop of :func:`fps_reference`, one
  kernel launch sequence per sample.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from scipy.spatial import cKDTree

Array = Tensor | np.ndarray

__all__ = [
    "DISTANCE_BUDGET",
    "EXACT_MAX_CHANNELS",
    "INTERP_EPS",
    "SEARCHES",
    "TREE_MIN_PAIRS",
    "fps",
    "fps_reference",
    "knn",
    "ball_query",
    "three_nn",
    "three_interpolate",
    "gather_points",
    "group",
    "square_distance",
]

#: Default ``budget`` of the neighbour searches: the most query-to-reference distances held at once
#: (64 Mi entries = 256 MiB of float32; a block's peak is ~8-9 bytes per entry, ~0.5-0.6 GiB, see each function).
DISTANCE_BUDGET: int = 64 * 2**20

#: Inputs with at most this many channels (coordinates) get exact difference-based distances; wider
#: inputs (features) use the one-matmul expansion of :func:`square_distance`.
EXACT_MAX_CHANNELS: int = 3

#: Default ``eps`` of :func:`three_interpolate`, added to the Euclidean distance (input units).
INTERP_EPS: float = 1e-8

#: Values of the neighbour searches' ``search`` keyword: ``auto`` (the k-d tree where it applies, else
#: brute force), ``kdtree`` (force the tree; an error where it does not apply), ``brute`` (blocked brute force).
SEARCHES: tuple[str, ...] = ("auto", "kdtree", "brute")

#: ``search='auto'`` takes the k-d tree for clouds with at least this many query-reference pairs ``M * N``
#: (1 Mi: e.g. DGCNN's first graph, 1024 x 1024); below, one batched brute-force block is as fast or faster
#: (PointNet++ SA1's ball query, 512 x 1024 per cloud at B = 32: 0.19 s brute force, 0.25 s tree).
TREE_MIN_PAIRS: int = 2**20

# Margins of the k-d tree's candidate sets on squared distances (pointtune.kdtree): relative, above twice the
# worst relative rounding of the float32 difference kernel (5 roundings of 2**-24: sub, mul, add) and of
# radius**2 rounded to float32 (2**-24), with ~40x to spare; absolute, above float32 underflow of
# dx*dx (results below 2**-126 ~ 1.2e-38 lose relative precision).
_TREE_SLACK: float = 2.0**-16
_TREE_FLOOR: float = 1e-30


def _check_cloud(name: str, x: Tensor, channels: int | None = None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, N, C), got {tuple(x.shape)}")
    if channels is not None and x.shape[-1] != channels:
        raise ValueError(f"{name} must have {channels} channels in its last dimension, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


def _check_pair(qname: str, query: Tensor, rname: str, ref: Tensor) -> None:
    if query.shape[0] != ref.shape[0]:
        raise ValueError(f"{qname} and {rname} have different batch sizes: {tuple(query.shape)} vs {tuple(ref.shape)}")
    if query.shape[-1] != ref.shape[-1]:
        raise ValueError(
            f"{qname} and {rname} have different channel counts: {tuple(query.shape)} vs {tuple(ref.shape)}"
        )


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_budget(budget: int | None) -> None:
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int or None, got {type(budget).__name__}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1 distance entries (or None for no limit), got {budget}")


def _query_blocks(b: int, m: int, n: int, budget: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` row ranges over the ``m`` queries, each holding at most ``budget`` distances
    (at least one row per block); a single block when everything fits or ``budget`` is None."""
    if budget is None or b * m * n <= budget:
        return [(0, m)]
    rows = max(1, budget // max(1, b * n))
    return [(s, min(s + rows, m)) for s in range(0, m, rows)]


def _check_search(search: str, who: str) -> None:
    if search not in SEARCHES:
        raise ValueError(f"{who}: search must be one of {', '.join(SEARCHES)}, got {search!r}")


def _use_tree(search: str, who: str, query: Tensor, ref: Tensor) -> bool:
    """Whether a neighbour search runs on the k-d tree: CPU float32/float64 coordinates (``1 <= C <=``
    :data:`EXACT_MAX_CHANNELS`, the exact difference kernel) under ``kdtree``, or under ``auto`` when a
    cloud also has at least :data:`TREE_MIN_PAIRS` query-reference pairs.

    Raises:
        ValueError: an unknown ``search``, or ``search='kdtree'`` for input the tree does not take.
    """
    _check_search(search, who)
    if search == "brute":
        return False
    channels = query.shape[-1]
    fits = (
        query.device.type == ref.device.type == "cpu"
        and query.dtype in (torch.float32, torch.float64)
        and ref.dtype in (torch.float32, torch.float64)
        and 1 <= channels <= EXACT_MAX_CHANNELS
    )
    if search == "kdtree" and not fits:
        raise ValueError(
            f"{who}: search='kdtree' needs CPU float32/float64 coordinates with 1 to {EXACT_MAX_CHANNELS} channels, "
            f"got {query.device.type} {query.dtype} / {ref.device.type} {ref.dtype} with {channels} channels"
        )
    return fits and (search == "kdtree" or query.shape[1] * ref.shape[1] >= TREE_MIN_PAIRS)


def _tree_entries(budget: int | None) -> int:
    """Most k-d tree candidates held at once for a ``budget`` of brute-force distances: a kNN candidate costs
    about 4 distances (SciPy's float64 distance and int64 index, the gathered coordinates, its squared
    distance); a ball candidate more (~80 bytes, SciPy returns Python lists; see :func:`ball_query`)."""
    return sys.maxsize if budget is None else max(1, budget // 4)


def _exact_sq_dist(q: Sequence[Array], r: Sequence[Array]) -> Array:
    """Squared distances ``((dx*dx + dy*dy) + dz*dz)`` from per-channel query and reference arrays that
    broadcast against each other, with elementwise IEEE operations only (module docstring): the one kernel of
    every exact distance, so a pair gets the same bits in the brute-force blocks (torch, any device) and
    among the k-d tree's candidates (NumPy: single-threaded, so its many small calls do not wait on torch's
    thread pool; the same correctly rounded operations in the same order give the same bits)."""
    sub, empty_like = (torch.sub, torch.empty_like) if isinstance(q[0], Tensor) else (np.subtract, np.empty_like)
    d2 = sub(q[0], r[0])
    d2 *= d2
    if len(q) > 1:
        t = empty_like(d2)
        for qc, rc in zip(q[1:], r[1:]):
            sub(qc, rc, out=t)
            t *= t
            d2 += t
    return d2


def _pair_sq_dist(query: np.ndarray, ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """``(R, w)`` exact squared distances from ``query`` ``(R, C)`` to its candidates ``ref[cand]`` (``ref``
    ``(N, C)``, ``cand`` ``(R, w)`` indices into ``N``)."""
    near = ref[cand]  # (R, w, C)
    channels = range(query.shape[-1])
    return _exact_sq_dist([query[:, None, c] for c in channels], [near[..., c] for c in channels])


def _rank(d2: Array, idx: Array, k: int) -> tuple[Array, Array]:
    """The ``k`` smallest of ``(..., w)`` candidates ordered by ``(squared distance, index)``: nearest first,
    exact ties to the lower index (the one tie rule of both searches). ``idx`` holds distinct indices per row;
    torch tensors, or ``(R, w)`` NumPy arrays (the k-d tree's candidates, which come nearest first: rows whose
    distances strictly increase are already in order, only the others are sorted)."""
    if isinstance(d2, np.ndarray):
        values, indices = d2[:, :k].copy(), idx[:, :k].copy()
        unsorted = ~(np.diff(d2, axis=-1) > 0).all(-1)
        if unsorted.any():
            order = np.lexsort((idx[unsorted], d2[unsorted]), axis=-1)[:, :k]
            values[unsorted] = np.take_along_axis(d2[unsorted], order, -1)
            indices[unsorted] = np.take_along_axis(idx[unsorted], order, -1)
        return values, indices
    by_index = idx.argsort(dim=-1)
    d2, idx = d2.gather(-1, by_index), idx.gather(-1, by_index)
    order = d2.sort(dim=-1, stable=True).indices[..., :k]
    return d2.gather(-1, order), idx.gather(-1, order)


def _select_k(d2: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest of every row of a ``(B, rows, N)`` brute-force block, by :func:`_rank`'s rule.

    ``topk`` leaves the choice among points tied at the ``k``-th distance unspecified; rows where such a tie
    straddles the cut (the ``k + 1``-th distance equals the ``k``-th) are redone by an int32 key that puts
    the closer points first, then the tied ones in index order.
    """
    n = d2.shape[-1]
    values, indices = d2.topk(min(k + 1, n), dim=-1, largest=False, sorted=True)
    straddled = values[..., k] == values[..., k - 1] if k < n else None
    values, indices = values[..., :k].contiguous(), indices[..., :k].contiguous()
    if straddled is not None and bool(straddled.any()):
        rows, cut = d2[straddled], values[straddled][:, k - 1 : k]
        order = torch.arange(n, dtype=torch.int32, device=d2.device)
        key = torch.where(rows < cut, order - n, order)  # closer: negative; tied: the index; farther: n
        key.masked_fill_(rows > cut, n)
        first = key.topk(k, dim=-1, largest=False).values
        picked = torch.where(first < 0, first + n, first).long()
        indices[straddled] = picked
        values[straddled] = rows.gather(-1, picked)
    return _rank(values, indices, k)


def _matmul_sq_dist(query: Tensor, ref: Tensor) -> Tensor:
    qq = query.pow(2).sum(-1, keepdim=True)  # (B, M, 1)
    rr = ref.pow(2).sum(-1).unsqueeze(1)  # (B, 1, N)
    d2 = torch.baddbmm(qq + rr, query, ref.transpose(1, 2), beta=1.0, alpha=-2.0)
    return d2.clamp_min_(0.0)


class _Distances:
    """Squared distances from blocks of ``query`` rows to all of ``ref``, computed the same way for every
    block (so that a pair's value does not depend on the blocking); see the module docstring."""

    def __init__(self, query: Tensor, ref: Tensor) -> None:
        self.exact = query.shape[-1] <= EXACT_MAX_CHANNELS
        if self.exact:
            # Planar copies (B, C, M) / (B, C, N): each channel is a contiguous row to broadcast against.
            self.qp = query.transpose(1, 2).contiguous()
            self.rp = ref.transpose(1, 2).contiguous()
        self.query, self.ref = query, ref

    def block(self, start: int, stop: int) -> Tensor:
        """``(B, stop - start, N)`` squared distances of queries ``start:stop``."""
        if not self.exact:
            return _matmul_sq_dist(self.query[:, start:stop], self.ref)
        qp, rp = self.qp[:, :, start:stop], self.rp
        channels = range(qp.shape[1])
        return _exact_sq_dist([qp[:, c, :, None] for c in channels], [rp[:, c, None, :] for c in channels])


def square_distance(query: Tensor, ref: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances, dense (one batched matmul).

    Computed as ``|q|^2 - 2 q.r + |r|^2`` and clamped at 0, so it is memory-light but carries float
    rounding of order ``eps * |x|^2``; fine for ranking neighbours of unit-sphere clouds. It materialises the
    whole ``(B, M, N)`` matrix: the neighbour searches below do not call it on coordinates (they compute
    exact distances block by block, see the module docstring).

    Args:
        query: ``(B, M, C)`` floating point.
        ref: ``(B, N, C)`` floating point, same ``B`` and ``C``.

    Returns:
        ``(B, M, N)`` squared distances, in squared input units, same dtype as the inputs.

    Raises:
        TypeError: a non-tensor or non-floating-point input.
        ValueError: inputs that are not 3-D or whose batch size / channel count differ.
    """
    _check_cloud("query", query)
    _check_cloud("ref", ref)
    _check_pair("query", query, "ref", ref)
    return _matmul_sq_dist(query, ref)


# ----------------------------------------------------------------------------------------------------------
# farthest point sampling


def _check_fps(xyz: Tensor, m: int) -> None:
    _check_cloud("xyz", xyz, 3)
    _check_count("m", m)
    if m > xyz.shape[1]:
        raise ValueError(f"fps: cannot sample m={m} points from a cloud of N={xyz.shape[1]}")


@torch.no_grad()
def fps(xyz: Tensor, m: int) -> Tensor:
    """Farthest point sampling (Eldar et al. 1997; the sampler of PointNet++).

    Greedy: the first sample is point index ``0`` of every cloud (deterministic, as in the PointNet++ CUDA
    kernel, instead of a random start); each further sample is the point whose squared distance to the
    samples chosen so far is largest. Ties go to the lowest index (``argmax`` convention). Computed by the
    exact bucketed kernel of :mod:`pointtune.sampling` on the host (module docstring): identical output to
    :func:`fps_reference` for float32 and float64 input; float16/bfloat16 coordinates are sampled in float32.

    Args:
        xyz: ``(B, N, 3)`` coordinates (floating point, any units, finite).
        m: number of samples, ``1 <= m <= N``.

    Returns:
        ``(B, m)`` int64 indices into ``N``, in the order they were picked, on ``xyz``'s device. Distinct
        whenever the cloud has at least ``m`` distinct points (duplicate points may be re-picked once every
        distance is zero).

    Raises:
        TypeError: ``xyz`` not a floating tensor, or ``m`` not an int.
        ValueError: ``xyz`` not ``(B, N, 3)``, ``m < 1`` or ``m > N``.
    """
    from .sampling import fps_indices  # Numba compiles (or loads from its cache) on first use

    _check_fps(xyz, m)
    host = xyz.detach().to("cpu", torch.float64 if xyz.dtype == torch.float64 else torch.float32)
    return torch.from_numpy(fps_indices(host.numpy(), m)).to(xyz.device)


@torch.no_grad()
def fps_reference(xyz: Tensor, m: int) -> Tensor:
    """The dense greedy loop of :func:`fps` in torch, the reference for tests and ``bench/ops.py``.

    Same contract, arguments, result and errors as :func:`fps`; one Python iteration per sample, each over
    all ``N`` points (about 10 torch ops with fresh allocations: ~25 s for 64k -> 16k points on a 2-core
    CPU).

    Args:
        xyz: ``(B, N, 3)`` coordinates.
        m: number of samples, ``1 <= m <= N``.

    Returns:
        ``(B, m)`` int64 indices into ``N``, in pick order.

    Raises:
        TypeError: ``xyz`` not a floating tensor, or ``m`` not an int.
        ValueError: ``xyz`` not ``(B, N, 3)``, ``m < 1`` or ``m > N``.
    """
    _check_fps(xyz, m)
    b, n, _ = xyz.shape
    idx = torch.empty(b, m, dtype=torch.long, device=xyz.device)
    min_d2 = torch.full((b, n), float("inf"), dtype=xyz.dtype, device=xyz.device)
    farthest = torch.zeros(b, dtype=torch.long, device=xyz.device)
    batch = torch.arange(b, device=xyz.device)
    for i in range(m):
        idx[:, i] = farthest
        centre = xyz[batch, farthest].unsqueeze(1)  # (B, 1, 3)
        d2 = (xyz - centre).pow(2).sum(-1)  # (B, N)
        min_d2 = torch.minimum(min_d2, d2)
        farthest = min_d2.argmax(-1)
    return idx


# ----------------------------------------------------------------------------------------------------------
# neighbour search


def _knn(
    query: Tensor, ref: Tensor, k: int, budget: int | None, who: str, search: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Validated kNN: ``(squared distances, indices)``, both ``(B, M, k)``, ordered by (distance, index)."""
    _check_cloud("query", query)
    _check_cloud("ref", ref)
    _check_pair("query", query, "ref", ref)
    _check_count("k", k)
    _check_budget(budget)
    n = ref.shape[1]
    if k > n:
        raise ValueError(f"{who}: k={k} neighbours requested but the reference set has N={n} points")
    if _use_tree(search, who, query, ref):
        return _tree_knn(query, ref, k, budget)
    return _brute_knn(query, ref, k, budget)


def _brute_knn(query: Tensor, ref: Tensor, k: int, budget: int | None) -> tuple[Tensor, Tensor]:
    """Blocked brute-force kNN of validated input (module docstring), :func:`_select_k` per block."""
    b, m, _ = query.shape
    n = ref.shape[1]
    dist = _Distances(query, ref)
    blocks = _query_blocks(b, m, n, budget)
    if len(blocks) == 1:
        return _select_k(dist.block(0, m), k)
    values = torch.empty(b, m, k, dtype=torch.result_type(query, ref), device=query.device)
    indices = torch.empty(b, m, k, dtype=torch.long, device=query.device)
    for start, stop in blocks:
        values[:, start:stop], indices[:, start:stop] = _select_k(dist.block(start, stop), k)
    return values, indices


def _tree_knn(query: Tensor, ref: Tensor, k: int, budget: int | None) -> tuple[Tensor, Tensor]:
    """k-d tree kNN of validated CPU coordinates: one tree per cloud, the same result as :func:`_brute_knn`."""
    from . import kdtree

    b, m, _ = query.shape
    query, ref = query.detach(), ref.detach()
    trees = [kdtree.build(ref[i].numpy()) for i in range(b)]
    values, indices = _tree_knn_rows(trees, query, ref, [np.arange(m)] * b, k, budget)
    return values.view(b, m, k), indices.view(b, m, k)


def _tree_knn_rows(
    trees: list[cKDTree], query: Tensor, ref: Tensor, rows: list[np.ndarray], k: int, budget: int | None
) -> tuple[Tensor, Tensor]:
    """kNN of the queries ``rows[i]`` of every cloud ``i`` (``query`` ``(B, M, C)``, ``ref`` ``(B, N, C)``,
    ``trees[i]`` over ``ref[i]``): ``(R, k)`` squared distances and indices into ``N``, ``R`` the rows of all
    clouds in order. The tree's candidates of all clouds are ranked together by :func:`_rank` with the exact
    kernel, in NumPy (see :func:`_exact_sq_dist`); rows the tree leaves out go to :func:`_brute_knn`."""
    from . import kdtree

    b, m, c = query.shape
    n = ref.shape[1]
    flat_q, flat_r = query.reshape(b * m, c).numpy(), ref.reshape(b * n, c).numpy()
    wanted = np.concatenate([r + i * m for i, r in enumerate(rows)])  # global query rows, output order
    slot = np.empty(b * m, dtype=np.int64)
    slot[wanted] = np.arange(len(wanted))
    values = np.empty((len(wanted), k), dtype=np.result_type(flat_q, flat_r))
    indices = np.empty((len(wanted), k), dtype=np.int64)
    by_width: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    left_out = []
    workers, entries = torch.get_num_threads(), _tree_entries(budget)
    for i, tree in enumerate(trees):
        if rows[i].size == 0:
            continue
        cloud_q = query[i].numpy()[rows[i]]
        for sub, cand in kdtree.knn_candidates(tree, cloud_q, k, _TREE_SLACK, _TREE_FLOOR, workers, entries):
            if cand is None:
                left_out.append((i, rows[i][sub] + i * m))
            else:
                by_width.setdefault(cand.shape[1], []).append((rows[i][sub] + i * m, cand + i * n))
    for parts in by_width.values():
        g = np.concatenate([p[0] for p in parts])
        cand = np.concatenate([p[1] for p in parts])
        out = slot[g]
        values[out], indices[out] = _rank(_pair_sq_dist(flat_q[g], flat_r, cand), cand, k)
        indices[out] -= (g // m * n)[:, None]
    for i, g in left_out:
        v, ix = _brute_knn(torch.from_numpy(flat_q[g])[None], ref[i][None], k, budget)
        values[slot[g]], indices[slot[g]] = v[0].numpy(), ix[0].numpy()
    return torch.from_numpy(values), torch.from_numpy(indices)


@torch.no_grad()
def knn(
    query: Tensor, ref: Tensor, k: int, *, budget: int | None = DISTANCE_BUDGET, search: str = "auto"
) -> Tensor:
    """Indices of the ``k`` nearest reference points of every query point (Euclidean distance).

    Works in any feature space, not only 3-D coordinates: DGCNN builds its dynamic graph with it on
    ``(B, N, C)`` features. Neighbours are ordered by squared distance, exact ties by index (the lower index
    first, also when choosing among points tied at the ``k``-th distance), so the result is the same for
    every ``budget`` and both searches. When ``query`` is ``ref`` every point is its own nearest neighbour
    (distance 0), as in DGCNN, unless it has an exact duplicate of lower index. Distances are exact for
    ``C <= 3`` and the matmul expansion beyond (module docstring).

    Which search runs (``search``; module docstring, "Neighbour search on the CPU"): ``auto`` takes the k-d
    tree for CPU float32/float64 coordinates (``C <= 3``) and the blocked brute force otherwise (CUDA,
    half precision, features); ``kdtree`` and ``brute`` force one.

    Args:
        query: ``(B, M, C)`` floating point.
        ref: ``(B, N, C)`` floating point, same ``B`` and ``C``; both finite for the k-d tree.
        k: neighbours per query, ``1 <= k <= N``.
        budget: brute force: most distances held at once (queries are processed in blocks of
            ``budget // (B * N)`` rows, at least one); ``None``: all ``B * M * N`` at once. Peak memory about
            8 bytes per held distance in float32 (the block and one temporary; measured 513 MiB at the
            default). k-d tree: at most ``budget // 4`` candidates per widened round (rows whose ties need
            more go to the brute force).
        search: ``auto``, ``kdtree`` or ``brute`` (:data:`SEARCHES`).

    Returns:
        ``(B, M, k)`` int64 indices into ``N``, sorted nearest first, on ``query``'s device.

    Raises:
        TypeError: non-floating inputs, a non-int ``k`` or ``budget``.
        ValueError: inputs not 3-D, mismatched batch size or channel count, ``k < 1``, ``k > N``,
            ``budget < 1``, an unknown ``search``, ``search='kdtree'`` for input other than CPU
            float32/float64 coordinates, or non-finite coordinates on the k-d tree.
    """
    return _knn(query, ref, k, budget, "knn", search)[1]


@torch.no_grad()
def three_nn(
    query: Tensor, ref: Tensor, *, budget: int | None = DISTANCE_BUDGET, search: str = "auto"
) -> tuple[Tensor, Tensor]:
    """The 3 nearest reference points of every query and their squared distances (PointNet++ ``three_nn``).

    The neighbour search of feature propagation: ``query`` are the points to interpolate to (the finer
    level), ``ref`` the points that carry features (the coarser level). With fewer than 3 reference points
    all of them are returned (``k = N``). For coordinates (``C <= 3``) the distances are exact: a query that
    coincides with a reference point has distance exactly 0 to it. Searched like :func:`knn` (same
    ``budget`` and ``search``, same order and tie rule; the k-d tree returns the brute force's distances bit
    for bit, computed by the same kernel).

    Args:
        query: ``(B, M, C)`` floating point, usually ``C = 3``.
        ref: ``(B, N, C)`` floating point, same ``B`` and ``C``, ``N >= 1``.
        budget: as in :func:`knn`.
        search: as in :func:`knn`.

    Returns:
        ``(dist2, idx)``: ``(B, M, k)`` squared distances (squared input units, ``query``'s dtype) and
        ``(B, M, k)`` int64 indices into ``N``, nearest first, ``k = min(3, N)``.

    Raises:
        TypeError: non-floating inputs or a non-int ``budget``.
        ValueError: inputs not 3-D, mismatched batch size or channel count, ``N = 0``, ``budget < 1``, or a
            ``search`` as in :func:`knn`.
    """
    _check_cloud("query", query)
    _check_cloud("ref", ref)
    _check_pair("query", query, "ref", ref)
    if ref.shape[1] == 0:
        raise ValueError(f"three_nn: ref has no points: {tuple(ref.shape)}")
    return _knn(query, ref, min(3, ref.shape[1]), budget, "three_nn", search)


def three_interpolate(features: Tensor, idx: Tensor, dist2: Tensor, eps: float = INTERP_EPS) -> Tensor:
    """Inverse-distance-weighted interpolation from neighbours (PointNet++ feature propagation, Eq. 2).

    ``out[b, m] = sum_j w[b, m, j] * features[b, idx[b, m, j]]`` with
    ``w = 1 / (sqrt(dist2) + eps)`` normalised to sum to 1 over ``j`` (the ``p = 1`` weights of the PyTorch
    PointNet++/PointNeXt code). The weights are constants: the result is differentiable in ``features``
    only, as in the PointNet++ kernels (no gradient reaches ``dist2`` or the coordinates). A query at
    distance 0 from a neighbour takes that neighbour's feature up to ``~eps / distance`` of the others.

    Args:
        features: ``(B, N, C)`` features of the reference points (floating point).
        idx: ``(B, M, k)`` integer indices into ``N`` (from :func:`three_nn`, any ``k >= 1``).
        dist2: ``(B, M, k)`` squared distances to those neighbours (from :func:`three_nn`), ``>= 0``
            (negative values are treated as 0), in squared units of the coordinates.
        eps: added to the Euclidean distance, in coordinate units, ``> 0``.

    Returns:
        ``(B, M, C)`` interpolated features, ``features``' dtype.

    Raises:
        TypeError: ``features`` or ``dist2`` not floating, ``idx`` not an integer tensor.
        ValueError: ``features`` not 3-D; ``idx`` not 3-D or with ``k = 0``; ``dist2`` not the shape of
            ``idx``; mismatched batch sizes; ``eps <= 0``.
        RuntimeError / IndexError: an index outside ``[0, N)`` (raised by PyTorch).
    """
    _check_cloud("features", features)
    if not isinstance(idx, Tensor) or idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8,
                                                         torch.uint8):
        raise TypeError(f"three_interpolate: idx must be an integer tensor, got {getattr(idx, 'dtype', idx)}")
    if idx.dim() != 3 or idx.shape[-1] < 1:
        raise ValueError(f"three_interpolate: idx must have shape (B, M, k) with k >= 1, got {tuple(idx.shape)}")
    if not isinstance(dist2, Tensor) or not dist2.is_floating_point():
        got = getattr(dist2, "dtype", type(dist2).__name__)
        raise TypeError(f"three_interpolate: dist2 must be a floating-point tensor, got {got}")
    if dist2.shape != idx.shape:
        raise ValueError(f"three_interpolate: dist2 {tuple(dist2.shape)} does not match idx {tuple(idx.shape)}")
    if idx.shape[0] != features.shape[0]:
        raise ValueError(
            f"three_interpolate: batch sizes differ: features {tuple(features.shape)} vs idx {tuple(idx.shape)}"
        )
    if not eps > 0:
        raise ValueError(f"three_interpolate: eps must be > 0, got {eps}")
    with torch.no_grad():
        w = 1.0 / (dist2.detach().clamp_min(0.0).sqrt() + eps)
        w = (w / w.sum(dim=-1, keepdim=True)).to(features.dtype)
    out = None
    for j in range(idx.shape[-1]):  # k <= 3 terms of (B, M, C): no (B, M, k, C) intermediate
        term = gather_points(features, idx[..., j]) * w[..., j : j + 1]
        out = term if out is None else out + term
    return out


def _ball_slots(inside: Tensor, k: int, n: int, nearest: Callable[[Tensor], Tensor]) -> Tensor:
    """The ball query's slots from ``(..., w)`` indices of points inside the ball (any order; ``n`` marks
    the rest): the first ``k`` in index order, padded with the first; an empty ball gets ``nearest(empty)``,
    a ``(..., 1)`` index valid where the boolean ``(..., 1)`` ``empty`` is set. Returns ``(..., k)`` int64."""
    kk = min(k, inside.shape[-1])
    first_k = inside.topk(kk, dim=-1, largest=False, sorted=True).values  # the kk lowest indices
    first = first_k[..., :1]
    empty = first == n
    if bool(empty.any()):
        first = torch.where(empty, nearest(empty).to(first.dtype), first)
    idx = torch.where(first_k == n, first, first_k)
    if kk < k:
        idx = torch.cat([idx, first.expand(*first.shape[:-1], k - kk)], dim=-1)
    return idx.long()


def _ball_block(d2: Tensor, r2: float, k: int, n: int) -> Tensor:
    """Brute-force ball query on one ``(B, rows, N)`` block of squared distances -> ``(B, rows, k)`` int64."""
    order = torch.arange(n, dtype=torch.int32, device=d2.device)
    inside = torch.where(d2 < r2, order, n)  # int32: half the memory of int64 candidates
    return _ball_slots(inside, k, n, lambda empty: d2.argmin(-1, keepdim=True))


def _tree_ball_query(xyz: Tensor, new_xyz: Tensor, r2: float, k: int, budget: int | None) -> Tensor:
    """k-d tree ball query of validated CPU coordinates: the tree's candidates (every point within the ball
    plus a margin, in index order) tested with the exact kernel and ``d2 < r2`` as in :func:`_ball_block`;
    the first ``k`` inside fill the slots by :func:`_ball_slots`, empty balls take the nearest point from
    :func:`_tree_knn_rows` (``argmin``'s lowest index among ties). At most ``_tree_entries(budget)``
    candidates at a time (at least one centre's)."""
    from . import kdtree

    xyz, new_xyz = xyz.detach(), new_xyz.detach()
    b, m, _ = new_xyz.shape
    n = xyz.shape[1]
    trees = [kdtree.build(xyz[i].numpy()) for i in range(b)]
    out = torch.empty(b, m, k, dtype=torch.long)
    workers, entries = torch.get_num_threads(), _tree_entries(budget)
    for i, tree in enumerate(trees):
        centres, points = new_xyz[i].numpy(), xyz[i].numpy()
        centre_channels, point_channels = np.ascontiguousarray(centres.T), np.ascontiguousarray(points.T)
        for rows, counts, flat in kdtree.ball_candidates(tree, centres, r2, k, _TREE_SLACK, _TREE_FLOOR, workers,
                                                         entries):
            if not len(rows):
                continue
            owner = np.repeat(np.arange(len(rows)), counts)  # block row of every candidate
            centre_of = rows[owner]
            d2 = _exact_sq_dist([c[centre_of] for c in centre_channels], [p[flat] for p in point_channels])
            hit = d2 < np.asarray(r2, dtype=d2.dtype)  # as torch compares a tensor with a Python float
            seen = np.concatenate([[0], np.cumsum(hit)])  # hits before each candidate
            rank = seen[1:] - 1 - seen[np.cumsum(counts) - counts][owner]  # among its ball's hits
            keep = hit & (rank < k)
            inside = np.full((len(rows), k), n, dtype=np.int64)
            inside[owner[keep], rank[keep]] = flat[keep]

            def nearest(empty: Tensor, rows: np.ndarray = rows, i: int = i) -> Tensor:
                found = torch.zeros(empty.shape, dtype=torch.long)
                lonely = [rows[empty[:, 0].numpy()] if j == i else rows[:0] for j in range(b)]
                found[empty[:, 0]] = _tree_knn_rows(trees, new_xyz, xyz, lonely, 1, budget)[1]
                return found

            out[i, torch.from_numpy(rows)] = _ball_slots(torch.from_numpy(inside), k, n, nearest)
    return out


@torch.no_grad()
def ball_query(
    xyz: Tensor,
    new_xyz: Tensor,
    radius: float,
    k: int,
    *,
    budget: int | None = DISTANCE_BUDGET,
    search: str = "auto",
) -> Tensor:
    """Up to ``k`` neighbours within ``radius`` of every centre (PointNet++ ball query).

    Follows the PointNet++ kernel convention: the neighbours are the *first* ``k`` points in index order
    with squared distance strictly below ``radius**2`` (not the nearest ``k``), and unused slots repeat the
    first neighbour found. Departure from the reference kernel, which leaves index 0 when a ball is empty:
    an empty ball is filled with the index of the centre's nearest point (lowest index among ties), so every
    group holds a real neighbour of its centre. ``k > N`` is allowed; the extra slots are padded the same
    way. Squared distances are exact (coordinate differences), so a centre taken from ``xyz`` is always
    inside its own ball. The search is chosen like :func:`knn`'s (``search``: the k-d tree for CPU
    float32/float64 input under ``auto``, else the brute force blocked over the centres); the result does
    not depend on ``budget`` or ``search``.

    Args:
        xyz: ``(B, N, 3)`` points to search, ``N >= 1``; finite for the k-d tree, as ``new_xyz``.
        new_xyz: ``(B, M, 3)`` ball centres (usually an FPS subset of ``xyz``).
        radius: ball radius, in the units of ``xyz``, ``> 0``.
        k: slots per centre (``nsample``), ``>= 1``.
        budget: brute force: as in :func:`knn`; peak memory about 9 bytes per held distance in float32 (the
            block and its int32 candidates; measured 580 MiB at the default, against ~20 bytes per distance
            before). k-d tree: at most ``budget // 4`` candidates at once (or one ball): balls of up to ``k``
            points as ``(centres, k + 1)`` arrays of one bounded kNN round, crowded balls as SciPy's Python
            lists (~80 bytes a candidate) in blocks sized by their counted lengths
            (:func:`pointtune.kdtree.ball_candidates`; a few MiB at scene scale).
        search: as in :func:`knn`.

    Returns:
        ``(B, M, k)`` int64 indices into ``N``, on ``xyz``'s device.

    Raises:
        TypeError: non-floating inputs, a non-int ``k`` or ``budget``.
        ValueError: inputs not ``(B, *, 3)``, mismatched batch sizes, ``N = 0``, ``radius <= 0``, ``k < 1``,
            ``budget < 1``, or a ``search`` or non-finite coordinates as in :func:`knn`.
    """
    _check_cloud("xyz", xyz, 3)
    _check_cloud("new_xyz", new_xyz, 3)
    _check_count("k", k)
    if not radius > 0:
        raise ValueError(f"ball_query: radius must be > 0, got {radius}")
    _check_pair("new_xyz", new_xyz, "xyz", xyz)
    _check_budget(budget)
    b, m, _ = new_xyz.shape
    n = xyz.shape[1]
    if n == 0:
        raise ValueError(f"ball_query: xyz has no points: {tuple(xyz.shape)}")
    r2 = radius * radius
    if _use_tree(search, "ball_query", new_xyz, xyz):
        return _tree_ball_query(xyz, new_xyz, r2, k, budget)
    dist = _Distances(new_xyz, xyz)
    blocks = _query_blocks(b, m, n, budget)
    if len(blocks) == 1:
        return _ball_block(dist.block(0, m), r2, k, n)
    out = torch.empty(b, m, k, dtype=torch.long, device=xyz.device)
    for start, stop in blocks:
        out[:, start:stop] = _ball_block(dist.block(start, stop), r2, k, n)
    return out


# ----------------------------------------------------------------------------------------------------------
# gathering


def gather_points(x: Tensor, idx: Tensor) -> Tensor:
    """Pick rows of ``x`` by index, per batch element (differentiable w.r.t. ``x``).

    Args:
        x: ``(B, N, C)`` any dtype.
        idx: ``(B, M)`` or ``(B, M, k)`` integer indices into ``N``.

    Returns:
        ``(B, M, C)`` or ``(B, M, k, C)``: ``out[b, m, ..., :] = x[b, idx[b, m, ...], :]``.

    Raises:
        TypeError: ``idx`` not an integer tensor.
        ValueError: ``x`` not 3-D, ``idx`` not 2-D or 3-D, or mismatched batch sizes.
        RuntimeError / IndexError: an index outside ``[0, N)`` (raised by PyTorch).
    """
    if x.dim() != 3:
        raise ValueError(f"gather_points: x must have shape (B, N, C), got {tuple(x.shape)}")
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"gather_points: idx must be an integer tensor, got {idx.dtype}")
    if idx.dim() not in (2, 3):
        raise ValueError(f"gather_points: idx must have shape (B, M) or (B, M, k), got {tuple(idx.shape)}")
    if idx.shape[0] != x.shape[0]:
        raise ValueError(f"gather_points: batch sizes differ: x {tuple(x.shape)} vs idx {tuple(idx.shape)}")
    b, _, c = x.shape
    flat = idx.reshape(b, -1).long()
    out = torch.gather(x, 1, flat.unsqueeze(-1).expand(-1, -1, c))
    return out.reshape(*idx.shape, c)


def group(
    xyz: Tensor,
    new_xyz: Tensor,
    idx: Tensor,
    features: Tensor | None = None,
    relative: bool = True,
) -> Tensor:
    """Gather local neighbourhoods for a PointNet++ set-abstraction layer.

    Args:
        xyz: ``(B, N, 3)`` coordinates of all points.
        new_xyz: ``(B, M, 3)`` group centres.
        idx: ``(B, M, k)`` neighbour indices into ``N`` (from :func:`ball_query` or :func:`knn`).
        features: optional ``(B, N, C)`` per-point features, concatenated after the coordinates.
        relative: express neighbour coordinates relative to their centre (PointNet++ "local coordinates").

    Returns:
        ``(B, M, k, 3 + C)`` (``C = 0`` without features): coordinates first, then features.

    Raises:
        ValueError: inconsistent shapes (see :func:`gather_points`), or ``idx`` not 3-D.
    """
    if idx.dim() != 3:
        raise ValueError(f"group: idx must have shape (B, M, k), got {tuple(idx.shape)}")
    if new_xyz.shape[:2] != idx.shape[:2]:
        raise ValueError(f"group: new_xyz {tuple(new_xyz.shape)} does not match idx {tuple(idx.shape)}")
    grouped = gather_points(xyz, idx)  # (B, M, k, 3)
    if relative:
        grouped = grouped - new_xyz.unsqueeze(2)
    if features is not None:
        if features.shape[:2] != xyz.shape[:2]:
            raise ValueError(f"group: features {tuple(features.shape)} do not match xyz {tuple(xyz.shape)}")
        grouped = torch.cat([grouped, gather_points(features, idx)], dim=-1)
    return grouped
