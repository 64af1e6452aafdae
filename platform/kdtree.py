"""Candidate neighbours from a k-d tree: the CPU search of :func:`pointtune.ops.knn`, ``ball_query``, ``three_nn``.

The tree (SciPy's ``cKDTree``, Bentley 1975, built per cloud in ``O(N log N)``) only *proposes*
candidates; :mod:`pointtune.ops` then ranks them with the same float arithmetic and tie rule as its
brute-force search, so both searches return identical indices and distances. For that the candidate sets
must contain every point the brute force could pick, whatever its rounding: the tree measures squared
distances in float64, the brute force in the input's precision (float32 usually), which may differ from
the exact value by a relative error ``delta`` (about ``5 * 2**-24`` for float32, see ``ops._TREE_SLACK``).
So each function here returns a superset, defined by a relative ``slack > 2 * delta`` on squared
distances (plus a tiny absolute ``floor`` for results that underflow):

* :func:`knn_candidates`: for every query, all points whose squared distance is at most
  ``(1 + slack) * D_k + floor``, ``D_k`` the ``k``-th smallest squared distance. Whatever float rounding
  the ranking uses, its ``k`` smallest (ties included) are among them.
* :func:`ball_candidates`: for every query, all points whose squared distance is at most
  ``(1 + slack) * radius2 + floor``, in index order (a bounded kNN round for balls of at most the caller's
  slots, whole balls only for the crowded ones).

Both work on a block of queries of one cloud and use ``workers`` threads (SciPy's ``workers``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["BALL_PROBE", "KNN_MARGIN", "build", "check_finite", "knn_candidates", "ball_candidates"]

#: Neighbours asked beyond ``k`` in the first kNN round. A row whose ``(k + margin)``-th candidate is not
#: clearly farther than its ``k``-th (exact ties, duplicates) is asked again with twice the width.
KNN_MARGIN: int = 1

#: Queries whose ball sizes choose :func:`ball_candidates`' order (kNN round first, or whole balls first).
BALL_PROBE: int = 256


def check_finite(name: str, points: np.ndarray) -> None:
    """Raise ``ValueError`` naming ``name``, the value and its point if a coordinate is NaN or infinite.

    Args:
        name: what the points are, for the message (``points``, ``queries``).
        points: ``(N, C)`` coordinates.

    Raises:
        ValueError: a non-finite coordinate.
    """
    if not np.isfinite(points).all():
        where = np.argwhere(~np.isfinite(points))[0]
        raise ValueError(f"k-d tree: {name} must be finite, got {points[tuple(where)]} at point {where[0]}")


def build(points: np.ndarray) -> cKDTree:
    """A k-d tree over one cloud.

    Args:
        points: ``(N, C)`` coordinates (any float dtype; SciPy stores them as float64).

    Returns:
        The ``cKDTree`` (``tree.n == N``).

    Raises:
        ValueError: a non-finite coordinate (NaN or infinity), naming the offending value's position.
    """
    check_finite("points", points)
    return cKDTree(points)


def knn_candidates(
    tree: cKDTree, query: np.ndarray, k: int, slack: float, floor: float, workers: int, max_entries: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Candidate sets for the ``k`` nearest neighbours of every query, in rounds of growing width.

    Round one asks the tree for ``k + KNN_MARGIN`` neighbours; a row is settled when its last candidate is
    farther than ``(1 + slack) * D_k + floor`` (then every point within that bound is a candidate). Unsettled
    rows are asked again with twice the width, until the width is ``N`` (every point) or the round would
    hold more than ``max_entries`` candidates; rows still unsettled then (heavy exact ties, e.g. many
    duplicates of one point) are yielded with ``None`` for the caller's brute force.

    Args:
        tree: from :func:`build`, ``N >= k`` points.
        query: ``(M, C)`` query coordinates.
        k: neighbours wanted, ``1 <= k <= N``.
        slack: relative margin on squared distances (module docstring).
        floor: absolute margin on squared distances (squared input units).
        workers: threads for SciPy.
        max_entries: most candidates (rows x width) asked of the tree in a widened round (the first round,
            ``k + KNN_MARGIN`` wide, always runs).

    Yields:
        ``(rows, cand)``: ``rows`` an int64 array of query indices, ``cand`` their ``(len(rows), w)`` int64
        candidate indices into ``N`` (distinct per row, ``k <= w <= N``), or ``None``. Every query index is
        yielded exactly once.

    Raises:
        ValueError: a non-finite query coordinate.
    """
    check_finite("queries", query)
    n = tree.n
    pending = np.arange(len(query))
    width = min(k + KNN_MARGIN, n)
    while pending.size:
        if width > k + KNN_MARGIN and pending.size * width > max_entries:
            yield pending, None
            return
        dist, cand = tree.query(query[pending], k=width, workers=workers)
        dist, cand = dist.reshape(len(pending), width), cand.reshape(len(pending), width)
        if width == n:
            yield pending, cand
            return
        settled = dist[:, -1] ** 2 > dist[:, k - 1] ** 2 * (1.0 + slack) + floor
        if settled.any():
            yield pending[settled], cand[settled]
        pending = pending[~settled]
        width = min(2 * width, n)


def ball_candidates(
    tree: cKDTree, query: np.ndarray, radius2: float, k: int, slack: float, floor: float, workers: int,
    max_entries: int,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every point within ``sqrt((1 + slack) * radius2 + floor)`` (the reach) of every query, in blocks of
    queries, each ball in index order.

    A ball of at most ``k`` points (``k``: the caller's slots) comes from one bounded kNN round (``query``
    for the ``k + 1`` nearest within the reach: NumPy arrays, no Python lists; a row that finds ``k + 1`` is
    crowded). A crowded ball comes whole from ``query_ball_point``, in blocks whose sizes, counted first
    (``return_length``), sum to at most ``max_entries`` (or one ball). Which kind is common decides the
    order: the ball sizes of the first ``BALL_PROBE`` queries are counted, and when most are crowded (dense
    clouds, large radii) the kNN round is skipped for all but the balls counted small.

    Args:
        tree: from :func:`build`.
        query: ``(M, C)`` ball centres.
        radius2: squared radius, squared input units, ``> 0``.
        k: the caller's slots per ball, ``>= 1``.
        slack: relative margin on squared distances (module docstring).
        floor: absolute margin on squared distances.
        workers: threads for SciPy.
        max_entries: most candidates per block (see above).

    Yields:
        ``(rows, counts, flat)``: an int64 array of query indices, their ball sizes, and the concatenated
        balls (int64 indices into ``N``, ascending within each ball). Every query index is yielded once.

    Raises:
        ValueError: a non-finite query coordinate.
    """
    check_finite("queries", query)
    reach = float(np.sqrt(radius2 * (1.0 + slack) + floor))
    probe = tree.query_ball_point(query[:BALL_PROBE], reach, workers=workers, return_length=True)
    if probe.size and np.mean(probe > k) > 0.5:
        sizes = tree.query_ball_point(query, reach, workers=workers, return_length=True)
        missed = yield from _small_balls(tree, query, np.flatnonzero(sizes <= k), reach, k, workers, max_entries)
        crowded = np.union1d(np.flatnonzero(sizes > k), missed)  # (none missed: the same count of the same reach)
        yield from _whole_balls(tree, query, crowded, sizes[crowded], reach, workers, max_entries)
        return
    crowded = yield from _small_balls(tree, query, np.arange(len(query)), reach, k, workers, max_entries)
    sizes = tree.query_ball_point(query[crowded], reach, workers=workers, return_length=True)
    yield from _whole_balls(tree, query, crowded, sizes, reach, workers, max_entries)


def _small_balls(tree, query, rows, reach, k, workers, max_entries):
    """The bounded kNN round of :func:`ball_candidates` over the queries ``rows``: yields the complete balls
    (at most ``k`` points) as ``(rows, counts, flat)`` blocks of at most ``max_entries`` candidates; returns
    the rows found crowded."""
    n = tree.n
    width = min(k + 1, n)
    per_block = max(1, max_entries // width)
    crowded = []
    for start in range(0, len(rows), per_block):
        block = rows[start : start + per_block]
        _, cand = tree.query(query[block], k=width, distance_upper_bound=reach, workers=workers)
        cand = cand.reshape(-1, width)
        full = cand[:, -1] < n if width < n else np.zeros(len(cand), dtype=bool)
        crowded.append(block[full])
        cand = np.sort(cand[~full], axis=1)  # index order; the missing (index N) last
        found = cand < n
        yield block[~full], found.sum(axis=1), cand[found]
    return np.concatenate(crowded) if crowded else rows[:0]


def _whole_balls(tree, query, rows, sizes, reach, workers, max_entries):
    """The whole balls of the queries ``rows`` (``sizes`` points each, counted by the tree) from
    ``query_ball_point``, in blocks of at most ``max_entries`` candidates (or one ball)."""
    start = 0
    while start < len(rows):
        stop = start + max(1, int(np.searchsorted(np.cumsum(sizes[start:]), max_entries, side="right")))
        block = rows[start:stop]
        balls = tree.query_ball_point(query[block], reach, workers=workers, return_sorted=True)
        counts = np.fromiter(map(len, balls), dtype=np.int64, count=len(balls))
        flat = np.fromiter(itertools.chain.from_iterable(balls), dtype=np.int64, count=int(counts.sum()))
        yield block, counts, flat
        start = stop
