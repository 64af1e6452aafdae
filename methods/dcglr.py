"""DCGLR: self-supervised point-cloud pre-training by self-distillation of global and local crops.

Paper: K. Fu, P. Gao, R. Zhang, H. Li, Y. Qiao, M. Wang, *"Distillation with Contrast is All You Need for
Self-Supervised Point Cloud Representation Learning"* (DCGLR: Distillation and Contrast to extract Global and
Local Representation). Spec: ``shared/specs/dcglr.md``.

Each cloud ``P`` (N x 3) gets I global crops of ratio ``r ~ U(r_g1, r_g2)`` (Eq. 4), J local crops of ratio
``r ~ U(r_l1, r_l2)`` (Eq. 5) and ``n_multires`` farthest-point-sampled views of ``multires_fraction N`` points
added to the local set (Sec. 4.1), made inside the method on the training device by
:func:`pointtune.views.multi_crop`. A student and a teacher of the same architecture (backbone ``f`` +
projector to ``K`` dims) encode them: the teacher only the global crops (Eq. 6), the student every view
(Eq. 7). The teacher outputs are centred (Eq. 8) and sharpened, ``p_t = softmax((o_t - c) / tau_t)``; the
student's are ``softmax(o_s / tau_s)``; with ``H(a, b) = -sum_k a_k log b_k`` averaged over the batch::

    loss_g = 1/(I(I-1)) sum_i sum_{j != i} H(p_t^i, p_sg^j)                            (Eq. 10)
    loss_l = 1/(I L)    sum_i sum_{j=1..L} H(p_t^i, p_sl^j),   L = J + n_multires        (Eq. 11)
    loss   = w_global loss_g + w_local loss_l                                           (Eq. 12)

(:func:`dcglr_loss`). Only the student gets gradients. After the loss the centre moves,
``c <- q c + (1 - q) mean(o_t)`` (Eq. 9, :func:`update_center`), and after every optimizer step the teacher
follows the student, ``theta_t <- lambda theta_t + (1 - lambda) theta_s`` (Eq. 13, :func:`ema_update`). There
is no negative-pair term: the "contrast" of the paper is this momentum teacher (spec A19). Downstream features
are the teacher backbone's (A16).

Readings taken (ids of ``shared/specs/dcglr.md`` section 6.2):

* A1: ``crop(P, r)`` keeps a fraction ``r`` of the points: a random seed point and its ``round(r N)``
  nearest neighbours (``crop_mode='knn'``, default). ``crop_mode='box'`` is the STRL-style cuboid centred at a
  random point with side ``r`` times the bounding-box extent on each axis; its member count varies per cloud,
  so its points are resampled to the view's count (a random subset, or random repeats when the box holds fewer;
  :mod:`pointtune.views`).
* A2: the local set is the J crops plus the ``n_multires`` FPS views; Eq. 11 divides by ``I (J + n_multires)``.
  The FPS views start from a random point (the cloud is permuted first) and keep ``round(multires_fraction N)``
  points in both points modes.
* A3: ``view_points_mode='shared_ratio'`` (default): one ratio per view index per mini-batch, shared by every
  cloud, so each view has ``round(r N)`` points and the 3D-ViT's patch count follows it. ``'fixed'``: one ratio
  per cloud and view, every crop resampled to ``global_points`` / ``local_points`` (with repeats if needed),
  for backbones that need a fixed size (PCT does not: its default centre counts are N/4 and N/8, spec 2.9).
  Views whose sizes are equal by construction (fixed-size views, the multi-resolution views) go through the
  encoder as one batch; the grouping depends on the config alone (:func:`pointtune.views.view_groups`), so
  every data-parallel worker makes the same encoder calls.
* A4: crops keep their coordinates; ``renormalize_crops`` re-centres and rescales each view into the unit sphere.
* A5: no other augmentation, neither in the method nor in the :attr:`DCGLR.recipe` data pipeline.
* A6: ``student_temperature`` tau_s = 0.1 (DINO).
* A7: ``teacher_temperature`` is a :class:`~pointtune.schedules.Schedule`: constant 0.04 by default; DINO's
  warm-up is ``{start: 0.07, warmup_start: 0.04, warmup_epochs: 30}``. Evaluated at the step's fractional epoch.
* A8: ``center_momentum`` q = 0.9; the mean runs over all ``B I`` teacher outputs of the step, summed and counted
  over every data-parallel worker (one all-reduce), so the centre is identical on every worker; updated after
  the loss, under no_grad, in training mode only; initialised to 0.
* A9: Eq. 10's "j = q & j != i" is read j = 1..I, j != i.
* A10: ``teacher_momentum`` lambda is a Schedule, per-iteration cosine 0.996 -> 1 by default, evaluated in
  :meth:`DCGLR.after_step` at ``epoch = step / total_steps * total_epochs`` (so the last step uses the end
  value). The EMA covers the backbone and the projector; parameters the student does not train (the fixed
  weight-norm gain) are copied. BatchNorm: the teacher runs in training mode (batch statistics, as DINO).
  ``teacher_bn='own'`` (default): the teacher's running statistics track its own batches, and after every step
  they are averaged over the workers like the student's; ``'ema'``: the teacher forward leaves them alone and
  after every step they are the EMA (same lambda) of the student's averaged statistics. Either way every worker
  holds the same teacher. The teacher has no dropout / stochastic depth (DINO's teacher has drop_path 0): those
  layers are switched to eval mode for its forward.
* A11: ``teacher_init='copy'`` (default): the teacher starts as an exact copy of the randomly initialised
  student; ``'independent'``: its own random initialisation (the paper's literal "randomly initialize").
* A12, A17, A18: protocol matters, not method fields (the linear-SVM protocol uses :meth:`DCGLR.embed`).
* A13: the projector is DINO's head (spec 2.3): ``Linear(F, 2048) - GELU - Linear(2048, 2048) - GELU -
  Linear(2048, 256)``, L2 normalisation, weight-normalised ``Linear(256, K, bias=False)`` with the gain fixed to
  1 (``norm_last_layer``); ``proj_hidden``, ``proj_bottleneck``, ``proj_layers`` configurable; ``head='mlp2'``:
  ``Linear(F, 512) - BN - ReLU - Linear(512, K)``. The optimisation is the recipe below (AdamW, a warm-up of
  a twentieth of the run (10 of 200 epochs), cosine lr and weight decay, grad clip 3). ``freeze_last_layer`` (DINO, default 0 epochs) keeps the
  last projector layer fixed for the first epochs.
* A14, A15: the 3D-ViT backbone (``vit3d``, :mod:`pointtune.backbones.vit`) resolves them; its [CLS] feature
  after the final LayerNorm is the backbone feature.
* A16: :meth:`DCGLR.embed` and :meth:`DCGLR.encoder` use the teacher backbone (``features='student'``: the
  student's), without projector.
* A19: no InfoNCE term.
* A20: ``loss_avg='paper'`` (default) is Eqs. 10-12 literally (each global-global pair weighs ``L`` times a
  local-global pair); ``'dino'`` is DINO's single mean over all ``I(I-1) + I L`` pairs (the weights then scale
  each pair's term: ``(w_global sum_gg H + w_local sum_lg H) / (I(I-1) + I L)``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from pointtune.distributed import all_reduce_sum, average_batchnorm_stats, rank
from pointtune.data.config import NO_AUGMENTATION
from pointtune.method import (
    BackboneConfig, Method, MethodConfig, Task, interpolate_point_features, point_inputs, register_method,
)
from pointtune.schedules import Schedule, bounded
from pointtune.views import MultiCropSpec, multi_crop, view_groups

__all__ = [
    "DCGLRConfig",
    "DCGLR",
    "DINOHead",
    "MLP2Head",
    "teacher_probs",
    "cross_entropy",
    "dcglr_loss",
    "update_center",
    "ema_update",
]


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class DCGLRConfig(MethodConfig):
    """Hyperparameters of DCGLR, named after the paper's symbols (spec section 3); see the module docstring
    for the readings (A1-A20) behind each."""

    name: Literal["dcglr"] = Field("dcglr", description="method name")
    backbone: BackboneConfig = Field(
        BackboneConfig(name="vit3d"),
        description="student / teacher backbone f (registry name and its arguments; paper: vit3d, dgcnn, pct)")
    # views (Eqs. 4-5, Sec. 4.1)
    n_global_crops: int = Field(2, ge=2, description="I, global crops (Eq. 4; Eq. 10 needs I >= 2)")
    global_ratio_low: float = Field(0.7, gt=0, le=1, description="r_g1, lowest global crop ratio (Eq. 4)")
    global_ratio_high: float = Field(1.0, gt=0, le=1, description="r_g2, highest global crop ratio (Eq. 4)")
    n_local_crops: int = Field(8, ge=0, description="J, local crops (Eq. 5)")
    local_ratio_low: float = Field(0.2, gt=0, le=1, description="r_l1, lowest local crop ratio (Eq. 5)")
    local_ratio_high: float = Field(0.5, gt=0, le=1, description="r_l2, highest local crop ratio (Eq. 5)")
    n_multires: int = Field(2, ge=0, description="FPS multi-resolution views added to the local set (Sec. 4.1, A2)")
    multires_fraction: float = Field(
        0.5, gt=0, le=1, description="fraction of the points kept by each multi-resolution view (paper: 1/2)")
    crop_mode: Literal["knn", "box"] = Field(
        "knn",
        description="knn: seed point + its round(rN) nearest neighbours | box: STRL cuboid of side r x extent (A1)")
    view_points_mode: Literal["shared_ratio", "fixed"] = Field(
        "shared_ratio",
        description="shared_ratio: one ratio per view per batch, round(rN) points | fixed: global/local_points (A3)")
    global_points: int = Field(1024, ge=1, description="points per global view in view_points_mode=fixed")
    local_points: int = Field(256, ge=1, description="points per local crop in view_points_mode=fixed")
    renormalize_crops: bool = Field(False, description="re-centre and rescale every view into the unit sphere (A4)")
    # projector (Eqs. 6-7, A13)
    head: Literal["dino", "mlp2"] = Field(
        "dino",
        description="projector: dino (MLP, L2 norm, weight-normalised last layer) | mlp2 (Linear-BN-ReLU-Linear)")
    out_dim: int = Field(512, ge=1, description="K, projector output dimension (paper: 512)")
    proj_hidden: int | None = Field(
        None, ge=1, description="projector hidden width; null: 2048 for the dino head, 512 for mlp2")
    proj_bottleneck: int = Field(256, ge=1, description="dino head: width before the weight-normalised last layer")
    proj_layers: int = Field(3, ge=1, description="dino head: Linear layers before the L2 normalisation")
    freeze_last_layer: int = Field(
        0, ge=0, description="epochs during which the last projector layer gets no update (DINO: 1)")
    # centring and sharpening (Eqs. 8-9)
    teacher_temperature: Annotated[Schedule, bounded(gt=0)] = Field(
        Schedule(start=0.04),
        description="tau_t, teacher sharpening temperature (paper 0.04; warm-up: warmup_start, warmup_epochs)")
    student_temperature: float = Field(0.1, gt=0, description="tau_s, student softmax temperature (A6: DINO 0.1)")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="q, centre EMA rate of Eq. 9 (A8: DINO 0.9)")
    # teacher (Eq. 13)
    teacher_momentum: Annotated[Schedule, bounded(ge=0, le=1)] = Field(
        Schedule(start=0.996, end=1.0, shape="cosine"),
        description="lambda, teacher EMA momentum per step (paper: 0.996 rising to 1; A10: cosine)")
    teacher_init: Literal["copy", "independent"] = Field(
        "copy", description="teacher at step 0: copy of the student | its own random initialisation (A11)")
    teacher_bn: Literal["own", "ema"] = Field(
        "own",
        description="teacher BatchNorm running stats: own batches, averaged over workers | EMA of the student's (A10)")
    # loss (Eqs. 10-12)
    w_global: float = Field(1.0, ge=0, description="omega_g, weight of loss_g (Eq. 12)")
    w_local: float = Field(1.0, ge=0, description="omega_l, weight of loss_l (Eq. 12)")
    loss_avg: Literal["paper", "dino"] = Field(
        "paper", description="paper: Eqs. 10-12 (separate means) | dino: one mean over all pairs (A20)")
    features: Literal["teacher", "student"] = Field(
        "teacher", description="backbone used by embed / encoder downstream (A16: the teacher)")

    @model_validator(mode="after")
    def _consistent(self) -> "DCGLRConfig":
        for kind in ("global", "local"):
            low, high = getattr(self, f"{kind}_ratio_low"), getattr(self, f"{kind}_ratio_high")
            if low > high:
                raise ValueError(f"{kind}_ratio_low ({low}) must be <= {kind}_ratio_high ({high})")
        tau = self.teacher_temperature
        if tau.warmup_epochs > 0 and not tau.warmup_start > 0:
            raise ValueError(f"teacher_temperature.warmup_start must be > 0 with a warm-up (got {tau.warmup_start})")
        lam = self.teacher_momentum
        if lam.warmup_epochs > 0 and not 0 <= lam.warmup_start <= 1:
            raise ValueError(f"teacher_momentum.warmup_start must lie in [0, 1] (got {lam.warmup_start})")
        if self.backbone.name == "dgcnn" and self.view_points_mode == "fixed":
            k = self.backbone.kwargs().get("k", 20)
            smallest = min(self.global_points, self.local_points)
            if isinstance(k, int) and k > smallest:
                raise ValueError(f"global_points / local_points ({smallest}) must be >= the DGCNN neighbourhood "
                                 f"size backbone.k ({k})")
        return self

    def view_spec(self) -> MultiCropSpec:
        """The :class:`pointtune.views.MultiCropSpec` of these views."""
        return MultiCropSpec(
            n_global=self.n_global_crops, global_ratio=(self.global_ratio_low, self.global_ratio_high),
            n_local=self.n_local_crops, local_ratio=(self.local_ratio_low, self.local_ratio_high),
            n_multires=self.n_multires, multires_fraction=self.multires_fraction, crop_mode=self.crop_mode,
            view_points_mode=self.view_points_mode, global_points=self.global_points,
            local_points=self.local_points, renormalize=self.renormalize_crops,
        )


# --------------------------------------------------------------------------------------------------
# Projectors (Eqs. 6-7, A13)
# --------------------------------------------------------------------------------------------------


class DINOHead(nn.Module):
    """DINO's projection head (spec 2.3 [REC]): ``forward(x (B, F)) -> (B, K)``.

    ``proj_layers`` Linear layers ``F -> hidden -> ... -> hidden -> bottleneck`` with GELU between them (one
    layer: ``Linear(F, bottleneck)``), L2 normalisation, then ``Linear(bottleneck, K, bias=False)``
    weight-normalised (:func:`torch.nn.utils.parametrizations.weight_norm`, one gain per output unit) with the
    gain fixed to 1 and not trained (DINO ``norm_last_layer``), so every output is the cosine between the
    normalised bottleneck feature and a unit row. The MLP's Linear weights are initialised truncated normal
    (std 0.02) with zero biases, the last layer as PyTorch's default, as DINO does.

    Args:
        in_dim: backbone feature width F.
        out_dim: K.
        hidden: hidden width (DINO 2048).
        bottleneck: width before the last layer (DINO 256).
        layers: Linear layers before the normalisation, ``>= 1`` (DINO 3).

    Raises:
        ValueError: a width or ``layers`` below 1.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 2048, bottleneck: int = 256, layers: int = 3):
        super().__init__()
        if min(in_dim, out_dim, hidden, bottleneck, layers) < 1:
            raise ValueError(f"DINOHead: widths and layers must be >= 1, got in_dim={in_dim}, out_dim={out_dim}, "
                             f"hidden={hidden}, bottleneck={bottleneck}, layers={layers}")
        widths = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            mods.append(nn.Linear(a, b))
            if i < layers - 1:
                mods.append(nn.GELU())
        self.mlp = nn.Sequential(*mods)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(False)

    def forward(self, x: torch.Tensor, freeze_last: bool = False) -> torch.Tensor:
        """``(B, F) -> (B, K)``; ``freeze_last``: the last layer's weight is used detached (no gradient)."""
        x = F.normalize(self.mlp(x), dim=-1)
        if freeze_last:
            return F.linear(x, self.last_layer.weight.detach())
        return self.last_layer(x)


class MLP2Head(nn.Module):
    """Two-layer projector (spec 2.3 alternative): ``Linear(F, hidden) - BatchNorm1d - ReLU - Linear(hidden,
    K)``; ``forward(x (B, F)) -> (B, K)`` (``B > 1`` in training mode, for the BatchNorm).

    Raises:
        ValueError: a width below 1.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512):
        super().__init__()
        if min(in_dim, out_dim, hidden) < 1:
            raise ValueError(f"MLP2Head: widths must be >= 1, got {in_dim}, {hidden}, {out_dim}")
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
        self.last_layer = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor, freeze_last: bool = False) -> torch.Tensor:
        """``(B, F) -> (B, K)``; ``freeze_last``: the last layer's weight and bias are used detached."""
        x = self.mlp(x)
        if freeze_last:
            return F.linear(x, self.last_layer.weight.detach(), self.last_layer.bias.detach())
        return self.last_layer(x)


class _Branch(nn.Module):
    """Backbone + projector of one branch (student or teacher): ``forward(points (B, N, 3), features) ->
    (B, K)``."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, points: torch.Tensor, features: torch.Tensor | None = None,
                freeze_last: bool = False) -> torch.Tensor:
        return self.head(self.backbone(points, features), freeze_last)


# --------------------------------------------------------------------------------------------------
# Centring, sharpening and the loss (Eqs. 8-12)
# --------------------------------------------------------------------------------------------------


def _check_outputs(name: str, outputs: Sequence[torch.Tensor], shape: tuple[int, ...] | None) -> tuple[int, ...]:
    for o in outputs:
        if o.dim() != 2 or (shape is not None and tuple(o.shape) != shape):
            raise ValueError(f"{name} must all be (B, K){'' if shape is None else f' = {shape}'}, got "
                             f"{[tuple(t.shape) for t in outputs]}")
        shape = tuple(o.shape)
    return shape


def teacher_probs(teacher_out: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """Centred and sharpened teacher distribution (Eq. 8 + sharpening):
    ``p_t = softmax((o_t - c) / tau_t)`` over the K dimension, detached (stop-gradient).

    Args:
        teacher_out: ``(B, K)`` teacher projector outputs ``o_tg``.
        center: ``(K,)`` centre ``c``.
        temperature: ``tau_t > 0``.

    Returns:
        ``(B, K)`` rows summing to 1, in (at least) float32, without gradient.

    Raises:
        ValueError: shapes do not match or ``temperature <= 0``.
    """
    if teacher_out.dim() != 2 or center.shape != teacher_out.shape[1:]:
        raise ValueError(f"teacher_out must be (B, K) and center (K,), got {tuple(teacher_out.shape)} and "
                         f"{tuple(center.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(teacher_out.dtype, torch.float32)
    return F.softmax((teacher_out.detach().to(dtype) - center.to(dtype)) / temperature, dim=-1)


def cross_entropy(p_teacher: torch.Tensor, student_out: torch.Tensor, temperature: float) -> torch.Tensor:
    """``H(p_t, p_s)`` of Eqs. 10-11 averaged over the batch: ``-(1/B) sum_b sum_k p_t[b,k] log p_s[b,k]`` with
    ``p_s = softmax(o_s / tau_s)``.

    Args:
        p_teacher: ``(B, K)`` teacher distribution (treated as a constant).
        student_out: ``(B, K)`` student projector outputs ``o_s``.
        temperature: ``tau_s > 0``.

    Returns:
        Scalar, differentiable in ``student_out``, in (at least) float32.

    Raises:
        ValueError: shapes differ or ``temperature <= 0``.
    """
    if p_teacher.shape != student_out.shape or student_out.dim() != 2:
        raise ValueError(f"p_teacher and student_out must both be (B, K), got {tuple(p_teacher.shape)} and "
                         f"{tuple(student_out.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(student_out.dtype, torch.float32)
    log_ps = F.log_softmax(student_out.to(dtype) / temperature, dim=-1)
    return -(p_teacher.detach().to(dtype) * log_ps).sum(dim=-1).mean()


def dcglr_loss(
    teacher_out: Sequence[torch.Tensor],
    student_global: Sequence[torch.Tensor],
    student_local: Sequence[torch.Tensor],
    center: torch.Tensor,
    teacher_temperature: float,
    student_temperature: float,
    w_global: float = 1.0,
    w_local: float = 1.0,
    loss_avg: str = "paper",
) -> dict[str, torch.Tensor]:
    """DCGLR's loss, Eqs. 8 and 10-12 (A9: ``j != i``; A2: ``L`` local views; A20: ``loss_avg``).

    With ``p_t^i = softmax((o_tg^i - c) / tau_t)`` (:func:`teacher_probs`) and ``H`` from :func:`cross_entropy`::

        loss_g = 1/(I(I-1)) sum_i sum_{j != i} H(p_t^i, o_sg^j)
        loss_l = 1/(I L)    sum_i sum_j        H(p_t^i, o_sl^j)          (0 when L = 0)
        paper:  loss = w_global loss_g + w_local loss_l
        dino:   loss = (w_global sum_gg H + w_local sum_lg H) / (I(I-1) + I L)

    Args:
        teacher_out: I tensors ``(B, K)``, the teacher's outputs for the global crops (no gradient needed).
        student_global: I tensors ``(B, K)``, the student's for the same global crops, in the same order.
        student_local: L tensors ``(B, K)`` (may be empty), the student's for the local views.
        center: ``(K,)``.
        teacher_temperature, student_temperature: ``tau_t``, ``tau_s``, both ``> 0``.
        w_global, w_local: ``omega_g``, ``omega_l``.
        loss_avg: ``paper`` or ``dino``.

    Returns:
        Dict of scalars (float32 at least): ``loss`` (differentiable); detached ``loss_g``, ``loss_l`` (Eqs. 10,
        11 in both modes), ``teacher_entropy`` (mean entropy of ``p_t`` in nats; 0 means one-hot, ``ln K``
        uniform: the two collapse modes) and ``kl`` (mean over all pairs of ``KL(p_t || p_s)``).

    Raises:
        ValueError: fewer than 2 global outputs, different counts of teacher and student global outputs,
            inconsistent shapes, a non-positive temperature or an unknown ``loss_avg``.
    """
    if loss_avg not in ("paper", "dino"):
        raise ValueError(f"loss_avg must be 'paper' or 'dino', got {loss_avg!r}")
    n_i = len(teacher_out)
    if n_i < 2 or len(student_global) != n_i:
        raise ValueError(f"need I >= 2 teacher and as many student global outputs, got {n_i} and "
                         f"{len(student_global)}")
    shape = _check_outputs("teacher_out", teacher_out, None)
    _check_outputs("student_global", student_global, shape)
    _check_outputs("student_local", student_local, shape)
    probs = [teacher_probs(t, center, teacher_temperature) for t in teacher_out]
    gg = [cross_entropy(probs[i], student_global[j], student_temperature)
          for i in range(n_i) for j in range(n_i) if j != i]
    lg = [cross_entropy(probs[i], s, student_temperature) for i in range(n_i) for s in student_local]
    sum_g = torch.stack(gg).sum()
    sum_l = torch.stack(lg).sum() if lg else sum_g.new_zeros(())
    loss_g = sum_g / len(gg)
    loss_l = sum_l / len(lg) if lg else sum_l
    if loss_avg == "paper":
        loss = w_global * loss_g + w_local * loss_l
    else:
        loss = (w_global * sum_g + w_local * sum_l) / (len(gg) + len(lg))
    with torch.no_grad():
        p = torch.stack(probs)                                            # (I, B, K)
        teacher_entropy = -torch.special.xlogy(p, p).sum(dim=-1).mean()
        kl = (sum_g + sum_l) / (len(gg) + len(lg)) - teacher_entropy      # every p_t^i is in I-1+L pairs
    return {"loss": loss, "loss_g": loss_g.detach(), "loss_l": loss_l.detach(),
            "teacher_entropy": teacher_entropy, "kl": kl.detach()}


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_out: torch.Tensor, momentum: float) -> torch.Tensor:
    """Centre EMA of Eq. 9: ``c <- q c + (1 - q) mean(o_t)``, the mean over every row of ``teacher_out`` on every
    data-parallel worker (one all-reduce of the sum and the count, so workers with different batch sizes
    weigh their rows alike and every worker gets the same centre; A8).

    Args:
        center: ``(K,)`` current centre.
        teacher_out: ``(M, K)`` teacher outputs of this step (all I global crops stacked: ``M = B I``).
        momentum: ``q`` in ``[0, 1)``.

    Returns:
        The new centre ``(K,)`` in the dtype of ``center`` (``center`` itself is left as it is). A collective
        under data parallelism: every worker must call it.

    Raises:
        ValueError: shapes do not match or ``momentum`` outside ``[0, 1)``.
    """
    if teacher_out.dim() != 2 or center.shape != teacher_out.shape[1:]:
        raise ValueError(f"teacher_out must be (M, K) and center (K,), got {tuple(teacher_out.shape)} and "
                         f"{tuple(center.shape)}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    dtype = torch.promote_types(center.dtype, torch.float32)
    count = teacher_out.new_full((1,), teacher_out.shape[0], dtype=dtype)
    stats = all_reduce_sum(torch.cat([teacher_out.detach().to(dtype).sum(dim=0), count]))
    mean = stats[:-1] / stats[-1]
    return (momentum * center.to(dtype) + (1.0 - momentum) * mean).to(center.dtype)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float, buffers: bool = False) -> None:
    """Teacher EMA of Eq. 13, in place: ``theta_t <- lambda theta_t + (1 - lambda) theta_s`` for every parameter
    the student trains (``requires_grad``); parameters it does not train (e.g. the fixed weight-norm gain) are
    copied. With ``buffers``, floating-point buffers (BatchNorm running statistics) get the same EMA and the
    others (``num_batches_tracked``) are copied.

    Args:
        teacher, student: modules of the same architecture (same parameter and buffer names and shapes).
        momentum: ``lambda`` in ``[0, 1]``.
        buffers: also update the buffers.

    Raises:
        ValueError: ``momentum`` outside ``[0, 1]`` or the two modules differ in structure.
    """
    if not 0 <= momentum <= 1:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    if (list(t_params) != list(s_params) or any(t_params[k].shape != s_params[k].shape for k in t_params)
            or (buffers and (list(t_bufs) != list(s_bufs)
                             or any(t_bufs[k].shape != s_bufs[k].shape for k in t_bufs)))):
        raise ValueError("teacher and student must have the same parameters and buffers (names and shapes)")
    ema_t, ema_s = [], []
    for name, t in t_params.items():
        s = s_params[name]
        if s.requires_grad:
            ema_t.append(t)
            ema_s.append(s.detach())
        else:
            t.copy_(s)
    if buffers:
        for name, t in t_bufs.items():
            s = s_bufs[name]
            if t.is_floating_point():
                ema_t.append(t)
                ema_s.append(s)
            else:
                t.copy_(s)
    if ema_t:
        torch._foreach_mul_(ema_t, momentum)
        torch._foreach_add_(ema_t, ema_s, alpha=1.0 - momentum)


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


def _encode(branch: nn.Module, points: list[torch.Tensor], features: list[torch.Tensor] | None,
            groups: list[list[int]], freeze_last: bool = False) -> list[torch.Tensor]:
    """``branch`` outputs ``(B, K)`` of each view; the views of each group (:func:`pointtune.views.view_groups`:
    views that always have the same number of points) go through the branch as one batch (concatenated, then
    split back), as DINO does for crops of one resolution."""
    out: list[torch.Tensor | None] = [None] * len(points)
    for ids in groups:
        x = torch.cat([points[i] for i in ids])
        f = None if features is None else torch.cat([features[i] for i in ids])
        for i, part in zip(ids, branch(x, f, freeze_last).split(points[ids[0]].shape[0])):
            out[i] = part
    return out  # type: ignore[return-value]


@register_method("dcglr")
class DCGLR(Method):
    """DCGLR on a registry backbone: a student and a teacher branch (backbone + projector, same architecture).

    * ``student``: ``backbone`` (``build_backbone(cfg.backbone)``, global feature ``(B, F)``) and ``head``
      (:class:`DINOHead` or :class:`MLP2Head`, ``(B, F) -> (B, K)``); trained.
    * ``teacher``: the same, ``requires_grad=False``, a copy of the student at initialisation (``teacher_init``),
      then the EMA of Eq. 13 in :meth:`after_step`.
    * ``center``: buffer ``(K,)``, Eq. 9.

    Labels are never used. ``forward`` returns ``loss``, ``loss_g``, ``loss_l``, the diagnostics
    ``teacher_entropy``, ``kl`` (:func:`dcglr_loss`), ``center_norm`` (the centre's L2 norm before this step's
    update), ``teacher_momentum`` (lambda at the step's progress) and ``teacher_temperature``; no ``acc`` (a
    self-supervised method, as ConClu).

    Data parallelism (:meth:`ddp_options`): the teacher's parameters do not require gradients, so DDP leaves
    them out; every student parameter gets a gradient at every step (``find_unused_parameters=False``) except
    the last projector layer while ``freeze_last_layer`` holds it (then ``True``). Buffers are kept identical
    by the method, so ``forward_sync_buffers=False`` (DDP's broadcast would copy rank 0's over them at the start
    of each forward, leaving each worker its own last update at evaluation time): the centre's batch mean is
    all-reduced (:func:`update_center`), and :meth:`after_step` averages the BatchNorm running statistics of the
    student (and, with ``teacher_bn='own'``, the teacher) over the workers before the EMA; the teacher's
    parameters are an EMA of identical student parameters, hence identical. Each worker draws its views from its
    own stream (the seed is offset by the rank).
    """

    task = Task.PRETRAIN
    Config = DCGLRConfig
    # Sec. 4.1 and spec section 3 [REC] (DINO's values where the paper gives none): AdamW (betas 0.9, 0.999),
    # lr warmed up linearly over 10 epochs to its peak then cosine to 1e-6, the warm-up kept as a fraction of the
    # run (the paper gives no run length; 10 of the spec's 200 epochs: 0.05) so that a shorter run still decays;
    # the peak follows DINO's linear
    # scaling rule lr = 5e-4 * B / 256 for a total batch B (per-worker batch x workers), so 5e-4 is the value
    # for B = 256: for B = 64 (the spec's batch) run with `--set optim.lr=1.25e-4`. Weight decay cosine 0.04 ->
    # 0.4, gradient clipping at norm 3, 2048 points per cloud, no augmentation in the data pipeline (the views
    # are the method's; A5). The batch size and the 100-200 epochs are left to the run.
    recipe = {
        "optim": {"name": "adamw",
                  "lr": {"start": 5e-4, "end": 1e-6, "shape": "cosine", "warmup_epochs": 10 / 200, "warmup_start": 0.0,
                         "unit": "fraction"},
                  "weight_decay": {"start": 0.04, "end": 0.4, "shape": "cosine"}},
        "train": {"grad_clip": 3.0},
        "data": {"num_points": 2048,
                 "augment": NO_AUGMENTATION},
    }

    def __init__(self, cfg: DCGLRConfig, num_classes: int = 0, total_epochs: int = 1):
        super().__init__(cfg, num_classes, total_epochs)
        self.student = self._build_branch()
        self.teacher = copy.deepcopy(self.student) if cfg.teacher_init == "copy" else self._build_branch()
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.spec = cfg.view_spec()
        self.global_groups, self.local_groups = view_groups(self.spec)

    def _build_branch(self) -> _Branch:
        from pointtune.backbones import build_backbone

        cfg: DCGLRConfig = self.cfg
        backbone = build_backbone(cfg.backbone.name, **cfg.backbone.kwargs())
        dim = int(backbone.out_dim)
        if cfg.head == "dino":
            head = DINOHead(dim, cfg.out_dim, cfg.proj_hidden or 2048, cfg.proj_bottleneck, cfg.proj_layers)
        else:
            head = MLP2Head(dim, cfg.out_dim, cfg.proj_hidden or 512)
        return _Branch(backbone, head)

    def momentum_at(self, step: int, total_steps: int) -> float:
        """``lambda`` of the EMA after optimizer step ``step`` (1-based) of ``total_steps``: the
        ``teacher_momentum`` schedule at epoch ``step / total_steps * total_epochs`` (A10)."""
        epoch = self.total_epochs * (step / total_steps if total_steps > 0 else 1.0)
        return float(self.cfg.teacher_momentum.at(epoch, self.total_epochs))

    @contextlib.contextmanager
    def _teacher_mode(self):
        """The teacher's forward: no dropout / stochastic depth (eval mode for those layers) and, with
        ``teacher_bn='ema'``, BatchNorm on batch statistics without updating its running statistics."""
        from pointtune.backbones.vit import DropPath

        changed: list[tuple[nn.Module, str]] = []
        for m in self.teacher.modules():
            if isinstance(m, (nn.modules.dropout._DropoutNd, DropPath)) and m.training:
                m.training = False
                changed.append((m, "training"))
            if (self.cfg.teacher_bn == "ema" and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                    and m.track_running_stats):
                m.track_running_stats = False
                changed.append((m, "track_running_stats"))
        try:
            yield
        finally:
            for m, attr in changed:
                setattr(m, attr, True)

    def _check_view_sizes(self, views) -> None:
        k = self.cfg.backbone.kwargs().get("k", 20) if self.cfg.backbone.name == "dgcnn" else None
        if k is None:
            return
        smallest = min(v.shape[1] for v in views.global_points + views.local_points)
        if smallest < k:
            raise ValueError(f"method.backbone.k: a view of {smallest} points is smaller than the DGCNN neighbourhood "
                             f"k={k}; raise data.num_points or the crop ratios (local_ratio_low, multires_fraction), "
                             f"or lower method.backbone.k")

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        """Losses of one mini-batch (Eqs. 4-12, :func:`dcglr_loss`) and, in training mode, the centre update of
        Eq. 9 (:func:`update_center`, a collective under data parallelism).

        Uses ``batch["points"]`` ``(B, N, 3)`` (and the per-point inputs of ``method.backbone.inputs``, cropped
        alike). The views come from :func:`pointtune.views.multi_crop` with a ``torch.Generator`` on the points'
        device seeded from torch's global (CPU) RNG, offset by the rank, so a run is reproducible under
        ``torch.manual_seed``. ``tau_t`` is the ``teacher_temperature`` schedule at epoch
        ``progress * total_epochs``. Views and loss are computed in float32 with autocast off; the encoders run
        under the caller's autocast.

        Raises:
            KeyError: a per-point input of ``method.backbone.inputs`` is missing from the batch.
            ValueError: a DGCNN backbone whose ``k`` exceeds the smallest view.
        """
        cfg: DCGLRConfig = self.cfg
        points = batch["points"]
        features = point_inputs(batch, cfg.backbone)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        seed = (seed + 1_000_003 * rank()) % 2**62                 # workers seeded alike draw different views
        gen = torch.Generator(device=points.device)
        gen.manual_seed(seed)
        with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
            views = multi_crop(points, self.spec, gen, features)
        self._check_view_sizes(views)
        with torch.no_grad(), self._teacher_mode():
            t_out = _encode(self.teacher, views.global_points, views.global_features, self.global_groups)
        freeze = epoch < cfg.freeze_last_layer
        s_glob = _encode(self.student, views.global_points, views.global_features, self.global_groups, freeze)
        s_loc = _encode(self.student, views.local_points, views.local_features, self.local_groups, freeze)
        now = progress * self.total_epochs
        tau_t = float(cfg.teacher_temperature.at(now, self.total_epochs))
        with torch.autocast(device_type=points.device.type, enabled=False):
            t_out = [t.float() for t in t_out]
            out = dcglr_loss(t_out, [s.float() for s in s_glob], [s.float() for s in s_loc], self.center,
                             tau_t, cfg.student_temperature, cfg.w_global, cfg.w_local, cfg.loss_avg)
            out["center_norm"] = self.center.detach().float().norm()
            if self.training:
                self.center.copy_(update_center(self.center, torch.cat(t_out), cfg.center_momentum))
        ref = out["loss"]
        out["teacher_momentum"] = ref.new_tensor(cfg.teacher_momentum.at(now, self.total_epochs))
        out["teacher_temperature"] = ref.new_tensor(tau_t)
        return out

    def after_step(self, step: int, total_steps: int) -> None:
        """After optimizer step ``step`` (1-based) of ``total_steps``: average the BatchNorm running statistics
        of the layers in training mode over the data-parallel workers (student, and teacher with
        ``teacher_bn='own'``), then the teacher EMA of Eq. 13 with ``lambda = momentum_at(step, total_steps)``
        (:func:`ema_update`; with ``teacher_bn='ema'`` the teacher's BatchNorm buffers too)."""
        average_batchnorm_stats(self)
        ema_update(self.teacher, self.student, self.momentum_at(step, total_steps),
                   buffers=self.cfg.teacher_bn == "ema")

    def ddp_options(self) -> dict[str, bool]:
        """``find_unused_parameters``: only while ``freeze_last_layer > 0`` (the last projector layer then gets
        no gradient in the first epochs); ``forward_sync_buffers=False``: the method keeps its buffers identical
        (see the class docstring)."""
        return {"find_unused_parameters": self.cfg.freeze_last_layer > 0, "forward_sync_buffers": False}

    def _feature_branch(self) -> _Branch:
        return self.teacher if self.cfg.features == "teacher" else self.student

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone global features ``(B, F)`` of ``batch["points"]`` ``(B, N, 3)`` (and the per-point inputs of
        ``method.backbone.inputs``) from the teacher backbone ``f_t`` (A16; ``features='student'``: ``f_s``),
        without projector or cropping; the caller puts the module in eval mode (BatchNorm running statistics).

        Raises:
            KeyError: a per-point input of ``method.backbone.inputs`` is missing from the batch.
        """
        return self._feature_branch().backbone(batch["points"], point_inputs(batch, self.cfg.backbone))

    @torch.no_grad()
    def embed_points(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-point features ``(B, N, C)`` of the teacher backbone (A16; ``features='student'``: the student's),
        as :meth:`pointtune.method.Method.embed_points` computes them, without the copy :meth:`encoder` makes
        for fine-tuning (this runs once per evaluated batch)."""
        points = batch["points"]
        out = self._feature_branch().backbone.forward_features(points, point_inputs(batch, self.cfg.backbone))
        return interpolate_point_features(points, out.point_xyz, out.point_features)

    def encoder(self) -> nn.Module:
        """A copy of the teacher backbone (``features='student'``: the student's) with gradients enabled, for
        fine-tuning: the teacher's own parameters do not require gradients, which would freeze a fine-tuned
        encoder; the copy leaves this method as it is."""
        return copy.deepcopy(self._feature_branch().backbone).requires_grad_(True)
