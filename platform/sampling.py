"""Exact farthest point sampling compiled with Numba: the kernel behind :func:`pointtune.ops.fps`.

The algorithm is the plain greedy FPS of PointNet++ (start at index 0, then repeatedly the point whose
squared distance to the chosen set is largest, ties to the lowest index), made cheaper by *buckets* in the
spirit of QuickFPS (Han et al., "QuickFPS: Architecture and Algorithm Co-Design for Farthest Point
Sampling in Large-Scale Point Clouds", IEEE TCAD 2023):

1. The cloud is split into buckets of at most :data:`BUCKET_SIZE` points by recursive median splits along
   the longest side of the bounding box (a k-d tree whose leaves are kept). Each bucket stores its
   axis-aligned bounding box, the largest current distance ``min_d2`` of its points and that point.
2. When a new centre ``c`` is picked, a bucket is skipped if the squared distance from ``c`` to its
   bounding box is at least the bucket's largest ``min_d2``: then no point of the bucket can come closer
   to ``c`` than it already is to the chosen set, so none of its ``min_d2`` change. Only the other
   buckets are rescanned.
3. The next centre is the point of largest ``min_d2`` over the buckets' maxima.

The result is *identical* to the dense loop, not an approximation: every point's distance is computed with
the same float arithmetic ``(dx*dx + dy*dy) + dz*dz`` in the input's precision (no fused multiply-add:
Numba compiles without fast-math), and the skip test is exact in floating point because rounding is
monotonic: for a point ``p`` inside a box, each rounded coordinate gap from ``c`` to the box is at most the
rounded ``|p - c|`` on that axis, hence the rounded box distance is at most the rounded point distance.
Ties are broken towards the lowest original index inside and across buckets, as ``argmax`` does.

Cost: a step rescans only the buckets near the new centre, so late steps (whose centres fill small gaps)
touch a few hundred points instead of all ``N``; see ``bench/ops.py`` for the measured times.

The kernel compiles on first use (about a second; cached on disk by Numba) and holds no Python loop over
points or samples. It runs on the CPU; :func:`pointtune.ops.fps` moves other devices' coordinates to the
host for it.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["BUCKET_SIZE", "fps_indices"]

#: Most points per bucket (k-d tree leaf). 256 was fastest of 32-512 on ScanNet scene0000_00 at 24k and 64k points (2-core CPU).
BUCKET_SIZE: int = 256


@numba.njit(cache=True, nogil=True)
def _build_buckets(p, leaf):
    """Reorder the points of ``p`` ``(N, 3)`` into k-d tree leaves of at most ``leaf`` points.

    Returns ``(order, starts)``: ``order`` ``(N,)`` the original indices bucket after bucket, ``starts``
    ``(K + 1,)`` the offsets of the ``K`` buckets in ``order``.
    """
    n = p.shape[0]
    order = np.arange(n)
    starts = np.empty(n + 1, dtype=np.int64)  # at most n buckets
    count = 0
    stack = np.empty((2 * (n // leaf) + 64, 2), dtype=np.int64)
    stack[0, 0], stack[0, 1] = 0, n
    top = 1
    while top > 0:
        top -= 1
        lo, hi = stack[top, 0], stack[top, 1]
        if hi - lo <= leaf:
            starts[count] = lo
            count += 1
            continue
        seg = order[lo:hi]
        best_axis, best_extent = 0, -1.0
        for a in range(3):
            col = p[seg, a]
            extent = col.max() - col.min()
            if extent > best_extent:
                best_axis, best_extent = a, extent
        col = p[seg, best_axis]
        mid = (hi - lo) // 2
        part = np.argsort(col, kind="mergesort")
        order[lo:hi] = seg[part]
        # push the upper half first so that the lower half is emitted first (buckets in ascending order)
        stack[top, 0], stack[top, 1] = lo + mid, hi
        stack[top + 1, 0], stack[top + 1, 1] = lo, lo + mid
        top += 2
    # depth first, lower half first: the buckets come out in ascending order of their offsets
    out = np.empty(count + 1, dtype=np.int64)
    out[:count] = starts[:count]
    out[count] = n
    return order, out


@numba.njit(cache=True, nogil=True)
def _fps_one(p, m, leaf, out):
    """Greedy FPS of one cloud ``p`` ``(N, 3)`` into ``out`` ``(m,)`` (original indices, pick order)."""
    n = p.shape[0]
    order, starts = _build_buckets(p, leaf)
    k = starts.shape[0] - 1
    q = p[order]  # coordinates in bucket order
    box_lo = np.empty((k, 3), dtype=p.dtype)
    box_hi = np.empty((k, 3), dtype=p.dtype)
    for b in range(k):
        for a in range(3):
            col = q[starts[b]:starts[b + 1], a]
            box_lo[b, a], box_hi[b, a] = col.min(), col.max()
    zero = np.zeros(1, dtype=p.dtype)[0]  # a 0 of the input's precision: the box test must not widen
    min_d2 = np.full(n, np.inf, dtype=p.dtype)
    bmax = np.full(k, np.inf, dtype=p.dtype)  # largest min_d2 per bucket
    barg = np.zeros(k, dtype=np.int64)  # its original index
    far = 0
    out[0] = 0
    for i in range(1, m):
        cx, cy, cz = p[far, 0], p[far, 1], p[far, 2]
        for b in range(k):
            gx = max(box_lo[b, 0] - cx, cx - box_hi[b, 0], zero)
            gy = max(box_lo[b, 1] - cy, cy - box_hi[b, 1], zero)
            gz = max(box_lo[b, 2] - cz, cz - box_hi[b, 2], zero)
            if (gx * gx + gy * gy) + gz * gz >= bmax[b]:
                continue  # no point of this bucket gets closer to the chosen set
            best, best_j = -1.0, -1
            for j in range(starts[b], starts[b + 1]):
                dx, dy, dz = q[j, 0] - cx, q[j, 1] - cy, q[j, 2] - cz
                d = (dx * dx + dy * dy) + dz * dz
                if d < min_d2[j]:
                    min_d2[j] = d
                v = min_d2[j]
                if v > best or (v == best and order[j] < best_j):
                    best, best_j = v, order[j]
            bmax[b], barg[b] = best, best_j
        best, far = -1.0, -1
        for b in range(k):
            if bmax[b] > best or (bmax[b] == best and barg[b] < far):
                best, far = bmax[b], barg[b]
        out[i] = far


@numba.njit(cache=True, nogil=True)
def _fps_batch(p, m, leaf):
    out = np.empty((p.shape[0], m), dtype=np.int64)
    for b in range(p.shape[0]):
        _fps_one(p[b], m, leaf, out[b])
    return out


def fps_indices(xyz: np.ndarray, m: int, bucket_size: int = BUCKET_SIZE) -> np.ndarray:
    """Farthest point sampling of a batch of clouds, exact and bucketed (module docstring).

    Args:
        xyz: ``(B, N, 3)`` float32 or float64 coordinates (any units), finite.
        m: samples per cloud, ``1 <= m <= N`` (checked by the caller, :func:`pointtune.ops.fps`).
        bucket_size: most points per bucket; any value >= 1 gives the same result, only the speed changes.

    Returns:
        ``(B, m)`` int64 indices into ``N`` in pick order, starting with 0; identical to the dense greedy
        loop (:func:`pointtune.ops.fps_reference`).

    Raises:
        ValueError: ``bucket_size < 1``.
    """
    if bucket_size < 1:
        raise ValueError(f"fps_indices: bucket_size must be >= 1, got {bucket_size}")
    return _fps_batch(np.ascontiguousarray(xyz), m, bucket_size)
