"""Point-cloud primitives in pure PyTorch: sampling, neighbour search and gathering.

Every function is batched over a leading batch dimension ``B``, works on any device and dtype the input
lives on, and uses no Python loop over the batch. Clouds are channels-last: ``(B, N, 3)`` coordinates,
``(B, N, C)`` features. Coordinates and radii are in the units of the input (pointtune normalises clouds
into the unit sphere, so a radius of ``0.2`` is a fifth of the cloud's radius).

Index computations (:func:`fps`, :func:`knn`, :func:`ball_query`) run under ``torch.no_grad``: their
outputs are integer indices, which carry no gradient; gradients flow through :func:`gather_points` and
:func:`group` instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fps", "knn", "ball_query", "gather_points", "group", "square_distance"]


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


def square_distance(query: Tensor, ref: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances.

    Computed as ``|q|^2 - 2 q.r + |r|^2`` (one batched matmul) and clamped at 0, so it is memory-light but
    carries float rounding of order ``eps * |x|^2``; fine for ranking neighbours.

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
    qq = query.pow(2).sum(-1, keepdim=True)  # (B, M, 1)
    rr = ref.pow(2).sum(-1).unsqueeze(1)  # (B, 1, N)
    d2 = torch.baddbmm(qq + rr, query, ref.transpose(1, 2), beta=1.0, alpha=-2.0)
    return d2.clamp_min_(0.0)


@torch.no_grad()
def fps(xyz: Tensor, m: int) -> Tensor:
    """Farthest point sampling (Eldar et al. 1997; the sampler of PointNet++).

    Greedy: the first sample is point index ``0`` of every cloud (deterministic, as in the PointNet++ CUDA
    kernel, instead of a random start); each further sample is the point whose distance to the samples
    chosen so far is largest. Ties go to the lowest index (``torch.argmax`` convention). Runs ``m``
    iterations of vectorised work over the whole batch.

    Args:
        xyz: ``(B, N, 3)`` coordinates (floating point, any units).
        m: number of samples, ``1 <= m <= N``.

    Returns:
        ``(B, m)`` int64 indices into ``N``, in the order they were picked. Distinct whenever the cloud has
        at least ``m`` distinct points (duplicate points may be re-picked once every distance is zero).

    Raises:
        TypeError: ``xyz`` not a floating tensor, or ``m`` not an int.
        ValueError: ``xyz`` not ``(B, N, 3)``, ``m < 1`` or ``m > N``.
    """
    _check_cloud("xyz", xyz, 3)
    _check_count("m", m)
    b, n, _ = xyz.shape
    if m > n:
        raise ValueError(f"fps: cannot sample m={m} points from a cloud of N={n}")
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


@torch.no_grad()
def knn(query: Tensor, ref: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` nearest reference points of every query point (Euclidean distance).

    Works in any feature space, not only 3-D coordinates: DGCNN builds its dynamic graph with it on
    ``(B, N, C)`` features. When ``query`` is ``ref`` every point is its own nearest neighbour (distance 0),
    as in DGCNN. Order among exactly tied distances is unspecified.

    Args:
        query: ``(B, M, C)`` floating point.
        ref: ``(B, N, C)`` floating point, same ``B`` and ``C``.
        k: neighbours per query, ``1 <= k <= N``.

    Returns:
        ``(B, M, k)`` int64 indices into ``N``, sorted nearest first.

    Raises:
        TypeError: non-floating inputs or a non-int ``k``.
        ValueError: inputs not 3-D, mismatched batch size or channel count, ``k < 1`` or ``k > N``.
    """
    d2 = square_distance(query, ref)
    _check_count("k", k)
    n = ref.shape[1]
    if k > n:
        raise ValueError(f"knn: k={k} neighbours requested but the reference set has N={n} points")
    return d2.topk(k, dim=-1, largest=False, sorted=True).indices


@torch.no_grad()
def ball_query(xyz: Tensor, new_xyz: Tensor, radius: float, k: int) -> Tensor:
    """Up to ``k`` neighbours within ``radius`` of every centre (PointNet++ ball query).

    Follows the PointNet++ kernel convention: the neighbours are the *first* ``k`` points in index order
    with squared distance strictly below ``radius**2`` (not the nearest ``k``), and unused slots repeat the
    first neighbour found. Departure from the reference kernel, which leaves index 0 when a ball is empty:
    an empty ball is filled with the index of the centre's nearest point, so every group holds a real
    neighbour of its centre. ``k > N`` is allowed; the extra slots are padded the same way.

    Args:
        xyz: ``(B, N, 3)`` points to search.
        new_xyz: ``(B, M, 3)`` ball centres (usually an FPS subset of ``xyz``).
        radius: ball radius, in the units of ``xyz``, ``> 0``.
        k: slots per centre (``nsample``), ``>= 1``.

    Returns:
        ``(B, M, k)`` int64 indices into ``N``.

    Raises:
        TypeError: non-floating inputs or a non-int ``k``.
        ValueError: inputs not ``(B, *, 3)``, mismatched batch sizes, ``radius <= 0`` or ``k < 1``.
    """
    _check_cloud("xyz", xyz, 3)
    _check_cloud("new_xyz", new_xyz, 3)
    _check_count("k", k)
    if not radius > 0:
        raise ValueError(f"ball_query: radius must be > 0, got {radius}")
    d2 = square_distance(new_xyz, xyz)  # (B, M, N)
    n = xyz.shape[1]
    order = torch.arange(n, device=xyz.device).expand_as(d2)
    # Points outside the ball get the sentinel N so that the k smallest entries are the first k inside.
    cand = torch.where(d2 < radius * radius, order, torch.full_like(order, n))
    kk = min(k, n)
    first_k = cand.topk(kk, dim=-1, largest=False, sorted=True).values  # (B, M, kk)
    first = first_k[..., :1]
    nearest = d2.argmin(-1, keepdim=True)
    first = torch.where(first == n, nearest, first)
    idx = torch.where(first_k == n, first.expand_as(first_k), first_k)
    if kk < k:
        idx = torch.cat([idx, first.expand(*first.shape[:-1], k - kk)], dim=-1)
    return idx


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
