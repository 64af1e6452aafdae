"""CEDR: supervised contrastive classification with confusion-prone class mining and entropy-aware attention.

Paper: F. Yang, Y. Cao, Q. Xue, S. Jin, X. Li, W. Zhang, *"Contrastive Embedding Distribution Refinement and
Entropy-Aware Attention for 3D Point Cloud Classification"*. Spec: ``shared/specs/cedr.md``.

A backbone ``f`` maps a cloud to a global feature ``I`` (B, D). Two heads sit on it:

* ``f_cls`` gives class logits, trained with cross-entropy (Eq. 1) and the only head used at inference;
* ``f_prj`` (``Linear(D, D)``) gives an embedding that is L2-normalised into ``z`` for the contrastive loss.

The training loss is ``L = mean_i CE_i + lambda * L_SCC`` (Eq. 3, batch means), where L_SCC is the
supervised InfoNCE of Eq. 2 (positives: other same-class samples of the batch; the denominator holds the
current positive plus all negatives) with pair weights from two re-weighting modules:

* **CPCM** (Eqs. 4-5): class-pair weight ``W = (e^d + e^-d) / e^d = 1 + e^(-2d)`` from the Euclidean
  distance ``d`` between class centres of ``z``; applied to negative pairs. Method 2 weights only each
  class's nearest class when it is nearer than ``margin`` times the second nearest.
* **EAA** (Eqs. 6-11): the entropy (bits) of each sample's softmax flags outliers (wrong and E < 1) and
  unstable samples (right and E > 2.5); their per-sample weights ``a`` (Eq. 7 varying or Eq. 11 fixed;
  normal samples 1) become pair weights by the select rule (Eq. 8) on positive and negative pairs.
* With both on, negative-pair weights combine as ``sqrt(W_CPCM^2 + W_EAA^2)`` (Supplementary Eq. S3).

The weighted loss is the consolidated formulation of spec section 2.8 (``form='paper'``): negative weights
normalised by their mean over all negative pairs of the batch and positive weights by their mean over all
positive pairs (the denominators of Eqs. 5/9/10), so that uniform weights give exactly Eq. 2.
``form='aggregate'`` is the literal per-anchor reading ``-log(Pos / (Pos + Neg))`` of Eqs. 9/10.

Spec resolutions taken (ids of ``shared/specs/cedr.md`` section 6):
A1 the stray "yc" in Eq. 2 is ignored; A2 temperature exposed, default 1 (paper has none); A3 Eq. 2's
denominator (current positive + negatives); A4 section 2.8 weighted form, literal form as ``aggregate``;
A5 centres are per-batch means of the normalised ``z`` (no re-normalisation), Euclidean distance, detached,
with an EMA memory option (momentum 0.9, initialised from the first batch holding the class); A6 CPCM on
negatives only; A7 S3 on negatives, positives get the EAA weight only; A8 entropy of the softmax of the
same training forward, log base 2, detached; A9 normal samples a = 1; A10 Eq. 7 literally with
``unstable_offset``; A11 thresholds in bits, the same for every K; A12 ``cpcm_start_epoch`` and
``eaa_start_epoch`` (default 0 = paper); A13 method-2 margin as a ratio ``d_min <= margin * d_second``;
A14 projection ``Linear(D, D)`` (``mlp2`` option), unused at inference; A16 linear per-iteration lambda
ramp (``method.lambda_con.shape=linear``, a :class:`~pointtune.schedules.Schedule`); A17 anchors without positives or negatives are skipped; A21 label smoothing 0.2 (PyTorch's form);
A25 every weight is detached, gradients flow only through the similarities.

Data parallelism (:class:`CEDR`): the EMA centres are computed from every worker's batch; with
``gather`` the SCC loss of Eq. 2 and the CPCM batch centres see the whole global batch (the paper's batch of
80 was spread over 8 GPUs), through :func:`pointtune.distributed.all_gather_with_grad`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from pointtune.distributed import (
    all_gather_rows,
    all_gather_with_grad,
    all_reduce_sum,
    average_batchnorm_stats,
    world_size,
)
from pointtune.method import BackboneConfig, Method, MethodConfig, Task, point_inputs, register_method
from pointtune.schedules import Schedule, bounded

__all__ = [
    "CEDRConfig",
    "CEDR",
    "entropy_bits",
    "eaa_sample_flags",
    "eaa_sample_weights",
    "select_pair_weights",
    "cpcm_class_weights",
    "batch_class_centers",
    "global_class_centers",
    "ema_update_centers",
    "combine_weights",
    "weighted_scc_loss",
    "cedr_loss",
]


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class CEDRConfig(MethodConfig):
    """Hyperparameters of CEDR, named after the paper's symbols (spec section 3).

    ``lambda_con`` is lambda of Eq. 3; ``temperature`` is tau (1 = the paper); ``ent_low`` / ``ent_high`` are
    the outlier / unstable entropy thresholds in bits (Eq. 7); ``unstable_offset`` is the 1.2 of Eq. 7;
    ``fixed_outlier_weight`` / ``fixed_unstable_weight`` are the weights of Eq. 11; ``cpcm_margin`` is the
    method-2 ratio (A13); ``combine`` merges CPCM and EAA negative weights (``l2`` = Eq. S3); ``form`` picks
    the weighted loss (``paper`` = spec 2.8, ``aggregate`` = literal Eqs. 9/10).

    ``gather`` (data parallelism): the supervised contrastive loss (Eq. 2, with its CPCM and EAA weights) is
    computed over the global batch, the projections, labels and entropies of every worker's batch gathered
    (the paper's batch of 80 was spread over 8 GPUs); CPCM batch centres are then the global batch's. Each
    worker's SCC is the loss over the gathered batch and its gradient reaches each worker's own rows, so the
    update is that of one process holding the whole batch. Cross-entropy stays per worker.
    """

    name: Literal["cedr"] = "cedr"
    backbone: BackboneConfig = BackboneConfig(name="dgcnn")
    lambda_con: Annotated[Schedule, bounded(ge=0)] = Field(
        Schedule(start=0.1, end=0.2, shape="constant"),
        description="lambda of Eq. 3, the SCC weight; shape linear: the per-iteration ramp of Table VI (A16)")
    temperature: float = Field(1.0, gt=0, description="tau of Eq. 2 (the paper: 1; SupCon uses 0.07-0.1, A2)")
    use_scc: bool = Field(
        True, description="the supervised contrastive term (Eq. 2); false: plain cross-entropy, the baseline")
    use_cpcm: bool = Field(True, description="CPCM class-pair weights on negatives (Eqs. 4-5)")
    use_eaa: bool = Field(True, description="EAA entropy-aware sample weights (Eqs. 6-8, 11)")
    cpcm_method: Literal[1, 2] = Field(
        1, description="CPCM method: 1 every class pair (Eq. 4), 2 the nearest pair only (Eq. 5, Table VII)")
    cpcm_margin: float = Field(
        0.8, gt=0, le=1, description="method 2: the nearest pair is the one with d_min <= margin * d_second (A13)")
    centers: Literal["batch", "ema"] = Field(
        "batch", description="CPCM class centres: batch (means of the batch's z) or ema (a memory updated every step, A5)")
    center_momentum: float = Field(0.9, gt=0, lt=1, description="centers=ema: momentum of the centre memory")
    cpcm_start_epoch: int = Field(0, ge=0, description="first epoch (0-based) with CPCM (A12; paper: 0)")
    eaa_mode: Literal["varying", "fixed"] = Field(
        "varying", description="EAA weights: varying with the entropy (Eq. 8) or fixed per group (Eq. 11)")
    ent_low: float = Field(
        1.0, ge=0, description="entropy threshold in bits below which a sample is an outlier (Eq. 7)")
    ent_high: float = Field(2.5, ge=0, description="entropy threshold in bits above which a sample is unstable (Eq. 7)")
    unstable_offset: float = Field(1.2, description="the 1.2 of Eq. 7 (A10)")
    fixed_outlier_weight: float = Field(0.8, ge=0, description="eaa_mode=fixed: weight of outliers (Eq. 11)")
    fixed_unstable_weight: float = Field(1.2, ge=0, description="eaa_mode=fixed: weight of unstable samples (Eq. 11)")
    eaa_start_epoch: int = Field(0, ge=0, description="first epoch (0-based) with EAA (A12; paper: 0)")
    combine: Literal["l2", "product", "sum"] = Field(
        "l2", description="how CPCM and EAA weights of a negative pair combine: l2 (Eq. S3), product or sum")
    form: Literal["paper", "aggregate"] = Field(
        "paper", description="weighted loss: paper (spec 2.8) or aggregate (Eqs. 9/10 literally)")
    label_smoothing: float = Field(0.2, ge=0, lt=1, description="label smoothing of the cross-entropy (A21; 0: none)")
    projection: Literal["linear", "mlp2"] = Field(
        "linear", description="projection before SCC: linear, Linear(D, D) (A14), or mlp2; unused at inference")
    head_dropout: float = Field(0.5, ge=0, lt=1, description="dropout of the classification head")
    gather: bool = Field(
        False, description="data parallelism: SCC (with its CPCM and EAA weights) and the CPCM batch centres over "
        "the global batch, every worker's rows gathered; no effect in one process")

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> "CEDRConfig":
        if self.ent_low > self.ent_high:
            raise ValueError(
                f"ent_low ({self.ent_low}) must be <= ent_high ({self.ent_high}): "
                "outliers are flagged below ent_low, unstable samples above ent_high"
            )
        return self


# --------------------------------------------------------------------------------------------------
# Entropy-aware attention (Eqs. 6-8, 11)
# --------------------------------------------------------------------------------------------------


def _check_logits_labels(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must be ({logits.shape[0]},), got shape {tuple(labels.shape)}")


@torch.no_grad()
def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of each sample's predicted class distribution (Eq. 6).

    ``p(c_i)`` is the softmax of the logits (spec A8: normalising raw logits is ill-defined), and
    ``E = -sum_i p_i log2 p_i`` with ``0 log 0 = 0``; it lies in ``[0, log2 K]``.

    Args:
        logits: ``(B, K)`` class scores.

    Returns:
        ``(B,)`` entropies, detached (no gradient).

    Raises:
        ValueError: ``logits`` is not 2-D.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (B, K), got shape {tuple(logits.shape)}")
    logits = logits.detach()
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    # p * log p is 0 where p underflows to 0 (log_p stays finite for finite logits).
    return -(p * log_p).sum(dim=1) / math.log(2.0)


@torch.no_grad()
def eaa_sample_flags(
    logits: torch.Tensor, labels: torch.Tensor, ent_low: float = 1.0, ent_high: float = 2.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outlier and unstable flags of the entropy-aware attention (text around Eq. 7).

    An outlier is misclassified (argmax != label) with ``E < ent_low``; an unstable sample is correctly
    classified with ``E > ent_high`` (strict inequalities, as in the paper's "less than" / "greater than").

    Args:
        logits: ``(B, K)``; labels: ``(B,)`` int64.

    Returns:
        ``(outlier, unstable, entropy)``: two ``(B,)`` bool masks and the ``(B,)`` entropies in bits.

    Raises:
        ValueError: shapes do not match.
    """
    _check_logits_labels(logits, labels)
    ent = entropy_bits(logits)
    correct = logits.detach().argmax(dim=1) == labels
    outlier = ~correct & (ent < ent_low)
    unstable = correct & (ent > ent_high)
    return outlier, unstable, ent


@torch.no_grad()
def eaa_sample_weights(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ent_low: float = 1.0,
    ent_high: float = 2.5,
    mode: str = "varying",
    unstable_offset: float = 1.2,
    fixed_outlier: float = 0.8,
    fixed_unstable: float = 1.2,
) -> torch.Tensor:
    """Per-sample EAA weights ``a`` (Eq. 7 for ``mode='varying'``, Eq. 11 for ``mode='fixed'``).

    varying: ``a = E`` for outliers, ``a = E - unstable_offset`` for unstable samples; fixed: ``a =
    fixed_outlier`` / ``fixed_unstable``. Normal samples get ``a = 1`` (spec A9).

    Args:
        logits: ``(B, K)``; labels: ``(B,)`` int64.

    Returns:
        ``(B,)`` weights in the dtype of ``logits``, detached.

    Raises:
        ValueError: shapes do not match, or ``mode`` is not ``varying`` / ``fixed``.
    """
    if mode not in ("varying", "fixed"):
        raise ValueError(f"mode must be 'varying' or 'fixed', got {mode!r}")
    outlier, unstable, ent = eaa_sample_flags(logits, labels, ent_low, ent_high)
    a = torch.ones_like(ent)
    if mode == "varying":
        a = torch.where(outlier, ent, a)
        a = torch.where(unstable, ent - unstable_offset, a)
    else:
        a = torch.where(outlier, torch.full_like(a, fixed_outlier), a)
        a = torch.where(unstable, torch.full_like(a, fixed_unstable), a)
    return a


@torch.no_grad()
def select_pair_weights(a: torch.Tensor) -> torch.Tensor:
    """Pair weights from per-sample weights by the select rule (Eq. 8).

    ``W_ij = max(a_i, a_j)`` if ``a_i >= 1`` and ``a_j >= 1``, otherwise ``min(a_i, a_j)``: a pair with an
    outlier (``a < 1``) takes the smaller weight, any other pair the larger.

    Args:
        a: ``(B,)`` per-sample weights.

    Returns:
        ``(B, B)`` pair weights (the diagonal is ``a_i``; it is never used), detached.

    Raises:
        ValueError: ``a`` is not 1-D.
    """
    if a.dim() != 1:
        raise ValueError(f"a must be (B,), got shape {tuple(a.shape)}")
    a = a.detach()
    ai, aj = a[:, None], a[None, :]
    both_at_least_one = (ai >= 1) & (aj >= 1)
    return torch.where(both_at_least_one, torch.maximum(ai, aj), torch.minimum(ai, aj))


# --------------------------------------------------------------------------------------------------
# Confusion-prone classes mining (Eqs. 4-5) and class centres
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def cpcm_class_weights(
    centers: torch.Tensor,
    valid: torch.Tensor | None = None,
    method: int = 1,
    margin: float = 0.8,
) -> torch.Tensor:
    """Class-pair weights of confusion-prone classes mining (Eq. 4 / Eq. S1).

    ``W_ij = (e^d + e^-d) / e^d = 1 + e^(-2d)`` with ``d`` the Euclidean distance between centres ``C(i)``
    and ``C(j)``, so closer classes weigh more (range ``(1, 2]``).

    * ``method=1`` (paper default): every pair of distinct valid classes gets its Eq. 4 weight.
    * ``method=2``: for each valid class ``i`` only its nearest valid class ``j*`` is mined, and only when
      ``d(i, j*) <= margin * d_second(i)`` (ratio reading of the 0.8 margin, spec A13; with a single
      other valid class the second distance is taken as infinite, so that class is mined). A mined pair
      gets its Eq. 4 weight in both directions (the pair is unordered); every other pair gets 1.

    The diagonal and every pair involving an invalid class get 1: CPCM weights negatives only (A6), and a
    class absent from the batch (or memory) has no centre.

    Args:
        centers: ``(K, D)`` class centres.
        valid: optional ``(K,)`` bool mask of classes that have a centre (default: all).
        method: 1 or 2 (Table VII).
        margin: method-2 ratio, in ``(0, 1]``.

    Returns:
        ``(K, K)`` symmetric weights, detached.

    Raises:
        ValueError: bad shapes, ``method`` not in {1, 2}, or ``margin`` not positive.
    """
    if centers.dim() != 2:
        raise ValueError(f"centers must be (K, D), got shape {tuple(centers.shape)}")
    K = centers.shape[0]
    if method not in (1, 2):
        raise ValueError(f"method must be 1 or 2, got {method!r}")
    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    if valid is None:
        valid = torch.ones(K, dtype=torch.bool, device=centers.device)
    elif valid.shape != (K,):
        raise ValueError(f"valid must be ({K},), got shape {tuple(valid.shape)}")
    centers = centers.detach()
    valid = valid.to(torch.bool)
    # Direct differences (not the matmul expansion) keep d exact, and exactly 0 on the diagonal.
    dist = (centers[:, None, :] - centers[None, :, :]).norm(dim=-1)
    eye = torch.eye(K, dtype=torch.bool, device=centers.device)
    pair_ok = valid[:, None] & valid[None, :] & ~eye
    weights = 1.0 + torch.exp(-2.0 * dist)
    if method == 2:
        masked = dist.masked_fill(~pair_ok, float("inf"))
        mined = torch.zeros(K, K, dtype=torch.bool, device=centers.device)
        if K >= 2:
            # With a single other valid class, the second distance is inf and that class is mined.
            nearest, idx = masked.topk(2, dim=1, largest=False)
            d_min, d_second = nearest[:, 0], nearest[:, 1]
            hit = valid & torch.isfinite(d_min) & (d_min <= margin * d_second)
            rows = torch.nonzero(hit).flatten()
            mined[rows, idx[rows, 0]] = True
        pair_ok = pair_ok & (mined | mined.t())
    return torch.where(pair_ok, weights, torch.ones_like(weights))


@torch.no_grad()
def batch_class_centers(
    z: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-batch class centres: the mean embedding of each class present in the batch (Sec. III-B, A5).

    Args:
        z: ``(B, D)`` embeddings (the L2-normalised projections; centres are not re-normalised).
        labels: ``(B,)`` int64 in ``[0, num_classes)``.
        num_classes: K.

    Returns:
        ``(centers, present)``: ``(K, D)`` centres (zero rows for absent classes) and a ``(K,)`` bool mask
        of the classes in the batch; both detached.

    Raises:
        ValueError: bad shapes or a label outside ``[0, num_classes)``.
    """
    sums, counts = _class_sums(z, labels, num_classes)
    centers = sums / counts.clamp(min=1).to(z.dtype)[:, None]
    return centers, counts > 0


def _class_sums(z: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums ``(K, D)`` of the detached rows of ``z`` and per-class counts ``(K,)`` int64, after
    checking the shapes and the label range (``ValueError``)."""
    if z.dim() != 2:
        raise ValueError(f"z must be (B, D), got shape {tuple(z.shape)}")
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels must be ({z.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    z = z.detach()
    counts = torch.bincount(labels, minlength=num_classes)
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    return sums, counts


@torch.no_grad()
def global_class_centers(
    z: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class centres of the union of every data-parallel worker's batch (A5 under data parallelism).

    The per-class sums and counts of the local batch are all-reduced across workers
    (:func:`pointtune.distributed.all_reduce_sum`, one collective), so every worker gets the same centres:
    the mean embedding of each class over the global batch. In a single process it equals
    :func:`batch_class_centers`. A collective: every worker must call it at the same point.

    Args:
        z: ``(B_r, D)`` this worker's embeddings; labels: ``(B_r,)`` int64 in ``[0, num_classes)``.
        num_classes: K.

    Returns:
        ``(centers, present)``: ``(K, D)`` centres (zero rows for classes absent from every worker's batch)
        and a ``(K,)`` bool mask of the classes present in the global batch; both detached.

    Raises:
        ValueError: bad shapes or a label outside ``[0, num_classes)`` (as :func:`batch_class_centers`).
    """
    sums, counts = _class_sums(z, labels, num_classes)
    packed = all_reduce_sum(torch.cat([sums, counts[:, None].to(sums.dtype)], dim=1))   # one all-reduce
    sums, counts = packed[:, :-1], packed[:, -1].round()
    return sums / counts.clamp(min=1)[:, None], counts > 0


@torch.no_grad()
def ema_update_centers(
    memory: torch.Tensor,
    seen: torch.Tensor,
    batch_centers: torch.Tensor,
    present: torch.Tensor,
    momentum: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA class-centre memory update (spec A5 option).

    For a class present in the batch: ``m <- momentum * m + (1 - momentum) * c_batch`` if it was seen
    before, else ``m <- c_batch`` (initialised from the first batch containing it). Absent classes keep
    their old centre. Returns new tensors; the inputs are not modified.

    Args:
        memory: ``(K, D)`` stored centres; seen: ``(K,)`` bool, classes with a stored centre.
        batch_centers: ``(K, D)`` and present: ``(K,)`` bool, from :func:`batch_class_centers`.
        momentum: in ``(0, 1)``.

    Returns:
        ``(new_memory (K, D), new_seen (K,))``.

    Raises:
        ValueError: shapes differ, or ``momentum`` is outside ``(0, 1)``.
    """
    if memory.shape != batch_centers.shape or memory.dim() != 2:
        raise ValueError(f"memory {tuple(memory.shape)} and batch_centers {tuple(batch_centers.shape)} "
                         "must both be (K, D)")
    K = memory.shape[0]
    if seen.shape != (K,) or present.shape != (K,):
        raise ValueError(f"seen and present must be ({K},), got {tuple(seen.shape)} and {tuple(present.shape)}")
    if not 0 < momentum < 1:
        raise ValueError(f"momentum must lie in (0, 1), got {momentum}")
    seen, present = seen.to(torch.bool), present.to(torch.bool)
    batch_centers = batch_centers.detach().to(memory.dtype)
    blended = momentum * memory + (1.0 - momentum) * batch_centers
    new = torch.where((present & seen)[:, None], blended, memory)
    new = torch.where((present & ~seen)[:, None], batch_centers, new)
    return new, seen | present


@torch.no_grad()
def combine_weights(
    w_cpcm: torch.Tensor | None, w_eaa: torch.Tensor | None, how: str = "l2"
) -> torch.Tensor | None:
    """Merge CPCM and EAA pair weights (Supplementary Eq. S3 for ``how='l2'``).

    ``l2``: ``sqrt(W_CPCM^2 + W_EAA^2)`` (parallelogram rule); ``product``: ``W_CPCM * W_EAA``; ``sum``:
    ``W_CPCM + W_EAA``. If one of the two is ``None`` (module off) the other is returned unchanged; if both
    are, ``None`` (uniform weights).

    Args:
        w_cpcm, w_eaa: ``(B, B)`` pair weights or ``None``.

    Returns:
        ``(B, B)`` detached weights, or ``None``.

    Raises:
        ValueError: ``how`` unknown, or the shapes differ.
    """
    if how not in ("l2", "product", "sum"):
        raise ValueError(f"how must be 'l2', 'product' or 'sum', got {how!r}")
    if w_cpcm is None:
        return None if w_eaa is None else w_eaa.detach()
    if w_eaa is None:
        return w_cpcm.detach()
    if w_cpcm.shape != w_eaa.shape:
        raise ValueError(f"w_cpcm {tuple(w_cpcm.shape)} and w_eaa {tuple(w_eaa.shape)} differ in shape")
    w_cpcm, w_eaa = w_cpcm.detach(), w_eaa.detach()
    if how == "l2":
        return torch.sqrt(w_cpcm**2 + w_eaa**2)
    if how == "product":
        return w_cpcm * w_eaa
    return w_cpcm + w_eaa


# --------------------------------------------------------------------------------------------------
# Weighted supervised contrastive loss (Eq. 2 generalised, spec 2.8)
# --------------------------------------------------------------------------------------------------


def _log_weights(w: torch.Tensor, mask: torch.Tensor, floor: float) -> torch.Tensor:
    """``log w`` where ``mask`` and ``w > 0``; a large finite negative elsewhere (exp underflows to 0
    without the NaN gradients that ``-inf`` rows would give in logsumexp)."""
    keep = mask & (w > 0)
    return torch.where(keep, torch.log(torch.where(keep, w, torch.ones_like(w))), torch.full_like(w, floor))


def weighted_scc_loss(
    z: torch.Tensor,
    labels: torch.Tensor,
    w_neg: torch.Tensor | None = None,
    w_pos: torch.Tensor | None = None,
    temperature: float = 1.0,
    form: str = "paper",
    normalize: bool = True,
) -> torch.Tensor:
    """Supervised contrastive classification loss with pair weights (Eq. 2; Eqs. 5/9/10 via spec 2.8).

    With ``s_ij = z_i . z_j / tau``, ``P(i) = {j != i: y_j = y_i}``, ``N(i) = {j: y_j != y_i}`` and the valid
    anchors ``A = {i: |P(i)| >= 1 and |N(i)| >= 1}``:

    ``form='paper'`` (default, spec 2.8)::

        w~-_ij = w-_ij / mean over all negative pairs (k, l) of w-_kl        (Eqs. 5/9 denominators)
        w~+_ij = w+_ij / mean over all positive pairs (k != l) of w+_kl      (Eq. 10 denominator)
        l_ip   = -s_ip + log( exp(s_ip) + sum_{n in N(i)} w~-_in exp(s_in) )
        L      = (1/|A|) sum_{i in A} (1/|P(i)|) sum_{p in P(i)} w~+_ip l_ip

    Uniform weights (or ``None``) give exactly Eq. 2 averaged over the anchors.

    ``form='aggregate'`` (literal Eqs. 9/10 per anchor)::

        Pos_i = sum_p w+_ip e^{s_ip} / sum_p w+_ip,   Neg_i = sum_n w-_in e^{s_in} / sum_n w-_in
        L     = mean over valid anchors of -log( Pos_i / (Pos_i + Neg_i) )

    where an anchor whose positive or negative weights sum to 0 is also skipped (its weighted mean is
    undefined). This form does not reduce to Eq. 2 (negatives are averaged, not summed).

    Weights are detached (spec A25): gradients flow only through ``z``. Computation uses logsumexp.

    Args:
        z: ``(B, D)`` embeddings; L2-normalised here when ``normalize`` (the paper's normalised embeddings).
        labels: ``(B,)`` int64 class labels.
        w_neg: ``(B, B)`` non-negative weights of negative pairs (entries of other pairs are ignored), or
            ``None`` for uniform.
        w_pos: ``(B, B)`` non-negative weights of positive pairs, or ``None`` for uniform.
        temperature: tau > 0 (the paper has none: 1).
        form: ``paper`` or ``aggregate``.
        normalize: L2-normalise ``z`` first.

    Returns:
        Scalar loss. When no anchor is valid (e.g. every label distinct, or a single class) it is a zero
        that is still attached to the graph of ``z``.

    Raises:
        ValueError: bad shapes, ``temperature <= 0`` or unknown ``form``.
    """
    if z.dim() != 2:
        raise ValueError(f"z must be (B, D), got shape {tuple(z.shape)}")
    B = z.shape[0]
    if labels.shape != (B,):
        raise ValueError(f"labels must be ({B},), got shape {tuple(labels.shape)}")
    for name, w in (("w_neg", w_neg), ("w_pos", w_pos)):
        if w is not None and w.shape != (B, B):
            raise ValueError(f"{name} must be ({B}, {B}), got shape {tuple(w.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if form not in ("paper", "aggregate"):
        raise ValueError(f"form must be 'paper' or 'aggregate', got {form!r}")

    if normalize:
        z = F.normalize(z, dim=1)
    sim = z @ z.t() / temperature                                           # (B, B) s_ij
    eye = torch.eye(B, dtype=torch.bool, device=z.device)
    same = labels[:, None] == labels[None, :]
    pos, neg = same & ~eye, ~same
    n_pos = pos.sum(dim=1)
    valid = (n_pos > 0) & neg.any(dim=1)
    zero = sim.sum() * 0.0                                                  # keeps the graph of z
    if not bool(valid.any()):
        return zero

    ones = torch.ones_like(sim)
    w_neg = ones if w_neg is None else w_neg.detach().to(sim.dtype)
    w_pos = ones if w_pos is None else w_pos.detach().to(sim.dtype)
    floor = torch.finfo(sim.dtype).min / 4

    if form == "paper":
        w_neg = w_neg / w_neg[neg].mean().clamp_min(torch.finfo(sim.dtype).tiny)
        w_pos = w_pos / w_pos[pos].mean().clamp_min(torch.finfo(sim.dtype).tiny)
        neg_lse = torch.logsumexp(sim + _log_weights(w_neg, neg, floor), dim=1)   # log sum_n w~ e^s
        ell = -sim + torch.logaddexp(sim, neg_lse[:, None])                  # (B, B), used where pos
        ell = torch.where(pos, ell * w_pos, torch.zeros_like(ell))
        per_anchor = ell.sum(dim=1) / n_pos.clamp(min=1)
        return per_anchor[valid].mean()

    # aggregate: log Pos_i = logsumexp_p(s + log w+) - log sum_p w+, likewise for Neg_i
    pos_sum = torch.where(pos, w_pos, torch.zeros_like(w_pos)).sum(dim=1)
    neg_sum = torch.where(neg, w_neg, torch.zeros_like(w_neg)).sum(dim=1)
    valid = valid & (pos_sum > 0) & (neg_sum > 0)
    if not bool(valid.any()):
        return zero
    log_pos = torch.logsumexp(sim + _log_weights(w_pos, pos, floor), dim=1) - pos_sum.clamp_min(1e-30).log()
    log_neg = torch.logsumexp(sim + _log_weights(w_neg, neg, floor), dim=1) - neg_sum.clamp_min(1e-30).log()
    per_anchor = F.softplus(log_neg - log_pos)                              # -log(Pos / (Pos + Neg))
    return per_anchor[valid].mean()


# --------------------------------------------------------------------------------------------------
# Total loss (Eq. 3)
# --------------------------------------------------------------------------------------------------


def cedr_loss(
    z: torch.Tensor | None,
    logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: CEDRConfig,
    epoch: int = 0,
    lambda_con: float | None = None,
    centers: torch.Tensor | None = None,
    centers_valid: torch.Tensor | None = None,
    gather: bool = False,
) -> dict[str, torch.Tensor]:
    """CEDR training loss ``L = mean_i CE_i + lambda * L_SCC`` (Eq. 3 with batch means).

    CE is ``F.cross_entropy`` with ``cfg.label_smoothing`` (Eq. 1; A21). With ``cfg.use_scc`` off the loss is
    plain CE. Otherwise L_SCC is :func:`weighted_scc_loss` with

    * CPCM (``use_cpcm`` and ``epoch >= cpcm_start_epoch``): class weights :func:`cpcm_class_weights` of
      ``centers`` (per-batch centres of ``z`` when ``centers`` is None) mapped to sample pairs
      ``W[y_i, y_j]``, on negatives only (A6);
    * EAA (``use_eaa`` and ``epoch >= eaa_start_epoch``): :func:`select_pair_weights` of
      :func:`eaa_sample_weights` on positives and negatives;
    * both: negatives combined by :func:`combine_weights` (S3 for ``combine='l2'``), positives EAA only (A7).

    Every weight is computed without gradient (A25).

    With ``gather`` (``cfg.gather`` in :class:`CEDR`) and several data-parallel workers, L_SCC and its
    weights are computed over the global batch: ``z`` is gathered with
    :func:`pointtune.distributed.all_gather_with_grad` (rank order) and the labels and detached logits with
    :func:`pointtune.distributed.all_gather_rows`, so per-batch CPCM centres, EAA weights, ``outlier_frac``
    and ``unstable_frac`` are the global batch's and ``scc`` is the same on every worker; the gradient
    reaches each worker's own rows of ``z`` (see :func:`~pointtune.distributed.all_gather_with_grad` for
    the factor that DDP's gradient averaging cancels). CE stays the mean over the local batch. A collective
    then: every worker must call it.

    Args:
        z: ``(B, D)`` projected embeddings (normalised inside); may be ``None`` when ``cfg.use_scc`` is off.
        logits: ``(B, K)`` classification logits of the same forward.
        labels: ``(B,)`` int64.
        cfg: the method config.
        epoch: 0-based epoch (for the start epochs).
        lambda_con: lambda at this step (``cfg.lambda_con`` evaluated by :class:`CEDR`); ``None``: its start.
        centers: optional ``(K, D)`` class centres (e.g. an EMA memory) instead of the batch's.
        centers_valid: ``(K,)`` bool mask of usable rows of ``centers`` (default: all).
        gather: compute L_SCC over every data-parallel worker's batch (no effect in a single process).

    Returns:
        Dict of scalar tensors: ``loss``, ``ce``, ``scc`` (0 when off), ``lambda_con``, ``outlier_frac`` and
        ``unstable_frac`` (fractions of the batch flagged by EAA; 0 when EAA is not applied).

    Raises:
        ValueError: inconsistent shapes (from the component functions), or ``z`` is ``None`` with
            ``cfg.use_scc`` on.
    """
    _check_logits_labels(logits, labels)
    if z is None:
        if cfg.use_scc:
            raise ValueError("z (the projections) is required when cfg.use_scc is on")
    elif z.dim() != 2 or z.shape[0] != logits.shape[0]:
        raise ValueError(f"z must be ({logits.shape[0]}, D), got shape {tuple(z.shape)}")
    num_classes = logits.shape[1]
    ce = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
    lam = cfg.lambda_con.start if lambda_con is None else lambda_con
    zero = torch.zeros((), dtype=ce.dtype, device=ce.device)
    out = {"ce": ce, "lambda_con": torch.tensor(lam, dtype=ce.dtype, device=ce.device),
           "outlier_frac": zero, "unstable_frac": zero}
    if not cfg.use_scc:
        out.update(loss=ce, scc=zero)
        return out

    z = F.normalize(z, dim=1)
    if gather and world_size() > 1:
        z = all_gather_with_grad(z)                                         # (sum_r B_r, D), rank order
        labels = all_gather_rows(labels)[0]
        logits = all_gather_rows(logits.detach())[0]                        # for the EAA weights only
    w_cpcm = w_eaa = None
    with torch.no_grad():
        if cfg.use_cpcm and epoch >= cfg.cpcm_start_epoch:
            if centers is None:
                centers, centers_valid = batch_class_centers(z, labels, num_classes)
            w_class = cpcm_class_weights(centers.to(z.dtype), centers_valid, cfg.cpcm_method, cfg.cpcm_margin)
            w_cpcm = w_class[labels][:, labels]
        if cfg.use_eaa and epoch >= cfg.eaa_start_epoch:
            outlier, unstable, _ = eaa_sample_flags(logits, labels, cfg.ent_low, cfg.ent_high)
            a = eaa_sample_weights(logits, labels, cfg.ent_low, cfg.ent_high, cfg.eaa_mode,
                                   cfg.unstable_offset, cfg.fixed_outlier_weight, cfg.fixed_unstable_weight)
            w_eaa = select_pair_weights(a.to(z.dtype))
            out["outlier_frac"] = outlier.to(ce.dtype).mean()
            out["unstable_frac"] = unstable.to(ce.dtype).mean()
        w_neg = combine_weights(w_cpcm, w_eaa, cfg.combine)
        w_pos = w_eaa
    scc = weighted_scc_loss(z, labels, w_neg, w_pos, cfg.temperature, cfg.form, normalize=False)
    out.update(loss=ce + lam * scc, scc=scc)
    return out


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


def _drop_projection_head(module, state_dict, prefix, *args) -> None:
    """Load-state-dict pre-hook of a CEDR without SCC: drop the ``proj_head.*`` entries that checkpoints
    written before the head was left out (an unused, untrained head) still hold."""
    for key in [k for k in state_dict if k.startswith(prefix + "proj_head.")]:
        del state_dict[key]


@register_method("cedr")
class CEDR(Method):
    """CEDR on a registry backbone: ``f`` -> ``I``; ``f_cls(I)`` logits; ``f_prj(I)`` contrastive embedding.

    ``proj_head`` (``f_prj``) exists only with ``cfg.use_scc`` (plain CE trains ``f`` and ``f_cls`` only; it
    is ``None`` otherwise, so no parameter is left without a gradient; a checkpoint that still holds one
    loads, its head ignored). Buffers ``center_memory`` ``(K, D)`` and ``center_seen`` ``(K,)`` hold the EMA
    class centres (used when ``cfg.centers == 'ema'`` with SCC and CPCM on, :attr:`uses_center_memory`;
    updated by every training-mode ``forward`` then, also before ``cpcm_start_epoch`` so that the memory is
    warm when CPCM starts; zeros otherwise).

    ``forward`` returns the terms of :func:`cedr_loss` and ``acc``, the fraction of the batch whose logits'
    argmax is the label (detached).

    Data parallelism (:meth:`ddp_options`):

    * every parameter gets a gradient at every step (``find_unused_parameters=False``): the CPCM and EAA
      start epochs only switch detached pair weights on, never a module, and an SCC without a valid anchor
      is a zero still attached to the projections;
    * the EMA centres are updated from the global batch: per-class sums and counts of the projections are
      all-reduced (:func:`global_class_centers`), so every worker holds the same memory; DDP must then not
      overwrite it with rank 0's copy (``forward_sync_buffers=False``);
    * with ``forward_sync_buffers=False`` DDP no longer copies BatchNorm running statistics (backbone,
      classification head, ``mlp2`` projection) from rank 0 either. Left alone they would drift apart over the
      run and each worker would evaluate a different model; :meth:`after_step` therefore averages them over
      the workers after every optimizer step (one small all-reduce,
      :func:`pointtune.distributed.average_batchnorm_stats`): every worker evaluates the same model, with
      statistics that follow all workers' batches rather than rank 0's alone. (Only a loop that calls
      ``after_step`` gets this; without it the statistics differ per worker, as in plain DDP with
      ``forward_sync_buffers=False``, and checkpoints hold rank 0's.) The per-batch BatchNorm normalisation
      itself stays per worker (no SyncBatchNorm), as in the paper's multi-GPU training;
    * ``cfg.gather``: SCC (Eq. 2 with its CPCM / EAA weights) over the projections, labels and entropies of
      every worker's batch (:func:`cedr_loss`); CE stays per worker. Without it each worker's SCC and
      CPCM batch centres see its own batch only (a per-worker batch of ``train.batch_size``).
    """

    task = Task.CLASSIFICATION
    Config = CEDRConfig
    # The paper's optimisation (SGD, momentum 0.9, lr 0.1 -> 0.001 cosine; wd 1e-4, A15). Its batch of 80 and
    # 300 epochs are left to the run (`--set train.batch_size=80 --epochs 300`) so that debug runs stay short.
    recipe = {"optim": {"name": "sgd", "lr": {"start": 0.1, "end": 1e-3, "shape": "cosine"}, "momentum": 0.9,
                        "weight_decay": 1e-4}}

    def __init__(self, cfg: CEDRConfig, num_classes: int, total_epochs: int):
        super().__init__(cfg, num_classes, total_epochs)
        from pointtune.backbones import ClassificationHead, build_backbone

        if num_classes < 2:
            raise ValueError(f"CEDR is a classification method and needs num_classes >= 2, got {num_classes}")
        self.backbone = build_backbone(cfg.backbone.name, **cfg.backbone.kwargs())
        dim = int(self.backbone.out_dim)
        self.cls_head = ClassificationHead(dim, num_classes, dropout=cfg.head_dropout)
        self.proj_head: nn.Module | None = None
        if cfg.use_scc and cfg.projection == "linear":
            self.proj_head = nn.Linear(dim, dim)
        elif cfg.use_scc:
            self.proj_head = nn.Sequential(
                nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)
            )
        else:
            self.register_load_state_dict_pre_hook(_drop_projection_head)
        self.register_buffer("center_memory", torch.zeros(num_classes, dim))
        self.register_buffer("center_seen", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def uses_center_memory(self) -> bool:
        """Whether the EMA centre memory is in use (``centers='ema'`` with SCC and CPCM on)."""
        cfg: CEDRConfig = self.cfg
        return cfg.use_scc and cfg.use_cpcm and cfg.centers == "ema"

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        """Losses of one mini-batch (``points`` ``(B, N, 3)``, ``label`` ``(B,)``); see :func:`cedr_loss`.

        Returns its dict plus ``acc`` (training accuracy of the batch, detached). The loss terms are computed
        in float32 with autocast off (the similarity exponentials and entropies are not safe in half
        precision). In training mode with the EMA memory in use, the memory is first updated from the global
        batch (:func:`global_class_centers`, a collective under DDP).
        """
        points, labels = batch["points"], batch["label"]
        feat = self.backbone(points, point_inputs(batch, self.cfg.backbone))  # I (B, D)
        logits = self.cls_head(feat)                                      # (B, K)
        emb = self.proj_head(feat) if self.proj_head is not None else None   # (B, D), normalised in the loss
        cfg: CEDRConfig = self.cfg
        with torch.autocast(device_type=points.device.type, enabled=False):
            z = F.normalize(emb.float(), dim=1) if emb is not None else None
            centers = valid = None
            if self.uses_center_memory:
                if self.training:
                    with torch.no_grad():
                        batch_centers, present = global_class_centers(z, labels, self.num_classes)
                        memory, seen = ema_update_centers(self.center_memory, self.center_seen,
                                                          batch_centers, present, cfg.center_momentum)
                        self.center_memory.copy_(memory)
                        self.center_seen.copy_(seen)
                centers, valid = self.center_memory, self.center_seen
            lam = cfg.lambda_con.at(progress * self.total_epochs, self.total_epochs)
            out = cedr_loss(z, logits.float(), labels, cfg, epoch, lam, centers, valid,
                            gather=cfg.gather and self.training)
        out["acc"] = (logits.detach().argmax(dim=1) == labels).float().mean()
        return out

    def after_step(self, step: int, total_steps: int) -> None:
        """Average the BatchNorm running statistics over the data-parallel workers (see the class
        docstring: DDP does not broadcast buffers for CEDR); a no-op in a single process."""
        average_batchnorm_stats(self)

    def ddp_options(self) -> dict[str, bool]:
        """``find_unused_parameters=False`` (every parameter is used at every step) and
        ``forward_sync_buffers=False`` (the EMA centres are all-reduced, and :meth:`after_step` averages the
        BatchNorm statistics); see the class docstring."""
        return {"find_unused_parameters": False, "forward_sync_buffers": False}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(B, K)`` from ``f_cls`` only (the projection head is unused at inference)."""
        return self.cls_head(self.backbone(batch["points"], point_inputs(batch, self.cfg.backbone)))

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Global features ``I`` ``(B, D)`` of ``batch["points"]`` ``(B, N, 3)`` from the backbone."""
        return self.backbone(batch["points"], point_inputs(batch, self.cfg.backbone))

    def encoder(self) -> nn.Module:
        """The backbone ``f``."""
        return self.backbone
