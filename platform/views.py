"""Multi-crop views of point clouds, made on the batch tensor's device: global and local crops (DCGLR Eqs. 4-5)
and farthest-point-sampled multi-resolution views, reusable by any method that trains on several views.

A *crop* of a cloud of ``N`` points is a set of *members*; a *view* is that set resampled to the view's point
count ``n``: every member once in random order when ``n`` equals the member count, a random subset without
replacement when there are more members than ``n``, and every member once plus random repeats (each member
repeated at most once more before any is repeated twice) when there are fewer. Views are returned as indices
``(B, n)`` into the input, so that per-point features (normals, colour) follow the coordinates.

Crops (``crop_mode``; spec ``dcglr.md`` A1):

* ``knn`` (:func:`knn_crop_indices`): a seed point drawn uniformly from the cloud and its ``round(r N)``
  nearest neighbours (Euclidean, the seed itself included): a spatially contiguous patch holding the fraction
  ``r`` of the points (the paper's global crops "retain most of the points").
* ``box`` (:func:`box_crop_indices`, STRL-style): the points inside an axis-aligned cuboid centred at a random
  point of the cloud (so never empty) whose side along each axis is ``r`` times the extent of the cloud's
  bounding box along that axis. Its member count varies from cloud to cloud; the view's count is set by the
  points mode below, and the members are resampled to it by the rule above (random subset, or repeats).

Point counts (``view_points_mode``; A3), which make the views of a batch stackable:

* ``shared_ratio``: one ratio ``r ~ U(low, high)`` drawn per view index per mini-batch, shared by every cloud
  of the batch, so all share ``n = round(r N)`` (knn crops are then exactly the kNN ball, no resampling).
* ``fixed``: one ratio drawn per cloud and view, each crop resampled to ``global_points`` / ``local_points``.

Multi-resolution views (:func:`fps_view_indices`): ``round(fraction N)`` points by farthest point sampling
from a random start point (:func:`pointtune.ops.fps` always starts at index 0, so the cloud is randomly
permuted first); the same count in both points modes.

Ratios are rounded half up (``floor(r N + 0.5)``) and clamped to ``[1, N]``. All randomness comes from the
``generator`` argument (a ``torch.Generator`` on the points' device; ``None``: torch's global stream), so a
seeded generator reproduces the views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pointtune.ops import fps, gather_points, knn

__all__ = [
    "CROP_MODES",
    "VIEW_POINTS_MODES",
    "MultiCropSpec",
    "MultiCropViews",
    "crop_count",
    "resample_members",
    "knn_crop_indices",
    "box_crop_indices",
    "fps_view_indices",
    "renormalize",
    "multi_crop_indices",
    "multi_crop",
    "view_groups",
]

CROP_MODES = ("knn", "box")
VIEW_POINTS_MODES = ("shared_ratio", "fixed")


def _check_points(points: Tensor) -> None:
    if not isinstance(points, Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        got = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
        raise ValueError(f"points must have shape (B, N, 3), got {got}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    if points.shape[1] < 1:
        raise ValueError("points must hold at least one point per cloud")


def _check_ratio(name: str, ratio: float | Tensor) -> None:
    bad = (ratio <= 0) | (ratio > 1) if isinstance(ratio, Tensor) else not 0 < ratio <= 1
    if bool(torch.as_tensor(bad).any()):
        raise ValueError(f"{name} must lie in (0, 1], got {ratio}")


def crop_count(ratio: float | Tensor, n: int) -> int | Tensor:
    """Points kept by a crop of ratio ``ratio`` of a cloud of ``n`` points: ``floor(ratio n + 0.5)`` clamped
    to ``[1, n]``; an int for a float ratio, an int64 tensor of the same shape for a tensor of ratios."""
    if isinstance(ratio, Tensor):
        return torch.floor(ratio.double() * n + 0.5).long().clamp(1, n)
    return min(n, max(1, int(math.floor(ratio * n + 0.5))))


def _per_cloud(value: int | float | Tensor, b: int, device, dtype) -> Tensor:
    t = torch.as_tensor(value, device=device, dtype=dtype)
    return t.expand(b).clone() if t.dim() == 0 else t.to(device)


def resample_members(members: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Positions of ``n`` members per row: the resampling rule of the module docstring.

    Args:
        members: ``(B, C)`` bool, at least one True per row.
        n: positions per row, ``>= 1``.
        generator: random stream on ``members.device``.

    Returns:
        ``(B, n)`` int64 positions into ``C``, all of them members: the row's members in random order, the
        first ``n`` of them when there are at least ``n``, else all of them followed by repeats cycling through
        the same random order.

    Raises:
        ValueError: ``members`` not 2-D bool, a row without members, or ``n < 1``.
    """
    if members.dim() != 2 or members.dtype != torch.bool:
        raise ValueError(f"members must be a (B, C) bool tensor, got {members.dtype} {tuple(members.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    counts = members.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("every row of members needs at least one member")
    keys = torch.rand(members.shape, generator=generator, device=members.device)
    keys = keys.masked_fill(~members, 2.0)                        # members first, in random order
    order = keys.argsort(dim=1)
    pos = torch.arange(n, device=members.device).expand(members.shape[0], n) % counts[:, None]
    return order.gather(1, pos)


def knn_crop_indices(
    points: Tensor,
    counts: int | Tensor,
    n: int | None = None,
    generator: torch.Generator | None = None,
    seeds: Tensor | None = None,
) -> Tensor:
    """kNN crop (A1 [REC]): a seed point and its ``counts`` nearest neighbours, resampled to ``n`` points.

    The crop of cloud ``b`` is the ``counts[b]`` points nearest (Euclidean, :func:`pointtune.ops.knn`) to the
    seed ``points[b, seeds[b]]``, the seed included; the view is that crop resampled to ``n`` points by
    :func:`resample_members` (the crop itself in random order when ``n == counts[b]``).

    Args:
        points: ``(B, N, 3)`` floating point.
        counts: points per crop, an int or ``(B,)`` int64, each in ``[1, N]`` (:func:`crop_count`).
        n: points per view; ``None``: ``counts`` (an int then).
        generator: random stream on ``points.device``.
        seeds: optional ``(B,)`` seed indices into ``N`` instead of random ones.

    Returns:
        ``(B, n)`` int64 indices into ``N``.

    Raises:
        ValueError: bad ``points``, ``counts`` outside ``[1, N]``, ``n`` missing with per-cloud counts, or
            ``seeds`` not ``(B,)``.
    """
    _check_points(points)
    b, num, _ = points.shape
    counts_t = _per_cloud(counts, b, points.device, torch.long)
    if counts_t.shape != (b,) or bool(((counts_t < 1) | (counts_t > num)).any()):
        raise ValueError(f"counts must be an int or ({b},) tensor in [1, {num}], got {counts}")
    if n is None:
        if isinstance(counts, Tensor):
            raise ValueError("n is required when counts differ per cloud")
        n = int(counts)
    if seeds is None:
        seeds = torch.randint(0, num, (b,), generator=generator, device=points.device)
    elif seeds.shape != (b,):
        raise ValueError(f"seeds must be ({b},), got shape {tuple(seeds.shape)}")
    centre = gather_points(points, seeds[:, None].long())            # (B, 1, 3)
    near = knn(centre, points, int(counts_t.max()))[:, 0]           # (B, M_max) nearest first
    members = torch.arange(near.shape[1], device=points.device)[None] < counts_t[:, None]
    return near.gather(1, resample_members(members, n, generator))


def box_crop_indices(
    points: Tensor,
    ratios: float | Tensor,
    n: int,
    generator: torch.Generator | None = None,
    centres: Tensor | None = None,
) -> Tensor:
    """Box crop (A1 ``box``, STRL-style): points inside an axis-aligned cuboid, resampled to ``n`` points.

    For cloud ``b`` the cuboid is centred at ``c_b`` (a random point of the cloud unless ``centres`` is given)
    with half side ``ratios[b] * (max - min) / 2`` along each axis (the cloud's bounding-box extent; a flat
    axis of zero extent keeps the points level with the centre). The members are the points ``p`` with
    ``|p - c_b| <= half`` on every axis, at least the centre point itself; the view is them resampled to ``n``
    points by :func:`resample_members` (a random subset when the box holds more than ``n``, random repeats
    when it holds fewer), so every view point lies inside the box.

    Args:
        points: ``(B, N, 3)`` floating point.
        ratios: side of the box over the bounding-box extent, a float or ``(B,)`` tensor in ``(0, 1]``.
        n: points per view, ``>= 1``.
        generator: random stream on ``points.device``.
        centres: optional ``(B,)`` indices into ``N`` of the box centres.

    Returns:
        ``(B, n)`` int64 indices into ``N``.

    Raises:
        ValueError: bad ``points``, ratios outside ``(0, 1]``, ``n < 1`` or ``centres`` not ``(B,)``.
    """
    _check_points(points)
    _check_ratio("ratios", ratios)
    b, num, _ = points.shape
    if centres is None:
        centres = torch.randint(0, num, (b,), generator=generator, device=points.device)
    elif centres.shape != (b,):
        raise ValueError(f"centres must be ({b},), got shape {tuple(centres.shape)}")
    r = _per_cloud(ratios, b, points.device, points.dtype)
    extent = points.amax(dim=1) - points.amin(dim=1)                 # (B, 3)
    half = (r[:, None] * extent / 2)[:, None, :]                      # (B, 1, 3)
    centre = gather_points(points, centres[:, None].long())          # (B, 1, 3)
    inside = ((points - centre).abs() <= half).all(dim=-1)           # (B, N)
    inside[torch.arange(b, device=points.device), centres.long()] = True   # the centre despite rounding
    return resample_members(inside, n, generator)


def fps_view_indices(points: Tensor, m: int, generator: torch.Generator | None = None) -> Tensor:
    """Multi-resolution view (Sec. 4.1: "FPS sample half of the original point cloud"): ``m`` points by
    farthest point sampling from a random start point.

    The cloud is randomly permuted first, because :func:`pointtune.ops.fps` starts at index 0; two calls give
    two different views.

    Args:
        points: ``(B, N, 3)`` floating point.
        m: points per view, ``1 <= m <= N``.
        generator: random stream on ``points.device``.

    Returns:
        ``(B, m)`` int64 indices into ``N``, in FPS order.

    Raises:
        ValueError: bad ``points`` or ``m`` outside ``[1, N]``.
    """
    _check_points(points)
    b, num, _ = points.shape
    if not 1 <= m <= num:
        raise ValueError(f"m must lie in [1, {num}], got {m}")
    perm = torch.rand(b, num, generator=generator, device=points.device).argsort(dim=1)
    return perm.gather(1, fps(gather_points(points, perm), m))


def renormalize(points: Tensor) -> Tensor:
    """Each cloud re-centred on its centroid and scaled into the unit sphere (its farthest point at radius 1;
    A4 option ``renormalize_crops``). ``(B, n, 3) -> (B, n, 3)``; a single-point cloud becomes the origin.

    Raises:
        ValueError: bad ``points``.
    """
    _check_points(points)
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1).clamp_min(1e-12)
    return centred / radius[:, None, None]


@dataclass(frozen=True)
class MultiCropSpec:
    """What :func:`multi_crop_indices` makes (names after DCGLR's symbols, Eqs. 4-5).

    Attributes:
        n_global: I, global crops.
        global_ratio: ``(r_g1, r_g2)``, the range of the global crop ratio.
        n_local: J, local crops.
        local_ratio: ``(r_l1, r_l2)``.
        n_multires: FPS multi-resolution views, added after the local crops.
        multires_fraction: fraction of the points kept by each of them.
        crop_mode: ``knn`` or ``box``.
        view_points_mode: ``shared_ratio`` or ``fixed``.
        global_points, local_points: view sizes in ``fixed`` mode.
        renormalize: re-centre and rescale every view into the unit sphere (:func:`renormalize`).

    Raises:
        ValueError: a count below 0 (``n_global`` below 1), a ratio range not within ``(0, 1]`` or with low >
            high, an unknown mode, or non-positive view sizes.
    """

    n_global: int = 2
    global_ratio: tuple[float, float] = (0.7, 1.0)
    n_local: int = 8
    local_ratio: tuple[float, float] = (0.2, 0.5)
    n_multires: int = 2
    multires_fraction: float = 0.5
    crop_mode: Literal["knn", "box"] = "knn"
    view_points_mode: Literal["shared_ratio", "fixed"] = "shared_ratio"
    global_points: int = 1024
    local_points: int = 256
    renormalize: bool = False

    def __post_init__(self) -> None:
        if self.n_global < 1 or self.n_local < 0 or self.n_multires < 0:
            raise ValueError(f"view counts must be n_global >= 1, n_local >= 0, n_multires >= 0, got "
                             f"{self.n_global}, {self.n_local}, {self.n_multires}")
        for name in ("global_ratio", "local_ratio"):
            low, high = getattr(self, name)
            if not 0 < low <= high <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {(low, high)}")
        _check_ratio("multires_fraction", self.multires_fraction)
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
        if self.view_points_mode not in VIEW_POINTS_MODES:
            raise ValueError(f"view_points_mode must be one of {VIEW_POINTS_MODES}, got {self.view_points_mode!r}")
        if self.global_points < 1 or self.local_points < 1:
            raise ValueError(f"global_points and local_points must be >= 1, got {self.global_points}, "
                             f"{self.local_points}")


@dataclass
class MultiCropViews:
    """Views of a batch: ``global_points`` (I tensors ``(B, n_i, 3)``), ``local_points`` (J crops then the
    multi-resolution views), the per-point features gathered alike (``None`` without features), the indices
    into the input they came from, and each crop's ratio (``(B,)``; the fraction for a multi-resolution
    view)."""

    global_points: list[Tensor]
    local_points: list[Tensor]
    global_features: list[Tensor] | None
    local_features: list[Tensor] | None
    global_index: list[Tensor]
    local_index: list[Tensor]
    global_ratios: list[Tensor]
    local_ratios: list[Tensor]


def _crop(points: Tensor, ratios: Tensor, n: int, spec: MultiCropSpec, generator) -> Tensor:
    """``(B, n)`` indices of one crop view; ``ratios`` ``(B,)`` float64."""
    if spec.crop_mode == "box":
        return box_crop_indices(points, ratios.to(points.dtype), n, generator)
    return knn_crop_indices(points, crop_count(ratios, points.shape[1]), n, generator)


def multi_crop_indices(
    points: Tensor, spec: MultiCropSpec, generator: torch.Generator | None = None
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """Indices of the I global and J + n_multires local views of every cloud (Eqs. 4-5 and Sec. 4.1).

    Ratios ``U(low, high)``: one per view index in ``shared_ratio`` mode (view size ``round(r N)``), one per
    cloud and view in ``fixed`` mode (view size ``global_points`` / ``local_points``). Multi-resolution views
    have ``round(multires_fraction N)`` points in both modes.

    Args:
        points: ``(B, N, 3)`` floating point.
        spec: what to make.
        generator: random stream on ``points.device``.

    Returns:
        ``(global_index, local_index, global_ratios, local_ratios)``: lists of ``(B, n_v)`` int64 indices and
        of ``(B,)`` ratios (float64), globals first then local crops then multi-resolution views.

    Raises:
        ValueError: bad ``points``.
    """
    _check_points(points)
    b, num, _ = points.shape
    dev = points.device
    shared = spec.view_points_mode == "shared_ratio"
    shape = (spec.n_global + spec.n_local, 1 if shared else b)
    u = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64)
    lows = torch.tensor([spec.global_ratio[0]] * spec.n_global + [spec.local_ratio[0]] * spec.n_local,
                        dtype=torch.float64, device=dev)
    highs = torch.tensor([spec.global_ratio[1]] * spec.n_global + [spec.local_ratio[1]] * spec.n_local,
                         dtype=torch.float64, device=dev)
    ratios = (lows[:, None] + (highs - lows)[:, None] * u).expand(shape[0], b)
    sizes = crop_count(ratios[:, 0], num).tolist() if shared else None    # one host sync for all views
    g_idx, l_idx, g_r, l_r = [], [], [], []
    for v in range(shape[0]):
        is_global = v < spec.n_global
        n = sizes[v] if shared else (spec.global_points if is_global else spec.local_points)
        idx = _crop(points, ratios[v], n, spec, generator)
        (g_idx if is_global else l_idx).append(idx)
        (g_r if is_global else l_r).append(ratios[v])
    m = crop_count(spec.multires_fraction, num)
    for _ in range(spec.n_multires):
        l_idx.append(fps_view_indices(points, m, generator))
        l_r.append(torch.full((b,), spec.multires_fraction, dtype=torch.float64, device=dev))
    return g_idx, l_idx, g_r, l_r


def multi_crop(
    points: Tensor,
    spec: MultiCropSpec,
    generator: torch.Generator | None = None,
    features: Tensor | None = None,
) -> MultiCropViews:
    """The multi-crop views of a batch (:func:`multi_crop_indices`), gathered from ``points`` and
    ``features`` and, with ``spec.renormalize``, re-centred and rescaled into the unit sphere (coordinates
    only). No gradient is needed: call it under ``torch.no_grad``.

    Args:
        points: ``(B, N, 3)`` floating point.
        spec: what to make.
        generator: random stream on ``points.device``.
        features: optional ``(B, N, C)`` per-point features, gathered with the same indices.

    Returns:
        A :class:`MultiCropViews`.

    Raises:
        ValueError: bad ``points``, or ``features`` not ``(B, N, C)`` matching ``points``.
    """
    _check_points(points)
    if features is not None and (features.dim() != 3 or features.shape[:2] != points.shape[:2]):
        raise ValueError(f"features must be (B, N, C) with (B, N) = {tuple(points.shape[:2])}, got "
                         f"{tuple(features.shape)}")
    g_idx, l_idx, g_r, l_r = multi_crop_indices(points, spec, generator)

    def take(index: list[Tensor]) -> tuple[list[Tensor], list[Tensor] | None]:
        pts = [gather_points(points, i) for i in index]
        if spec.renormalize:
            pts = [renormalize(p) for p in pts]
        feats = None if features is None else [gather_points(features, i) for i in index]
        return pts, feats

    gp, gf = take(g_idx)
    lp, lf = take(l_idx)
    return MultiCropViews(gp, lp, gf, lf, g_idx, l_idx, g_r, l_r)


def view_groups(spec: MultiCropSpec) -> tuple[list[list[int]], list[list[int]]]:
    """Which views of :func:`multi_crop` always have the same point count, so that an encoder can take each
    group as one batch: ``(global_groups, local_groups)``, lists of view positions in the ``global_points`` /
    ``local_points`` lists.

    ``fixed`` mode: all global views, all local crops, all multi-resolution views (three groups at most);
    ``shared_ratio`` mode: every crop alone (its size is random), all multi-resolution views together. The
    groups depend on ``spec`` alone, never on the drawn sizes, so every data-parallel worker runs the same
    number of encoder calls per step (BatchNorm's ``num_batches_tracked`` stays the same on all of them).
    """
    j, m = spec.n_local, spec.n_multires
    multires = [list(range(j, j + m))] if m else []
    if spec.view_points_mode == "fixed":
        return [list(range(spec.n_global))], ([list(range(j))] if j else []) + multires
    return [[i] for i in range(spec.n_global)], [[i] for i in range(j)] + multires
