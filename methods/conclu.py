"""ConClu: self-supervised point-cloud pre-training by contrasting and clustering.

Paper: G. Mei, X. Huang, J. Liu, J. Zhang, Q. Wu, *"Unsupervised Point Cloud Pre-Training via Contrasting and
Clustering"* (ICIP 2022). Spec: ``shared/specs/conclu.md``.

Each cloud ``P_i`` gets two independent random views ``P^a, P^b`` (half-space crop keeping about 85% of the
points, resampling, a small rotation about the up axis, clipped jitter; made inside the method on the
training device, :func:`make_view`). Both views go through one shared Siamese network: encoder ``f`` with
max pooling (``rho``), projector ``g`` giving ``z`` and predictor ``q`` giving ``q = q(z)`` (Eq. 1). The loss
(Eq. 10, with exposed weights) is::

    L_total = lambda_con * L_con + lambda_clu * L_swap + lambda_orth * L_orth

* ``L_con`` (Eqs. 2-4, :func:`contrasting_loss`): ``D(q^a, sg z^b) + D(q^b, sg z^a)`` with
  ``D = 2 - 2 cos`` (Eq. 2) and stop-gradient on the targets (Eq. 3), averaged over the batch.
* ``L_swap`` (Eqs. 5-7, 9, :func:`swapped_prediction_loss`): cross-entropy between Sinkhorn codes ``S`` of
  the stop-gradient projections (Eqs. 6-7, :func:`sinkhorn_codes`) and the soft assignments ``gamma`` of the
  predictions to ``J`` learnable prototypes (Eq. 5, :func:`soft_assignments`).
* ``L_orth`` (Eq. 8, :func:`orthogonality_loss`): entry-wise L1 norm of ``Gamma^T Gamma - I`` for the
  column-normalised prototypes ``Gamma``.

Readings taken (ids of ``shared/specs/conclu.md`` section 6):

* A1 (batch size 32 in the paper's section 3.1, 128 in section 3.2) is a config matter, not a method field:
  set ``train.batch_size`` (128 is the pre-training setting; with ``J = 32`` a batch of 32 leaves one sample
  per prototype). The :attr:`ConClu.recipe` leaves it to the run.
* A4: Eq. 10 has unit weights; ``lambda_con``, ``lambda_clu`` and ``lambda_orth`` default to 1 but are
  tunable, because the summed L1 of Eq. 8 over ``J^2`` entries (about 50 at a random init with ``J = 32``)
  dwarfs ``L_con`` (range ``[0, 8]``) and the cross-entropy (about ``ln J``). ``orth_reduction='mean'``
  divides it by ``J^2`` instead.
* A5: Eq. 9 is printed without its minus sign; the cross-entropy ``-(1/B) sum_i sum_j s_ij log gamma_ij``
  that the text describes is used.
* A6: the view indices of Eqs. 6 and 9 read literally pair a code with the assignment of the *same* view,
  whereas section 2.1 describes the swapped prediction. ``swap=True`` (default): the code from view a
  supervises ``gamma^b`` and the code from view b supervises ``gamma^a``; ``swap=False``: same-view.
* A7: Sinkhorn-Knopp in the log domain on the cost ``M_ij = 2 - 2 cos(c_j, z_i)``, entropic weight
  ``sinkhorn_epsilon`` (default 0.05 on the M scale), each iteration normalising columns to ``1/J`` then rows
  to ``1/B``, until every column is within ``sinkhorn_tolerance`` (default 1 %) of ``B/J`` or after
  ``sinkhorn_iterations`` (default 10). SwAV's fixed 3 iterations left the columns 8-10 % off uniform (median
  over steps; up to 40 % at worst) at batch 32-128, while Eq. 7 states an exact equipartition; 10 bring the
  median to 0 and the worst case under 9 % (``sinkhorn_tolerance=0 sinkhorn_iterations=3``: SwAV). The loss
  reports the error left as ``sinkhorn_marginal_err`` (:func:`column_marginal_error`); soft codes, rescaled by ``B`` so that every row is a
  distribution (otherwise Eq. 9's ``1/B`` would shrink the loss ``B`` times); computed without gradient,
  prototypes detached. Under DDP the projections of all workers are gathered first (A14,
  ``sinkhorn_global``).
* A8: codes use the projection ``z`` (Eq. 6) and assignments the prediction ``q`` (Eq. 5);
  ``code_feature='q'`` builds the codes from ``sg q`` instead (ablation).
* A9: prototypes ``nn.Parameter(J, projection_dim)`` initialised ``N(0, 1)``, L2-normalised wherever used.
* A11: ``L_con`` sums the two directions (no SimSiam 0.5 factor) and averages over the batch.
* A12/A13: views of ``view_points`` points (random choice without replacement, or ``view_sampling='fps'``;
  padded with random repeats when the crop keeps fewer points); rotation about ``up_axis`` (y for ModelNet40
  HDF5); jitter sigma 0.01 read as the standard deviation; the view is re-centred and scaled into the unit
  sphere as the last step (``renormalize``). Global feature: max pooling only (DGCNN ``pooling='max'``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pointtune.distributed import all_gather_rows, average_batchnorm_stats, rank
from pointtune.data.config import NO_AUGMENTATION
from pointtune.method import BackboneConfig, Method, MethodConfig, Task, register_method
from pointtune.ops import fps, gather_points

__all__ = [
    "ConCluConfig",
    "ConClu",
    "half_space_crop",
    "resample_points",
    "rotate_about_axis",
    "make_view",
    "negative_cosine_distance",
    "contrasting_loss",
    "soft_assignments",
    "sinkhorn_codes",
    "column_marginal_error",
    "swapped_prediction_loss",
    "orthogonality_loss",
    "conclu_loss",
]


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class ConCluConfig(MethodConfig):
    """Hyperparameters of ConClu, named after the paper's symbols (spec section 3).

    Clustering: ``num_prototypes`` is J; ``temperature`` is tau of Eq. 5; ``sinkhorn_epsilon`` and
    ``sinkhorn_iterations`` set the Sinkhorn-Knopp solver of Eqs. 6-7 (epsilon on the cost ``2 - 2 cos``);
    ``swap`` picks cross-view (True) or same-view (False) prediction (A6); ``code_feature`` the feature the
    codes come from (A8); ``sinkhorn_global`` gathers the projections of every DDP worker before Sinkhorn
    (A14; no effect in a single process).

    Loss weights (Eq. 10, A4): ``lambda_con``, ``lambda_clu`` (the swapped cross-entropy of Eq. 9),
    ``lambda_orth`` (Eq. 8, reduced by ``orth_reduction``: ``sum`` = the paper's entry-wise L1, ``mean`` =
    that divided by ``J^2``).

    Heads (section 3.2): projector ``D -> projector_hidden -> projector_hidden -> projection_dim`` and
    predictor ``projection_dim -> predictor_hidden -> projection_dim``, LeakyReLU slope ``leaky_slope``.

    Views (section 3.1, A12): ``crop_ratio`` of the points kept by the half-space crop; ``view_points``
    points per view, chosen by ``view_sampling``; rotation ``U[-rotation_deg, rotation_deg]`` degrees about
    axis ``up_axis`` (0 = x, 1 = y, 2 = z); Gaussian jitter with std ``jitter_sigma`` clipped to
    ``+-jitter_clip``; ``renormalize`` re-centres each view and scales it into the unit sphere.
    """

    name: Literal["conclu"] = "conclu"
    backbone: BackboneConfig = BackboneConfig(name="dgcnn", k=20, emb_dims=1024, pooling="max")
    num_prototypes: int = Field(32, ge=1, description="J, the number of cluster prototypes")
    temperature: float = Field(0.01, gt=0, description="tau of the soft assignments (Eq. 5)")
    sinkhorn_epsilon: float = Field(
        0.05, gt=0, description="epsilon of Sinkhorn-Knopp on the cost 2 - 2 cos (Eqs. 6-7)")
    sinkhorn_iterations: int = Field(
        10, ge=1, description="the most Sinkhorn-Knopp iterations (Eqs. 6-7; SwAV: 3, see A7)")
    sinkhorn_tolerance: float = Field(
        0.01, ge=0, description="stop Sinkhorn once every column sum is within this fraction of B/J (0: never)")
    sinkhorn_global: bool = Field(
        True, description="data parallelism: Sinkhorn over every worker's projections (A14); no effect in one process")
    lambda_con: float = Field(1.0, ge=0, description="weight of the contrasting loss L_con (Eq. 10, A4)")
    lambda_clu: float = Field(1.0, ge=0, description="weight of the swapped clustering loss L_swap (Eqs. 9-10, A4)")
    lambda_orth: float = Field(1.0, ge=0, description="weight of the prototype orthogonality loss L_orth (Eqs. 8, 10)")
    orth_reduction: Literal["sum", "mean"] = Field(
        "sum", description="L_orth reduction: sum (the paper's entry-wise L1) or mean (divided by J^2)")
    swap: bool = Field(
        True, description="predict each view's codes from the other view (true, Eq. 9) or the same view (A6)")
    code_feature: Literal["z", "q"] = Field(
        "z", description="the feature the Sinkhorn codes come from: z (projection) or q (prediction) (A8)")
    projector_hidden: int = Field(
        1024, ge=1, description="projector hidden width (D -> hidden -> hidden -> projection_dim)")
    projection_dim: int = Field(256, ge=1, description="projector output width")
    predictor_hidden: int = Field(
        512, ge=1, description="predictor hidden width (projection_dim -> hidden -> projection_dim)")
    leaky_slope: float = Field(0.2, ge=0, description="negative slope of the heads' LeakyReLU")
    crop_ratio: float = Field(
        0.85, gt=0, le=1, description="share of the points a view's half-space crop keeps (section 3.1, A12)")
    view_points: int = Field(1024, ge=1, description="points per view")
    view_sampling: Literal["random", "fps"] = Field("random", description="how a view picks its points: random or fps")
    rotation_deg: float = Field(
        5.0, ge=0, le=180, description="views: rotation by U[-rotation_deg, rotation_deg] degrees about up_axis")
    up_axis: Literal[0, 1, 2] = Field(1, description="axis of the view rotation: 0 x, 1 y, 2 z")
    jitter_sigma: float = Field(0.01, ge=0, description="views: std of the Gaussian jitter")
    jitter_clip: float = Field(0.025, ge=0, description="views: the jitter is clipped to +-jitter_clip")
    renormalize: bool = Field(True, description="re-centre each view and scale it into the unit sphere")

    @model_validator(mode="after")
    def _dgcnn_max_pooling_and_neighbours(self) -> "ConCluConfig":
        if self.backbone.inputs:
            raise ValueError("backbone.inputs: ConClu's views crop and resample the coordinates only; per-point "
                             "input features are not carried through its augmentations")
        if self.backbone.name == "dgcnn":
            kwargs = self.backbone.kwargs()
            if "pooling" not in kwargs:
                # rho is max pooling (section 2.1): a DGCNN backbone given without `pooling` (e.g. by
                # `--set method.backbone.k=10`, which replaces the default backbone) gets max, not max||avg.
                self.backbone = BackboneConfig(name="dgcnn", **kwargs, pooling="max")
            k = self.backbone.kwargs().get("k", 20)
            if isinstance(k, int) and k > self.view_points:
                raise ValueError(
                    f"view_points ({self.view_points}) must be >= the DGCNN neighbourhood size "
                    f"backbone.k ({k})"
                )
        return self


# --------------------------------------------------------------------------------------------------
# Views (section 3.1 "Data augmentation")
# --------------------------------------------------------------------------------------------------


def _check_points(points: torch.Tensor) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] != 3:
        got = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must have shape (B, N, 3), got {got}")
    if not points.is_floating_point():
        raise ValueError(f"points must be floating point, got {points.dtype}")
    if points.shape[1] < 1:
        raise ValueError("points must hold at least one point per cloud")


def half_space_crop(
    points: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
    direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random half-space crop (section 3.1 "Random Cropping").

    For each cloud a direction ``s`` is drawn uniformly on the sphere S^2 (a normalised Gaussian vector) and
    the ``N_keep = round(ratio * N)`` points (at least 1) with the largest projection ``p . s`` are kept:
    the half-space ``{p : p . s > t}`` with ``t`` at the ``1 - ratio`` quantile of the projections, so every
    cloud keeps the same number of points and the result batches. Kept points stay in their input order.

    Args:
        points: ``(B, N, 3)`` floating point.
        ratio: fraction of points kept, in ``(0, 1]`` (paper: 0.85).
        generator: random stream on ``points.device`` (``None``: torch's global one).
        direction: optional ``(B, 3)`` half-space normals (normalised here) instead of random ones.

    Returns:
        ``(B, N_keep, 3)``.

    Raises:
        ValueError: ``points`` not ``(B, N, 3)`` floating point, ``ratio`` outside ``(0, 1]`` or
            ``direction`` not ``(B, 3)``.
    """
    _check_points(points)
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
    b, n, _ = points.shape
    n_keep = min(n, max(1, int(round(ratio * n))))
    if direction is None:
        direction = torch.randn(b, 3, generator=generator, device=points.device, dtype=points.dtype)
    elif direction.shape != (b, 3):
        raise ValueError(f"direction must be ({b}, 3), got shape {tuple(direction.shape)}")
    direction = F.normalize(direction.to(points.dtype), dim=1)
    proj = (points * direction[:, None, :]).sum(-1)                     # (B, N) signed distance (up to a shift)
    keep = proj.topk(n_keep, dim=1, largest=True, sorted=False).indices
    keep, _ = keep.sort(dim=1)
    return gather_points(points, keep)


def resample_points(
    points: torch.Tensor, m: int, method: str = "random", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Resample every cloud to ``m`` points ("point sampling" after the crop, A12).

    ``random``: ``m`` distinct points in random order; ``fps``: farthest point sampling
    (:func:`pointtune.ops.fps`) started from a random point. When a cloud has fewer than ``m`` points all of
    them are kept (random order) and the rest are random repeats.

    Args:
        points: ``(B, N, 3)``.
        m: points per output cloud, ``>= 1``.
        method: ``random`` or ``fps``.
        generator: random stream on ``points.device``.

    Returns:
        ``(B, m, 3)``.

    Raises:
        ValueError: bad ``points``, ``m < 1`` or unknown ``method``.
    """
    _check_points(points)
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    if method not in ("random", "fps"):
        raise ValueError(f"method must be 'random' or 'fps', got {method!r}")
    b, n, _ = points.shape
    order = torch.rand(b, n, generator=generator, device=points.device).argsort(dim=1)   # random permutation
    if m > n:
        extra = torch.randint(0, n, (b, m - n), generator=generator, device=points.device)
        return gather_points(points, torch.cat([order, extra], dim=1))
    if method == "random":
        return gather_points(points, order[:, :m])
    shuffled = gather_points(points, order)                              # fps starts at index 0: random start
    return gather_points(shuffled, fps(shuffled, m))


def rotate_about_axis(points: torch.Tensor, angles: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """Rotate each cloud about a coordinate axis through the origin (section 3.1 "Random Rotation").

    Right-handed rotation by ``angles[b]`` radians: with ``(u, v)`` the two other axes in cyclic order
    (``axis=1``: ``u = z``, ``v = x``), ``u' = u cos - v sin``, ``v' = u sin + v cos``; the ``axis``
    coordinate and every norm are unchanged.

    Args:
        points: ``(B, N, 3)``.
        angles: ``(B,)`` radians.
        axis: 0, 1 or 2.

    Returns:
        ``(B, N, 3)``.

    Raises:
        ValueError: bad shapes or axis.
    """
    _check_points(points)
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    if angles.shape != (points.shape[0],):
        raise ValueError(f"angles must be ({points.shape[0]},), got shape {tuple(angles.shape)}")
    u, v = (axis + 1) % 3, (axis + 2) % 3
    cos, sin = torch.cos(angles).to(points.dtype), torch.sin(angles).to(points.dtype)
    rot = torch.eye(3, dtype=points.dtype, device=points.device).repeat(points.shape[0], 1, 1)
    rot[:, u, u], rot[:, u, v] = cos, -sin
    rot[:, v, u], rot[:, v, v] = sin, cos
    return points @ rot.transpose(1, 2)


def make_view(
    points: torch.Tensor, cfg: ConCluConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One random view of every cloud (section 3.1 "Data augmentation"; spec section 4.3, A12).

    In order: :func:`half_space_crop` keeping ``cfg.crop_ratio``; :func:`resample_points` to
    ``cfg.view_points`` (``cfg.view_sampling``); rotation about ``cfg.up_axis`` by an angle
    ``U[-cfg.rotation_deg, cfg.rotation_deg]`` degrees per cloud; per-point, per-axis jitter
    ``clip(N(0, jitter_sigma^2), -jitter_clip, jitter_clip)``; if ``cfg.renormalize``, subtraction of the
    centroid and division by the largest point norm (the view then lies in the unit ball). Batched torch ops
    on ``points.device``, no gradient needed.

    Args:
        points: ``(B, N, 3)`` floating point.
        cfg: the method config (its augmentation fields).
        generator: random stream on ``points.device`` (``None``: torch's global one).

    Returns:
        ``(B, cfg.view_points, 3)`` in the dtype of ``points``.

    Raises:
        ValueError: ``points`` not ``(B, N, 3)`` floating point.
    """
    _check_points(points)
    b = points.shape[0]
    view = half_space_crop(points, cfg.crop_ratio, generator)
    view = resample_points(view, cfg.view_points, cfg.view_sampling, generator)
    if cfg.rotation_deg > 0:
        u = torch.rand(b, generator=generator, device=points.device, dtype=points.dtype)
        angles = (2.0 * u - 1.0) * math.radians(cfg.rotation_deg)
        view = rotate_about_axis(view, angles, cfg.up_axis)
    if cfg.jitter_sigma > 0 and cfg.jitter_clip > 0:
        noise = torch.randn(view.shape, generator=generator, device=view.device, dtype=view.dtype)
        view = view + (cfg.jitter_sigma * noise).clamp(-cfg.jitter_clip, cfg.jitter_clip)
    if cfg.renormalize:
        view = view - view.mean(dim=1, keepdim=True)
        radius = view.norm(dim=-1).amax(dim=1).clamp_min(torch.finfo(view.dtype).tiny)
        view = view / radius[:, None, None]
    return view


# --------------------------------------------------------------------------------------------------
# Contrasting module (Eqs. 2-4)
# --------------------------------------------------------------------------------------------------


def _check_pair(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must both be (B, d), got {tuple(a.shape)} and {tuple(b.shape)}")


def negative_cosine_distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Eq. 2: ``D(p, z) = || p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)`` per row, in ``[0, 4]``.

    No stop-gradient here (Eq. 3 is applied by :func:`contrasting_loss`).

    Args:
        p, z: ``(B, d)``.

    Returns:
        ``(B,)``.

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    _check_pair("p", p, "z", z)
    return 2.0 - 2.0 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)


def contrasting_loss(qa: torch.Tensor, qb: torch.Tensor, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """Symmetrised contrasting loss, Eq. 4 with the stop-gradient of Eq. 3, averaged over the batch (A11).

    ``L_con = (1/B) sum_i [ D(q_i^a, sg z_i^b) + D(q_i^b, sg z_i^a) ]``, range ``[0, 8]``; no 0.5 factor. The
    targets ``za``, ``zb`` are detached: gradients flow only through ``qa`` and ``qb``.

    Args:
        qa, qb: ``(B, d)`` predictions of views a and b; za, zb: ``(B, d)`` projections.

    Returns:
        Scalar.

    Raises:
        ValueError: shapes differ or are not 2-D.
    """
    _check_pair("qa", qa, "zb", zb)
    _check_pair("qb", qb, "za", za)
    return (negative_cosine_distance(qa, zb.detach()) + negative_cosine_distance(qb, za.detach())).mean()


# --------------------------------------------------------------------------------------------------
# Clustering module (Eqs. 5-9)
# --------------------------------------------------------------------------------------------------


def _check_features_prototypes(x: torch.Tensor, prototypes: torch.Tensor) -> None:
    if x.dim() != 2 or prototypes.dim() != 2 or x.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"features must be (B, d) and prototypes (J, d), got {tuple(x.shape)} and {tuple(prototypes.shape)}"
        )


def soft_assignments(q: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log of the soft cluster assignments of Eq. 5.

    ``gamma_ij = exp(cos(c_j, q_i) / tau) / sum_l exp(cos(c_l, q_i) / tau)``, returned as ``log gamma``
    (a log-softmax, stable for small ``tau``). Differentiable in ``q`` and in the prototypes.

    Args:
        q: ``(B, d)`` predictions.
        prototypes: ``(J, d)`` prototypes ``c_j`` (rows; normalised here).
        temperature: tau > 0 (paper: 0.01).

    Returns:
        ``(B, J)`` log-probabilities; ``exp`` of each row sums to 1.

    Raises:
        ValueError: shapes do not match or ``temperature <= 0``.
    """
    _check_features_prototypes(q, prototypes)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    cos = F.normalize(q, dim=1) @ F.normalize(prototypes, dim=1).t()
    return F.log_softmax(cos / temperature, dim=1)


@torch.no_grad()
def column_marginal_error(codes: torch.Tensor) -> torch.Tensor:
    """How far codes are from Eq. 7's equipartition: ``max_j |sum_i S_ij J / B - 1|`` for ``(B, J)`` codes whose
    rows sum to 1 (each column should sum to ``B / J``); 0 is exact, 0.1 a column 10 % off. A scalar tensor."""
    b, j = codes.shape
    return (codes.sum(dim=0) * (j / b) - 1.0).abs().max()


def sinkhorn_codes(
    z: torch.Tensor, prototypes: torch.Tensor, epsilon: float = 0.05, iterations: int = 10, tolerance: float = 0.0
) -> torch.Tensor:
    """Codes ``S`` of the equipartition-constrained optimal transport of Eqs. 6-7 (Sinkhorn-Knopp, A7).

    Solves the entropy-regularised ``min_S <S, M> - epsilon H(S)`` over the transport polytope
    ``S 1_J = 1_B / B``, ``S^T 1_B = 1_J / J``, with the cost ``M_ij = D(c_j, z_i) = 2 - 2 cos(c_j, z_i)``
    (Eq. 6). Log-domain iterations start from ``log K = -M / epsilon``; each normalises the columns to ``1/J``
    and then the rows to ``1/B``, so the row marginal holds exactly after any number of iterations and the
    column marginal converges: the iterations stop once :func:`column_marginal_error` is at most
    ``tolerance`` (checked after each; 0: all ``iterations`` run). The result is multiplied by ``B``: each row is
    then a distribution over the ``J`` prototypes (a soft pseudo-label) and each column sums to ``B / J``.

    Runs under ``torch.no_grad`` on detached inputs (the codes are constants, sg of Eq. 6); half-precision
    inputs are computed in float32.

    Args:
        z: ``(B, d)`` features (the projections ``z``; A8).
        prototypes: ``(J, d)``.
        epsilon: entropic weight > 0, on the scale of ``M`` (0.05 here equals SwAV's 0.025 on cosines).
        iterations: the most Sinkhorn iterations, ``>= 1``.
        tolerance: the column-marginal error (a fraction of ``B / J``) at which to stop, ``>= 0``.

    Returns:
        ``(B, J)`` codes without gradient; rows sum to 1.

    Raises:
        ValueError: shapes do not match, ``epsilon <= 0``, ``iterations < 1`` or ``tolerance < 0``.
    """
    _check_features_prototypes(z, prototypes)
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    dtype = torch.promote_types(z.dtype, torch.float32)
    z, c = z.detach().to(dtype), prototypes.detach().to(dtype)
    b, j = z.shape[0], c.shape[0]
    cost = 2.0 - 2.0 * (F.normalize(z, dim=1) @ F.normalize(c, dim=1).t())     # (B, J) M_ij
    log_s = -cost / epsilon
    log_b, log_j = math.log(b), math.log(j)
    for _ in range(iterations):
        log_s = log_s - torch.logsumexp(log_s, dim=0, keepdim=True) - log_j    # columns sum to 1/J
        log_s = log_s - torch.logsumexp(log_s, dim=1, keepdim=True) - log_b    # rows sum to 1/B
        if tolerance > 0 and column_marginal_error(torch.exp(log_s + log_b)) <= tolerance:
            break
    return torch.exp(log_s + log_b)


def swapped_prediction_loss(
    log_gamma_a: torch.Tensor,
    log_gamma_b: torch.Tensor,
    codes_a: torch.Tensor,
    codes_b: torch.Tensor,
    swap: bool = True,
) -> torch.Tensor:
    """Clustering cross-entropy of Eq. 9 (without ``L_orth``), minus sign restored (A5).

    ``swap=True`` (cross-view, section 2.1; A6)::

        L_swap = -(1/B) sum_i sum_j [ s_ij^(a) log gamma_ij^b + s_ij^(b) log gamma_ij^a ]

    where ``s^(k)`` is the code computed from view ``k``. ``swap=False`` pairs each code with the assignment
    of its own view (the literal indices of Eqs. 6 and 9). The codes are treated as constants (detached).

    Args:
        log_gamma_a, log_gamma_b: ``(B, J)`` log assignments of views a, b (:func:`soft_assignments`).
        codes_a, codes_b: ``(B, J)`` codes from views a, b (:func:`sinkhorn_codes`, rows summing to 1).
        swap: cross-view (True) or same-view (False).

    Returns:
        Scalar.

    Raises:
        ValueError: the four shapes differ or are not 2-D.
    """
    shape = log_gamma_a.shape
    if len(shape) != 2 or any(t.shape != shape for t in (log_gamma_b, codes_a, codes_b)):
        raise ValueError(
            "log_gamma_a, log_gamma_b, codes_a, codes_b must all be (B, J), got "
            f"{[tuple(t.shape) for t in (log_gamma_a, log_gamma_b, codes_a, codes_b)]}"
        )
    codes_a, codes_b = codes_a.detach(), codes_b.detach()
    if swap:
        total = codes_a * log_gamma_b + codes_b * log_gamma_a
    else:
        total = codes_a * log_gamma_a + codes_b * log_gamma_b
    return -total.sum(dim=1).mean()


def orthogonality_loss(prototypes: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Orthogonality regulariser of Eq. 8: ``|| Gamma^T Gamma - I ||_1`` (entry-wise L1, A10).

    ``Gamma = [c_1/|c_1|, ..., c_J/|c_J|]``, so ``(Gamma^T Gamma)_jl = cos(c_j, c_l)`` and the diagonal
    terms vanish: ``sum_{j != l} |cos(c_j, c_l)|``. ``reduction='mean'`` divides by ``J^2`` (A4).

    Args:
        prototypes: ``(J, d)`` prototypes (rows).
        reduction: ``sum`` (paper) or ``mean``.

    Returns:
        Scalar, differentiable in the prototypes.

    Raises:
        ValueError: ``prototypes`` not 2-D or unknown ``reduction``.
    """
    if prototypes.dim() != 2:
        raise ValueError(f"prototypes must be (J, d), got shape {tuple(prototypes.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    gamma = F.normalize(prototypes, dim=1)
    gram = gamma @ gamma.t()
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    dev = (gram - eye).abs()
    return dev.sum() if reduction == "sum" else dev.mean()


# --------------------------------------------------------------------------------------------------
# Total loss (Eq. 10)
# --------------------------------------------------------------------------------------------------


def conclu_loss(
    qa: torch.Tensor,
    qb: torch.Tensor,
    za: torch.Tensor,
    zb: torch.Tensor,
    prototypes: torch.Tensor,
    cfg: ConCluConfig,
    gather: bool = False,
) -> dict[str, torch.Tensor]:
    """ConClu's loss, Eq. 10 with exposed weights (A4).

    ``L_total = lambda_con * L_con + lambda_clu * L_swap + lambda_orth * L_orth`` with ``L_con`` from
    :func:`contrasting_loss` (Eq. 4), ``L_swap`` from :func:`swapped_prediction_loss` (Eq. 9) on the
    assignments :func:`soft_assignments` of ``qa``, ``qb`` (Eq. 5) and the codes :func:`sinkhorn_codes` of
    ``sg za``, ``sg zb`` (Eqs. 6-7; of ``qa``, ``qb`` when ``cfg.code_feature == 'q'``), and ``L_orth`` from
    :func:`orthogonality_loss` (Eq. 8). Computed in (at least) float32.

    Args:
        qa, qb, za, zb: ``(B, d)`` predictions and projections of views a and b.
        prototypes: ``(J, d)``.
        cfg: the method config.
        gather: compute the codes over the projections of every DDP worker (A14;
            :func:`pointtune.distributed.all_gather_rows`, no gradient: the codes are constants); each
            worker keeps the rows of its own samples. A collective then: every worker must call it.

    Returns:
        Dict of scalars: ``loss`` (differentiable), and the detached ``con``, ``swap``, ``orth``,
        ``proto_usage`` (fraction of prototypes that are the argmax of ``gamma`` for at least one sample of
        either view), ``code_entropy`` (mean entropy in nats of the code rows; ``ln J`` = uniform) and
        ``sinkhorn_marginal_err`` (:func:`column_marginal_error` of the codes of either view, the larger; over
        every worker's rows with ``gather``).

    Raises:
        ValueError: inconsistent shapes (from the component functions).
    """
    dtype = torch.promote_types(qa.dtype, torch.float32)
    qa, qb, za, zb = (t.to(dtype) for t in (qa, qb, za, zb))
    protos = prototypes.to(dtype)
    con = contrasting_loss(qa, qb, za, zb)
    log_ga = soft_assignments(qa, protos, cfg.temperature)
    log_gb = soft_assignments(qb, protos, cfg.temperature)
    with torch.no_grad():
        src_a, src_b = (za, zb) if cfg.code_feature == "z" else (qa, qb)
        both = torch.stack([src_a.detach(), src_b.detach()], dim=1)          # (B, 2, d): one gather
        offset = 0
        if gather:
            both, offset = all_gather_rows(both)
        solve = (cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations, cfg.sinkhorn_tolerance)
        codes_a, codes_b = sinkhorn_codes(both[:, 0], protos, *solve), sinkhorn_codes(both[:, 1], protos, *solve)
        marginal_err = torch.maximum(column_marginal_error(codes_a), column_marginal_error(codes_b))
        rows = slice(offset, offset + qa.shape[0])
        codes_a, codes_b = codes_a[rows], codes_b[rows]
    swap = swapped_prediction_loss(log_ga, log_gb, codes_a, codes_b, cfg.swap)
    orth = orthogonality_loss(protos, cfg.orth_reduction)
    loss = cfg.lambda_con * con + cfg.lambda_clu * swap + cfg.lambda_orth * orth
    with torch.no_grad():
        winners = torch.cat([log_ga, log_gb]).argmax(dim=1)
        used = torch.zeros(protos.shape[0], dtype=dtype, device=protos.device).index_fill_(0, winners, 1.0)
        codes = torch.cat([codes_a, codes_b])
        code_entropy = -torch.special.xlogy(codes, codes).sum(dim=1).mean()
    return {"loss": loss, "con": con.detach(), "swap": swap.detach(), "orth": orth.detach(),
            "proto_usage": used.mean(), "code_entropy": code_entropy, "sinkhorn_marginal_err": marginal_err}


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


@register_method("conclu")
class ConClu(Method):
    """ConClu on a registry backbone: encoder ``f`` + max pooling, projector ``g``, predictor ``q`` and ``J``
    prototypes (section 3.2).

    * ``backbone``: ``build_backbone(cfg.backbone)``, global feature ``(B, D)``.
    * ``projector`` (g): ``Linear(D, h) - BN - LReLU - Linear(h, h) - BN - LReLU - Linear(h, p) - BN``.
    * ``predictor`` (q): ``Linear(p, h') - BN - LReLU - Linear(h', p)``.
    * ``prototypes``: ``nn.Parameter(J, p)``, ``N(0, 1)`` initialisation (A9).

    Labels are never used. :meth:`embed` is the encoder's global feature (spec 4.5 (a)). ``forward``
    returns the loss terms and the diagnostics ``proto_usage``, ``code_entropy`` and ``sinkhorn_marginal_err``
    (:func:`conclu_loss`).

    Data parallelism (:meth:`ddp_options`): every parameter, the prototypes included, gets a gradient at
    every step (no term starts late; a loss weight of 0 multiplies a term that stays in the graph, giving
    zero gradients, not missing ones), so ``find_unused_parameters=False``; the prototypes are a parameter,
    kept identical by DDP's gradient averaging. The only buffers are BatchNorm running statistics. DDP's
    default broadcast copies rank 0's at the start of each forward, so after the last step of an epoch
    every worker still holds its own batch's update and the sharded evaluation would merge slightly
    different models; instead ``forward_sync_buffers=False`` and :meth:`after_step` averages them over the
    workers after every step (:func:`pointtune.distributed.average_batchnorm_stats`), so every worker
    evaluates the same model. Each worker draws its views from its own stream (the seed is offset by the
    rank), and with ``sinkhorn_global`` the Sinkhorn codes are computed over the projections of every
    worker's batch (A14, the equipartition over the global batch).
    """

    task = Task.PRETRAIN
    Config = ConCluConfig
    # The paper's optimisation (section 3.1): AdamW, lr 1e-3 multiplied by 0.7 every 20 of its 200 epochs, kept
    # as that fraction of the run (0.1) so that a shorter run decays as often (A2; weight decay 1e-4 from the
    # authors' code, A3), 2048 points per cloud (section 3.2), and no augmentation in the
    # data pipeline: the views are made by the method. The batch size (A1) and the 200 epochs are left to the
    # run (`--set train.batch_size=128 --epochs 200`).
    recipe = {
        "optim": {"name": "adamw", "weight_decay": 1e-4,
                  "lr": {"start": 1e-3, "shape": "step", "step_epochs": 20 / 200, "gamma": 0.7, "unit": "fraction"}},
        "data": {"num_points": 2048,
                 "augment": NO_AUGMENTATION},
    }

    def __init__(self, cfg: ConCluConfig, num_classes: int = 0, total_epochs: int = 1):
        super().__init__(cfg, num_classes, total_epochs)
        from pointtune.backbones import build_backbone

        self.backbone = build_backbone(cfg.backbone.name, **cfg.backbone.kwargs())
        dim, hid, out = int(self.backbone.out_dim), cfg.projector_hidden, cfg.projection_dim
        slope = cfg.leaky_slope
        self.projector = nn.Sequential(
            nn.Linear(dim, hid, bias=False), nn.BatchNorm1d(hid), nn.LeakyReLU(slope),
            nn.Linear(hid, hid, bias=False), nn.BatchNorm1d(hid), nn.LeakyReLU(slope),
            nn.Linear(hid, out, bias=False), nn.BatchNorm1d(out),
        )  # fmt: skip
        self.predictor = nn.Sequential(
            nn.Linear(out, cfg.predictor_hidden, bias=False), nn.BatchNorm1d(cfg.predictor_hidden),
            nn.LeakyReLU(slope), nn.Linear(cfg.predictor_hidden, out),
        )  # fmt: skip
        self.prototypes = nn.Parameter(torch.randn(cfg.num_prototypes, out))

    def forward_views(
        self, view_a: torch.Tensor, view_b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projections and predictions of two batches of views (Eq. 1) in ONE encoder forward.

        The views are concatenated along the batch (one forward per step, as DDP expects; BatchNorm sees both
        views), then split back.

        Args:
            view_a, view_b: ``(B, N', 3)`` each.

        Returns:
            ``(za, zb, qa, qb)``, each ``(B, projection_dim)``, with ``q = predictor(z)``.

        Raises:
            ValueError: the two views have different shapes.
        """
        if view_a.shape != view_b.shape:
            raise ValueError(f"views must have the same shape, got {tuple(view_a.shape)} and {tuple(view_b.shape)}")
        b = view_a.shape[0]
        z = self.projector(self.backbone(torch.cat([view_a, view_b], dim=0)))   # (2B, p)
        q = self.predictor(z)
        return z[:b], z[b:], q[:b], q[b:]

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        """Losses of one mini-batch; see :func:`conclu_loss`. Uses ``batch["points"]`` ``(B, N, 3)`` only.

        Two views per cloud come from :func:`make_view` with a ``torch.Generator`` on the points' device,
        seeded from torch's global (CPU) RNG (offset by the DDP rank), so a run is reproducible under
        ``torch.manual_seed``. The views and the loss are computed in float32 with autocast off; under DDP the
        Sinkhorn codes are computed over the projections of every worker when ``cfg.sinkhorn_global``
        (training mode only).
        """
        points = batch["points"]
        cfg: ConCluConfig = self.cfg
        seed = int(torch.randint(0, 2**62, (1,)).item())
        seed = (seed + 1_000_003 * rank()) % 2**62                 # workers seeded alike draw different views
        gen = torch.Generator(device=points.device)
        gen.manual_seed(seed)
        with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
            view_a = make_view(points, cfg, gen)
            view_b = make_view(points, cfg, gen)
        za, zb, qa, qb = self.forward_views(view_a, view_b)
        with torch.autocast(device_type=points.device.type, enabled=False):
            return conclu_loss(qa, qb, za, zb, self.prototypes, cfg, gather=cfg.sinkhorn_global and self.training)

    def after_step(self, step: int, total_steps: int) -> None:
        """Average the BatchNorm running statistics over the data-parallel workers (see the class
        docstring); a no-op in a single process."""
        average_batchnorm_stats(self)

    def ddp_options(self) -> dict[str, bool]:
        """``find_unused_parameters=False`` (every parameter is used at every step) and
        ``forward_sync_buffers=False`` (:meth:`after_step` keeps the BatchNorm statistics identical)."""
        return {"find_unused_parameters": False, "forward_sync_buffers": False}

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder global features ``(B, D)`` of ``batch["points"]`` ``(B, N, 3)``, no augmentation (spec 4.5
        (a)); the caller puts the module in eval mode."""
        return self.backbone(batch["points"])

    def encoder(self) -> nn.Module:
        """The backbone ``f`` (with its max pooling)."""
        return self.backbone
