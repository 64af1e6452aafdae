"""SCL: self-contrastive learning with hard negative sampling, for self-supervised point-cloud learning.

Paper: B. Du, X. Gao, W. Hu, X. Li, *"Self-Contrastive Learning with Hard Negative Sampling for Self-supervised
Point Cloud Learning"* (ACM MM 2021). Spec: ``shared/specs/scl.md``.

The method contrasts patches *inside one cloud*. A patch ``P_i`` is an FPS centre and its ``k`` nearest
neighbours (Eq. 2, ``|P_i| = k + 1``, :func:`patch_indices`); point features are gathered per patch and
summarised by an aggregator ``G`` (one GCN layer + average pooling, :class:`PatchAggregator`). Training runs in
two stages of one method, chosen by ``method.stage``:

* **Stage 1, similarity network** (``stage: 1``). ``E1`` (4 EdgeConv -> 128-d -> point-wise FC -> F = 32,
  :class:`SCLEncoder`), ``G1`` and a discriminator ``D`` (one FC on the 64-d pair). The similar sample of an
  anchor is the same patch of a randomly rotated copy of the cloud, the dissimilar one another random patch
  of the cloud (``j != i``); loss (Eq. 4, :func:`similarity_loss`)::

      L_S = -1/(A+B) ( sum_A log D(G1(F_i), G1(F~_i)) + sum_B log(1 - D(G1(F_i), G1(F_j))) )

* **Stage 2, self-contrastive network** (``stage: 2``, ``stage1_from``: the stage-1 run). ``E1``/``G1`` come
  from that run, frozen (no gradient, eval mode); ``D`` is dropped. They give the self-similarity score
  (Eq. 5, :func:`self_similarity`) ``s(P_i, P_j) = |cos(G1(F_i), G1(F_j))|``. ``E2`` (8 EdgeConv, outputs
  concatenated, point-wise FC -> H = 256) and ``G2`` are trained with InfoNCE (Eq. 7, :func:`info_nce`)::

      L_N = -log f(H_i, H_i+) / (f(H_i, H_i+) + sum_{j: s(P_i, P_j) in [b_l, b_u]} f(H_i, H_j)),
      f(H_i, H_j) = exp(G2(H_i)^T G2(H_j) / tau)

  where ``H_i+`` is the *dilated* patch of the same centre (its ``k d`` nearest neighbours, every ``d``-th
  kept) and the negatives are the other patches of the same cloud whose score lies in the closed interval
  ``[b_l, b_u]`` (:func:`hard_negative_mask`), annealed over the run (``method.b_l``, ``method.b_u``: schedules).

Downstream (``embed``, ``embed_points``, ``encoder``): stage 2's ``E2`` (stage 1: ``E1``); the global feature
is the average pooling of the point features (paper section 4.1.1), the per-point features are ``H``.

**The annealing** (paper section 4.1.1; spec section 2.5) is the paper's staircase, one shared
:class:`~pointtune.schedules.Schedule` per bound (``method.b_l``, ``method.b_u``, shape ``stairs``)::

    W = warmup_epochs, T = step_epochs        (x train.epochs with unit: fraction, the default)
    b(t) = start                              for t < W       (t: the fractional epoch of the step)
    b(t) = start + delta floor((t - W) / T)   after, stopping at end

The defaults are the paper's, as fractions of its 512-epoch run: warm-up 300/512, period 20/512 (both exact
binary fractions), b_l from 0 by +0.05 up to 0.5 and b_u from 1 by -0.025 down to 0.75 ("the whole negative
samples" first; the spec's n_max = 10 reading), so a 512-epoch run steps at epochs 320, 340, ..., 500 and
ends at [0.50, 0.75]; ``unit: epochs`` with ``warmup_epochs: 300, step_epochs: 20`` gives the same in
epochs. A search space ties b_u's warm-up and period to b_l's (``type: same``). The loop records both as
``sched/method.b_l`` and ``sched/method.b_u`` per epoch, the method as ``train/b_l`` and ``train/b_u``.

Readings taken (ids of ``shared/specs/scl.md`` section 6; [REC] unless stated):

* A1: Definition 1's epsilon is not used; ``s`` of Eq. 5 is the operational score (higher: more similar).
* A2, A3: ``num_patches`` M (default 32) and ``patch_k`` k (default 32) are their own fields; ``edgeconv_k``
  (paper: 20) is the EdgeConv neighbourhood of ``E1`` and ``E2``.
* A4: the only positive is the dilated patch (Eq. 7). ``extra_positives_from_sim: true`` (off by default)
  adds the other patches of the cloud that score above the interval (``s > b_u``; in quantile mode above the
  upper quantile) as positives, with the multi-positive InfoNCE of :func:`info_nce` (the mean over an
  anchor's positives, SupCon's L_out); logged: ``extra_pos_per_anchor``. None exists while the interval holds
  every score (the warm-up).
* Patches (spec 2.2): centres by farthest point sampling (:func:`pointtune.ops.fps`) from a random start point
  per cloud (``fps_start: random``; ``first``: point 0, as the ops' FPS); neighbours by
  :func:`pointtune.ops.knn` on xyz, sorted by distance, the centre itself excluded (a duplicate of it counts
  as a neighbour). Dilated positive: ranks 1, 1+d, ..., 1+(k-1)d of the ``k d`` nearest neighbours plus the
  centre (``k + 1`` points, as the anchor); ``dilated_ranks: last`` takes the other reading of "every d-th",
  ranks d, 2d, ..., kd. Patches index the points of the whole cloud: both encoders run
  on the whole cloud (unit-normalised by the data pipeline) and their point features are gathered per patch,
  so patch coordinates are never re-normalised (no patch is encoded on its own).
* A5: the similar sample rotates the **whole cloud** about the origin, ``E1`` runs on the rotated cloud and
  the same point indices are gathered (rotation keeps correspondence; normals, when fed, rotate too).
  ``rotation: axis`` (default): an axis drawn from x, y, z, angle ``U(-rotation_deg, rotation_deg)``
  (default 180); ``up``: about ``up_axis``; ``so3``: an axis uniform on the sphere (every rotation reachable
  at 180 degrees, not Haar-uniform). The original and rotated clouds go through ``E1`` as one batch.
  ``rot_mode: per_patch`` (the spec's option) instead cuts every patch out as a cloud of its own, centred on
  its centroid (:func:`standalone_patches`; centred, so that the location of a patch tells ``D`` nothing),
  rotates each patch by its own draw and encodes the patches alone, the dissimilar one included; stage 2
  then scores its negatives on patches encoded alike, so ``rot_mode`` is one of the keys a stage-2 run must
  share with its stage-1 run. It needs ``edgeconv_k <= patch_k + 1``.
* A, B of Eq. 4: one similar and one dissimilar pair per anchor, ``A = B = B_clouds M``; the dissimilar patch
  ``j = (i + r) mod M`` with ``r ~ U{1..M-1}`` per anchor (any other patch, uniformly, never ``i``). ``D`` is
  ``Linear(2F, 1)`` on ``[anchor, other]`` (anchor first), a logit; Eq. 4 through ``BCEWithLogits``.
* A6: ``G(X) = Linear(mean_{j in P_i} x_j)`` (a GCN layer on the patch's star graph with self-loops and
  symmetric normalisation reduces to it), with bias, no non-linearity; 32 -> 32 (G1), 256 -> 256 (G2).
  ``projection_head: true`` puts the spec's optional 2-layer MLP after ``G2`` (:class:`ProjectionHead`).
* A7: ``threshold_mode: absolute`` (default, the paper): ``b_l <= s <= b_u``. ``quantile``: per anchor, ``b_l``
  and ``b_u`` are quantile levels of ``{s(P_i, P_j)}_{j != i}``: the negatives are the ``j`` with
  ``v_(floor(b_l (n-1))) <= s_ij <= v_(ceil(b_u (n-1)))`` (``v`` the sorted scores, ``n = M - 1``), never empty.
  Clamp: the spec's "b_l <= b_u - min_width" would let the interval slide down towards easy negatives once
  the bounds meet; here each bound stops at its ``end`` instead, and the config checks that the interval
  can never be narrower than ``min_width`` (0.05): the lowest value ``b_u`` can take minus the highest
  ``b_l`` can take (:meth:`~pointtune.schedules.Schedule.value_range`).
* A8: an anchor without a negative in the interval contributes ``-log 1 = 0`` and is left out of the mean.
  When more than ``fallback_frac`` (0.5) of a batch's anchors are empty, each empty anchor takes the
  ``fallback_k`` (4) most similar other patches with ``s <= b_u`` (``fallback_k: 0``: never). Logged:
  ``no_negative_frac`` (anchors with no negative in the interval), ``dropped_frac`` (anchors still without
  one, left out), ``fallback`` (1 when the fallback ran), ``neg_per_anchor`` (mean negatives per anchor, the
  other clouds' patches included with ``cross_cloud_negatives``).
  With no anchor left the loss is a zero still attached to ``E2``/``G2`` (every parameter gets a gradient).
* A9: ``normalize: true`` (default) L2-normalises ``G2`` outputs (cosine similarity); ``false`` is Eq. 7's
  unnormalised dot product. ``temperature`` tau = 0.07.
* A10: the paper's Adam, lr 0.002 decayed x0.5 every 50 epochs (stage 2) is the :attr:`SCL.recipe`
  (``adamw`` with weight decay 0 is Adam); stage 1's x0.8 every 20 epochs over 128 epochs is
  ``method.stage1`` (:class:`Stage1Config`, used when ``pointtune train scl`` trains both stages). For a
  shorter run ``optim.lr.unit: fraction`` keeps the proportions (50/512 = 0.098, 20/128 = 0.156 of the
  run); the annealing is in fractions by default.
* A11: ``E1``: EdgeConv widths (64, 64, 128, 128), the last layer's 128-d output through the FC 128 -> 32;
  ``E2``: 8 EdgeConv of width 64, concatenated (512-d), FC 512 -> 256. Dynamic kNN graph in feature space at
  every layer (the first on xyz), edge feature ``[x_j - x_i, x_i]``, max over the edges; BN + LeakyReLU(0.2)
  after every convolution, the FC included (:class:`pointtune.backbones.dgcnn.EdgeConv`). Input: xyz; the
  per-point features named by ``backbone.inputs`` (e.g. normals, as the official code) are fed beside it.
* A16, A19: data and run length are config matters (ShapeNetPart ``data.variant=all`` for pretraining, judged
  by ``protocol.data``); the recipe sets 2048 points and no augmentation (the only transformation is the
  stage-1 rotation).
* A17: negatives from the same cloud only; ``cross_cloud_negatives: true`` adds every patch of the other
  clouds of the batch (of one worker under data parallelism; no hard-negative interval: their scores are not
  self-similarities). A18: ``s`` on the fly every step, under ``no_grad``, with the
  frozen eval-mode ``E1``/``G1``; not computed while the interval holds every score (``b_l <= 0``,
  ``b_u >= 1``, e.g. the warm-up), nor with ``hard_negatives: false`` (all other patches are negatives: the
  paper's "w/o HNS" ablation, Table 4; stage 2 then needs no stage-1 run).
* Stage 2 builds ``E1``/``G1`` from its own ``e1_widths``, ``sim_dim`` and ``edgeconv_k``, which must be the
  stage-1 run's, as its ``backbone.inputs`` (:func:`check_stage1_run`); their weights come from ``stage1_from``
  on a fresh start only (:meth:`SCL.warm_start`; a run first copies that checkpoint into
  ``<run dir>/sources/stage1_from``). The frozen network is part of stage 2's state dict, so its checkpoints
  hold it and rebuild without the stage-1 run. A relative ``stage1_from`` is made absolute when the config is
  validated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from pointtune.backbones.base import Backbone, BackboneOutput
from pointtune.backbones.dgcnn import EdgeConv
from pointtune.distributed import average_batchnorm_stats, rank
from pointtune.data.config import NO_AUGMENTATION
from pointtune.method import (BackboneConfig, Method, MethodConfig, Prerequisite, Task, point_inputs,
                              register_method)
from pointtune.schedules import Schedule, bounded
from pointtune.ops import fps, gather_points, knn

__all__ = [
    "SCLConfig",
    "SCL",
    "SCLEncoder",
    "PatchAggregator",
    "ProjectionHead",
    "sample_centres",
    "patch_indices",
    "random_rotation",
    "dissimilar_indices",
    "similarity_loss",
    "self_similarity",
    "negative_thresholds",
    "hard_negative_mask",
    "select_negatives",
    "extra_positive_mask",
    "info_nce",
    "rotate_clouds",
    "standalone_patches",
    "check_stage1_run",
]

_EPS = 1e-9  # tolerance on threshold arithmetic
# Section 4.1.1: 300 of 512 epochs on all negatives, then a step every 20 epochs (as fractions of the run).
_PAPER_ANNEALING = {"warmup_epochs": 300 / 512, "step_epochs": 20 / 512, "unit": "fraction"}


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class Stage1Config(BaseModel):
    """Stage 1 as ``pointtune train scl`` and ``pointtune sweep scl`` train it before stage 2 (paper section
    4.1.1, spec A10): its own epochs and StepLR schedule; every other key (data, batch, backbone inputs,
    optimizer) is the run's."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(128, ge=0, description="stage-1 epochs (paper 128)")
    lr: float = Field(2e-3, gt=0, description="stage-1 Adam learning rate (paper 0.002)")
    lr_step: float = Field(
        20 / 128, gt=0, le=1, description="StepLR period as a fraction of the stage-1 run (paper 20 of 128 epochs)")
    lr_gamma: float = Field(0.8, gt=0, description="StepLR factor (paper 0.8)")


class SCLConfig(MethodConfig):
    """Hyperparameters of SCL, named after the paper's symbols (spec section 3); see the module docstring for
    the readings behind each."""

    builds_backbone = False  # E1 and E2 are SCL's own DGCNNs (edgeconv_k, e1_widths, e2_widths)
    name: Literal["scl"] = Field("scl", description="method name")
    backbone: BackboneConfig = Field(
        BackboneConfig(name="dgcnn"),
        description="only backbone.inputs is read (per-point features fed to E1 and E2 beside xyz; paper: none); "
                    "the encoders are SCL's own DGCNNs (edgeconv_k, e1_widths, e2_widths)")
    # stages
    stage: Literal[1, 2] = Field(
        2, description="1: train the similarity network E1/G1/D (Eq. 4) | 2: the contrastive network E2/G2 (Eq. 7), "
                       "after training stage 1 first unless stage1_from names a stage-1 run")
    stage1_from: str | None = Field(
        None, description="stage 2: the stage-1 run (run, checkpoint or sweep directory) whose E1/G1 score "
                          "negatives; null: `pointtune train` / `sweep` train stage 1 first (method.stage1)")
    stage1: Stage1Config = Field(
        Stage1Config(), description="stage 1 as trained before stage 2 when stage1_from is null (paper: 128 epochs, "
                                    "Adam lr 0.002 x0.8 every 20 epochs)")
    # patches (Eq. 2, section 3.4)
    num_patches: int = Field(32, ge=2, description="M, patches (FPS centres) per cloud (not given; spec A2: 32)")
    patch_k: int = Field(32, ge=1, description="k, nearest neighbours of a centre in its patch, |P_i| = k + 1 (A3)")
    dilation: int = Field(
        2, ge=2, description="d, the positive keeps every d-th of the k d nearest neighbours (paper 2)")
    dilated_ranks: Literal["first", "last"] = Field(
        "first", description="the positive's neighbours: first: ranks 1, 1+d, ..., 1+(k-1)d (DeepGCN, official "
                             "code) | last: ranks d, 2d, ..., kd")
    fps_start: Literal["random", "first"] = Field(
        "random", description="first FPS centre: a random point per cloud and step | point 0")
    # encoders (section 4.1.1, A11)
    edgeconv_k: int = Field(20, ge=1, description="neighbours of every EdgeConv layer of E1 and E2 (paper 20)")
    e1_widths: list[Annotated[int, Field(ge=1)]] = Field(
        [64, 64, 128, 128], min_length=1,
        description="E1: EdgeConv widths; the last one feeds the FC to sim_dim (paper: 4 layers, 128-d; A11)")
    sim_dim: int = Field(32, ge=1, description="F, width of E1's point features and of G1 (paper 32)")
    e2_widths: list[Annotated[int, Field(ge=1)]] = Field(
        [64] * 8, min_length=1,
        description="E2: EdgeConv widths, all concatenated into the FC to point_dim (paper: 8 layers; A11: 64 each)")
    point_dim: int = Field(256, ge=1, description="H, width of E2's point features and of G2 (paper 256)")
    # stage 1: similar samples (section 3.3, A5)
    rotation: Literal["axis", "up", "so3"] = Field(
        "axis", description="similar sample's rotation axis: axis (x, y or z at random) | up (up_axis) | so3 (any)")
    rotation_deg: float = Field(
        180.0, gt=0, le=180, description="rotation angle drawn from U(-rotation_deg, rotation_deg) degrees (A5)")
    up_axis: Literal[0, 1, 2] = Field(1, description="rotation=up: the axis, 0 x, 1 y, 2 z")
    rot_mode: Literal["whole_cloud", "per_patch"] = Field(
        "whole_cloud", description="whole_cloud: rotate the cloud about the origin, E1 on whole clouds (A5) | "
                                   "per_patch: each patch centred on its centroid and encoded on its own by E1, "
                                   "in stage 1 and when stage 2 scores")
    # stage 2: contrast (Eq. 7)
    temperature: float = Field(0.07, gt=0, description="tau of Eq. 7 (not given; A9: 0.07)")
    normalize: bool = Field(
        True, description="L2-normalise the G2 embeddings (cosine, A9); false: Eq. 7's plain dot product")
    projection_head: bool = Field(
        False, description="a 2-layer MLP (Linear, ReLU, Linear; point_dim wide) after G2 (A6; the paper has none)")
    extra_positives_from_sim: bool = Field(
        False, description="patches scoring above the interval (s > b_u) are positives too, multi-positive "
                           "InfoNCE (A4; paper: the dilated patch only)")
    cross_cloud_negatives: bool = Field(
        False, description="every patch of the batch's other clouds is a negative too (A17; paper: same cloud only)")
    # stage 2: hard negatives (Eq. 5, section 3.4-3.5, A7-A8)
    hard_negatives: bool = Field(
        True, description="negatives with s in [b_l, b_u] (false: every other patch, the w/o-HNS ablation)")
    threshold_mode: Literal["absolute", "quantile"] = Field(
        "absolute", description="absolute: b_l <= s <= b_u (paper) | quantile: b_l, b_u are per-anchor quantiles (A7)")
    b_l: Annotated[Schedule, bounded(ge=0, le=1)] = Field(
        Schedule(start=0.0, end=0.5, shape="stairs", delta=0.05, **_PAPER_ANNEALING),
        description="lower bound of the hard-negative interval over the run (paper: +0.05 every 20 epochs after "
                    "300 of 512, from 0; A7: up to 0.5)")
    b_u: Annotated[Schedule, bounded(ge=0, le=1)] = Field(
        Schedule(start=1.0, end=0.75, shape="stairs", delta=-0.025, **_PAPER_ANNEALING),
        description="upper bound of the hard-negative interval over the run (paper: -0.025 every 20 epochs after "
                    "300 of 512, from 1; A7: down to 0.75)")
    min_width: float = Field(
        0.05, ge=0, le=1, description="b_u - b_l may never fall below it: checked on the schedules' ranges (A7)")
    fallback_frac: float = Field(
        0.5, ge=0, le=1, description="share of anchors without negatives above which they take the fallback (A8)")
    fallback_k: int = Field(
        4, ge=0, description="fallback: the k most similar other patches with s <= b_u (0: none; A8)")

    @field_validator("stage1_from")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        # Made absolute here (no existence check): the run is read when the method is built, maybe elsewhere.
        if value is None or not value.strip():
            return None
        if "://" in value:
            return value
        return str(Path(value).expanduser().absolute())

    @model_validator(mode="after")
    def _consistent(self) -> "SCLConfig":
        if self.backbone.name != "dgcnn" or self.backbone.model_extra:
            given = self.backbone.name if self.backbone.name != "dgcnn" else sorted(self.backbone.model_extra)[0]
            raise ValueError(f"backbone: SCL builds its own DGCNN encoders (edgeconv_k, e1_widths, e2_widths, "
                             f"point_dim); only backbone.inputs may be set, got {given!r}")
        if self.extra_positives_from_sim and not self.hard_negatives:
            raise ValueError("extra_positives_from_sim: the extra positives are scored by the stage-1 network, "
                             "which hard_negatives=false does not use; set hard_negatives=true")
        if self.rot_mode == "per_patch" and self.patch_k + 1 < self.edgeconv_k:
            raise ValueError(f"rot_mode: per_patch encodes a patch of patch_k + 1 = {self.patch_k + 1} points on "
                             f"its own, fewer than edgeconv_k = {self.edgeconv_k}; raise patch_k or lower edgeconv_k")
        if self.stage == 1 and self.stage1_from is not None:
            raise ValueError("stage1_from is read by stage 2 only: set method.stage=2 to train the contrastive "
                             "network from it, or leave stage1_from unset")
        lowest_u, highest_l = self.b_u.value_range()[0], self.b_l.value_range()[1]
        if lowest_u - highest_l < self.min_width - _EPS:
            raise ValueError(f"b_l, b_u: the interval can narrow to b_u - b_l = {lowest_u:g} - {highest_l:g} < "
                             f"min_width {self.min_width:g}; set b_l.end and b_u.end (stairs) or the ends of "
                             f"their shapes further apart")
        return self

    def bounds_at(self, epoch: float, total_epochs: int) -> tuple[float, float]:
        """``(b_l, b_u)`` at (fractional) ``epoch`` of a run of ``total_epochs``: the two schedules."""
        return self.b_l.at(epoch, total_epochs), self.b_u.at(epoch, total_epochs)


# --------------------------------------------------------------------------------------------------
# Networks (section 4.1.1, A6, A11)
# --------------------------------------------------------------------------------------------------


class SCLEncoder(Backbone):
    """SCL's DGCNN point encoder (``E1`` or ``E2``): ``forward_features(xyz (B, N, 3), features) ->
    BackboneOutput`` with point features ``(B, N, point_dim)`` and their average pooling ``(B, point_dim)``
    as the global feature (what ``forward`` returns).

    EdgeConv layers of ``widths`` (dynamic kNN graph of ``k`` neighbours in the space of each layer's input,
    the first on the coordinates; :class:`pointtune.backbones.dgcnn.EdgeConv`), then a point-wise FC
    (``Conv1d`` + BN + LeakyReLU(0.2)) from the last layer's output (``concat=False``, ``E1``) or from the
    concatenation of every layer's output (``concat=True``, ``E2``) to ``point_dim``.

    Args:
        widths: EdgeConv output widths, in order.
        point_dim: width of the point features (``E1``: F = 32, ``E2``: H = 256).
        k: EdgeConv neighbours (paper 20); clouds need ``N >= k`` points.
        concat: feed every EdgeConv output to the FC (``E2``) instead of the last one (``E1``).
        in_features: extra per-point input channels beside the coordinates (``backbone.inputs``).

    Raises:
        ValueError: an empty ``widths`` or a width, ``point_dim`` or ``k`` below 1.
    """

    def __init__(self, widths: Sequence[int], point_dim: int, k: int = 20, concat: bool = False,
                 in_features: int = 0):
        super().__init__()
        widths = list(widths)
        if not widths or min(widths) < 1 or point_dim < 1 or k < 1 or in_features < 0:
            raise ValueError(f"SCLEncoder: widths, point_dim and k must be >= 1, got widths={widths}, "
                             f"point_dim={point_dim}, k={k}, in_features={in_features}")
        convs, c_in = [], 3 + in_features
        for w in widths:
            convs.append(EdgeConv(c_in, w, k))
            c_in = w
        self.edge_convs = nn.ModuleList(convs)
        fc_in = sum(widths) if concat else widths[-1]
        self.fc = nn.Sequential(nn.Conv1d(fc_in, point_dim, 1, bias=False), nn.BatchNorm1d(point_dim),
                                nn.LeakyReLU(0.2))
        self.k, self.concat, self.in_features = k, concat, in_features
        self.out_dim = self.point_dim = point_dim

    def forward_features(self, xyz: torch.Tensor, features: torch.Tensor | None = None) -> BackboneOutput:
        """Point features ``(B, N, point_dim)`` at ``xyz`` ``(B, N, 3)`` (``N >= k``) and their mean over the
        points ``(B, point_dim)``; ``features`` ``(B, N, in_features)`` or ``None`` when ``in_features == 0``.

        Raises:
            ValueError: bad shapes, features given or missing against ``in_features``, or ``N < k``.
        """
        if xyz.dim() != 3 or xyz.shape[-1] != 3 or not xyz.is_floating_point():
            raise ValueError(f"SCL encoder: expected floating point coordinates (B, N, 3), got {tuple(xyz.shape)}")
        if (features is None) != (self.in_features == 0) or (
                features is not None and tuple(features.shape) != (*xyz.shape[:2], self.in_features)):
            got = None if features is None else tuple(features.shape)
            raise ValueError(f"SCL encoder: built for {self.in_features} extra input channels per point "
                             f"(method.backbone.inputs), got features {got}")
        if xyz.shape[1] < self.k:
            raise ValueError(f"method.edgeconv_k: clouds have N={xyz.shape[1]} points, fewer than the EdgeConv "
                             f"neighbourhood k={self.k}")
        x = xyz.transpose(1, 2)                                           # (B, 3, N)
        graph = None
        if features is not None:
            graph = x                                                     # the first graph on xyz alone
            x = torch.cat([x, features.transpose(1, 2).to(x.dtype)], dim=1)
        outs = []
        for conv in self.edge_convs:
            x = conv(x, graph)
            graph = None
            outs.append(x)
        h = self.fc(torch.cat(outs, dim=1) if self.concat else x)         # (B, point_dim, N)
        points = h.transpose(1, 2)                                        # (B, N, point_dim)
        return BackboneOutput(global_feature=points.mean(dim=1), point_features=points, point_xyz=xyz)


class PatchAggregator(nn.Module):
    """``G1`` / ``G2`` (A6): one GCN layer on the patch's star graph (self-loops, symmetric normalisation)
    followed by average pooling, which reduces to ``Linear(mean_{j in P_i} x_j)``:
    ``forward(x (..., k + 1, C)) -> (..., C)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        return self.linear(patch_features.mean(dim=-2))


class ProjectionHead(nn.Sequential):
    """The optional projection head after ``G2`` (A6, ``method.projection_head``; the paper has none): a
    2-layer MLP ``Linear(C, C) -> ReLU -> Linear(C, C)`` as in SimCLR (Chen et al., ICML 2020), mapping
    ``(..., C) -> (..., C)``. Downstream features are taken before it (``E2``'s)."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


# --------------------------------------------------------------------------------------------------
# Patches (Eq. 2, section 3.4) and similar / dissimilar samples (section 3.3)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_centres(xyz: torch.Tensor, m: int, generator: torch.Generator | None = None,
                   random_start: bool = True) -> torch.Tensor:
    """``m`` patch centres per cloud by farthest point sampling (:func:`pointtune.ops.fps`).

    With ``random_start`` the first centre is a random point of each cloud (the cloud is rolled by a random
    offset before FPS, whose first pick is point 0); otherwise point 0.

    Args:
        xyz: ``(B, N, 3)``.
        m: centres per cloud, ``2 <= m <= N`` for SCL (``1 <= m`` for FPS).
        generator: random stream on ``xyz.device`` (``None``: torch's global one).
        random_start: start from a random point.

    Returns:
        ``(B, m)`` int64 indices into ``N``.

    Raises:
        ValueError: ``m > N`` (the message names ``method.num_patches``).
    """
    b, n, _ = xyz.shape
    if m > n:
        raise ValueError(f"method.num_patches ({m}) exceeds the N={n} points of a cloud")
    if not random_start:
        return fps(xyz, m)
    start = torch.randint(0, n, (b, 1), generator=generator, device=xyz.device)
    order = (torch.arange(n, device=xyz.device) + start) % n                # (B, N): each cloud rolled
    return order.gather(1, fps(gather_points(xyz, order), m))


@torch.no_grad()
def patch_indices(xyz: torch.Tensor, centres: torch.Tensor, patch_k: int, dilation: int = 1,
                  ranks: str = "first") -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor patches (Eq. 2) and their dilated positives (section 3.4), as point indices.

    The ``patch_k * dilation`` nearest neighbours of every centre (Euclidean, xyz; :func:`pointtune.ops.knn`)
    are sorted by distance, the centre itself excluded (a duplicate point of it counts as a neighbour). The
    anchor is the centre followed by the first ``patch_k`` of them; the dilated patch the centre followed by
    one neighbour of every group of ``d`` consecutive ranks: the first, ranks ``1, 1 + d, ..., 1 + (k - 1) d``
    (``ranks="first"``, 1-based; ``nbrs[..., ::d]``), or the last, ranks ``d, 2d, ..., kd``
    (``ranks="last"``; ``nbrs[..., d-1::d]``). Both patches have ``k + 1`` points, the centre first.
    ``dilation == 1`` gives the anchor twice.

    Args:
        xyz: ``(B, N, 3)``.
        centres: ``(B, M)`` int64 indices into ``N`` (:func:`sample_centres`).
        patch_k: k.
        dilation: d.
        ranks: ``first`` or ``last`` (``method.dilated_ranks``).

    Returns:
        ``(anchor, dilated)``, each ``(B, M, k + 1)`` int64 indices into ``N``.

    Raises:
        ValueError: ``patch_k < 1``, ``dilation < 1`` or ``k d + 1 > N`` (naming the config keys).
    """
    if patch_k < 1 or dilation < 1 or ranks not in ("first", "last"):
        raise ValueError(f"patch_k and dilation must be >= 1 and ranks first or last, got {patch_k}, {dilation} "
                         f"and {ranks!r}")
    count = patch_k * dilation
    n = xyz.shape[1]
    if count + 1 > n:
        raise ValueError(f"method.patch_k x method.dilation + 1 = {count + 1} points per patch search exceeds the "
                         f"N={n} points of a cloud; lower them or raise data.num_points")
    cand = knn(gather_points(xyz, centres), xyz, count + 1)              # (B, M, kd + 1), nearest first
    is_centre = cand == centres.unsqueeze(-1)
    order = is_centre.to(torch.int8).argsort(dim=-1, stable=True)        # the centre (if found) last
    nbrs = cand.gather(-1, order)[..., :count]                           # (B, M, kd) without the centre
    centre = centres.unsqueeze(-1)
    anchor = torch.cat([centre, nbrs[..., :patch_k]], dim=-1)
    first = 0 if ranks == "first" else dilation - 1
    dilated = torch.cat([centre, nbrs[..., first::dilation][..., :patch_k]], dim=-1)
    return anchor, dilated


def random_rotation(b: int, mode: str = "axis", max_deg: float = 180.0, up_axis: int = 1,
                    generator: torch.Generator | None = None, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``b`` random rotation matrices (A5): axis-angle (Rodrigues) with angle ``U(-max_deg, max_deg)`` degrees
    and axis x, y or z at random (``axis``), ``up_axis`` (``up``) or uniform on the sphere (``so3``).

    Returns:
        ``(b, 3, 3)``, orthonormal with determinant 1; apply as ``points @ R.transpose(1, 2)``.

    Raises:
        ValueError: unknown ``mode`` or ``up_axis``.
    """
    if mode not in ("axis", "up", "so3") or up_axis not in (0, 1, 2):
        raise ValueError(f"mode must be axis, up or so3 and up_axis 0, 1 or 2, got {mode!r}, {up_axis!r}")
    eye = torch.eye(3, device=device, dtype=dtype)
    if mode == "axis":
        axis = eye[torch.randint(0, 3, (b,), generator=generator, device=device)]
    elif mode == "up":
        axis = eye[up_axis].expand(b, 3)
    else:
        axis = F.normalize(torch.randn(b, 3, generator=generator, device=device, dtype=dtype), dim=1)
    u = torch.rand(b, generator=generator, device=device, dtype=dtype)
    theta = (2.0 * u - 1.0) * math.radians(max_deg)
    x, y, z = axis.unbind(dim=1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=1).view(b, 3, 3)
    sin, cos = theta.sin().view(b, 1, 1), theta.cos().view(b, 1, 1)
    return eye + sin * skew + (1.0 - cos) * (skew @ skew)


def rotate_clouds(clouds: dict[str, torch.Tensor], rot: torch.Tensor) -> dict[str, torch.Tensor]:
    """``clouds`` (a batch: ``points`` ``(B, N, 3)``, maybe ``normals`` ``(B, N, 3)`` and other per-point
    inputs) with its points and normals rotated by ``rot`` ``(B, 3, 3)`` (:func:`random_rotation`), in
    float32, returned in their own dtype; the other entries unchanged."""
    out = dict(clouds)
    for name in ("points", "normals"):
        if name in clouds:
            out[name] = (clouds[name].float() @ rot.transpose(1, 2)).to(clouds[name].dtype)
    return out


def standalone_patches(batch: dict[str, torch.Tensor], idx: torch.Tensor,
                       inputs: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Every patch as a cloud of its own (A5, ``rot_mode: per_patch``): the points ``idx`` ``(B, M, k + 1)`` of
    ``batch["points"]`` ``(B, N, 3)``, centred on the patch's centroid, as ``points`` ``(B M, k + 1, 3)``
    (cloud ``b``'s patch ``i`` at row ``b M + i``), and each per-point input named in ``inputs`` (e.g.
    ``normals``) gathered alike, uncentred.

    Raises:
        KeyError: the batch lacks one of ``inputs`` (the message names ``method.backbone.inputs``).
    """
    missing = [name for name in inputs if name not in batch]
    if missing:
        raise KeyError(f"method.backbone.inputs: the batch has no {missing[0]!r}")
    patches = gather_points(batch["points"], idx)                                 # (B, M, k + 1, 3)
    out = {"points": (patches - patches.mean(dim=2, keepdim=True)).flatten(0, 1)}
    for name in inputs:
        out[name] = gather_points(batch[name], idx).flatten(0, 1)
    return out


def dissimilar_indices(b: int, m: int, generator: torch.Generator | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
    """For every anchor ``i`` of ``b`` clouds of ``m`` patches, another patch ``j = (i + r) mod m``,
    ``r ~ U{1, ..., m - 1}``: uniform over the other patches, never ``i``. Returns ``(b, m)`` int64.

    Raises:
        ValueError: ``m < 2``.
    """
    if m < 2:
        raise ValueError(f"a dissimilar patch needs at least 2 patches per cloud, got {m}")
    offset = torch.randint(1, m, (b, m), generator=generator, device=device)
    return (torch.arange(m, device=device) + offset) % m


# --------------------------------------------------------------------------------------------------
# Losses and scores (Eqs. 4, 5, 7)
# --------------------------------------------------------------------------------------------------


def similarity_loss(pos_logits: torch.Tensor, neg_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 4: ``-1/(A+B) (sum_A log D(similar pair) + sum_B log(1 - D(dissimilar pair)))`` with
    ``D = sigmoid(logit)``, computed stably from the logits (``BCEWithLogits`` sums).

    Args:
        pos_logits: logits of the ``A`` similar pairs (any shape).
        neg_logits: logits of the ``B`` dissimilar pairs (any shape).

    Returns:
        A scalar.

    Raises:
        ValueError: no pair at all.
    """
    a, b = pos_logits.numel(), neg_logits.numel()
    if a + b == 0:
        raise ValueError("Eq. 4 needs at least one pair")
    pos = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits), reduction="sum")
    neg = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="sum")
    return (pos + neg) / (a + b)


def self_similarity(z: torch.Tensor) -> torch.Tensor:
    """Eq. 5: ``s(P_i, P_j) = |z_i . z_j| / (|z_i| |z_j|)`` for the patch embeddings ``z`` ``(B, M, F)``
    (``G1`` outputs) of each cloud; returns ``(B, M, M)`` in ``[0, 1]`` (clamped against rounding; a zero
    embedding scores 0)."""
    zn = F.normalize(z, dim=-1)
    return (zn @ zn.transpose(-1, -2)).abs().clamp(0.0, 1.0)


def negative_thresholds(s: torch.Tensor, b_l: float, b_u: float,
                        mode: str = "absolute") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor lower and upper score thresholds ``(B, M, 1)`` of the interval (A7).

    ``absolute``: ``b_l`` and ``b_u``. ``quantile``: with ``v`` the sorted scores ``s_ij`` of the ``n = M - 1``
    other patches of anchor ``i``, ``v[floor(b_l (n - 1))]`` and ``v[ceil(b_u (n - 1))]`` (0-based): actual
    scores, so the interval always holds at least one negative.

    Raises:
        ValueError: ``s`` not ``(B, M, M)`` or an unknown ``mode``.
    """
    if s.dim() != 3 or s.shape[-1] != s.shape[-2]:
        raise ValueError(f"s must be (B, M, M), got {tuple(s.shape)}")
    b, m, _ = s.shape
    if mode == "absolute":
        return s.new_full((b, m, 1), b_l), s.new_full((b, m, 1), b_u)
    if mode != "quantile":
        raise ValueError(f"mode must be absolute or quantile, got {mode!r}")
    eye = torch.eye(m, dtype=torch.bool, device=s.device)
    ranked = s.masked_fill(eye, float("inf")).sort(dim=-1).values      # the other patches first, ascending
    top = max(m - 2, 0)
    lo = min(top, max(0, math.floor(b_l * top + _EPS)))
    hi = min(top, max(lo, math.ceil(b_u * top - _EPS)))
    return ranked[..., lo:lo + 1], ranked[..., hi:hi + 1]


def hard_negative_mask(s: torch.Tensor, b_l: float, b_u: float, mode: str = "absolute") -> torch.Tensor:
    """Hard negatives (section 3.4): ``mask[b, i, j]`` is True when ``j != i`` and ``s_ij`` lies in the closed
    interval of :func:`negative_thresholds`; ``(B, M, M)`` bool."""
    lower, upper = negative_thresholds(s, b_l, b_u, mode)
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    return (s >= lower) & (s <= upper) & ~eye


def extra_positive_mask(s: torch.Tensor, b_l: float, b_u: float, mode: str = "absolute") -> torch.Tensor:
    """Extra positives (A4, ``method.extra_positives_from_sim``): ``mask[b, i, j]`` is True when ``j != i`` and
    ``s_ij`` lies *above* the upper threshold of :func:`negative_thresholds` (absolute: ``s_ij > b_u``): the
    patches the similarity network judges more similar than any hard negative. ``(B, M, M)`` bool, disjoint
    from the negatives of :func:`select_negatives` (fallback included: its patches have ``s <= b_u``)."""
    _, upper = negative_thresholds(s, b_l, b_u, mode)
    eye = torch.eye(s.shape[-1], dtype=torch.bool, device=s.device)
    return (s > upper) & ~eye


def select_negatives(s: torch.Tensor, b_l: float, b_u: float, mode: str = "absolute", fallback_frac: float = 0.5,
                     fallback_k: int = 4) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The negatives of every anchor with the empty-set rule of A8.

    :func:`hard_negative_mask`; then, when more than ``fallback_frac`` of all anchors have none and
    ``fallback_k > 0``, each anchor without one takes the ``fallback_k`` other patches of highest ``s`` among
    those with ``s`` at most the upper threshold (fewer when fewer qualify; none when none does).

    Returns:
        ``(mask (B, M, M) bool, empty (B, M) bool: anchors with no negative in the interval, fallback used)``.
    """
    mask = hard_negative_mask(s, b_l, b_u, mode)
    empty = ~mask.any(dim=-1)
    m = s.shape[-1]
    use = fallback_k > 0 and m > 1 and bool(empty.any()) and empty.float().mean().item() > fallback_frac
    if use:
        _, upper = negative_thresholds(s, b_l, b_u, mode)
        eye = torch.eye(m, dtype=torch.bool, device=s.device)
        allowed = (s <= upper) & ~eye
        score = s.masked_fill(~allowed, float("-inf"))
        top = score.topk(min(fallback_k, m - 1), dim=-1)
        extra = torch.zeros_like(mask).scatter(-1, top.indices, top.values > float("-inf"))
        mask = torch.where(empty.unsqueeze(-1), extra, mask)
    return mask, empty, use


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, neg_mask: torch.Tensor, temperature: float,
             normalize: bool = True, pos_mask: torch.Tensor | None = None,
             cross_cloud: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 for every anchor patch: ``-log(f(i, i+) / (f(i, i+) + sum_{j in mask_i} f(i, j)))`` with
    ``f(i, j) = exp(a_i . a_j / tau)`` (``f(i, i+) = exp(a_i . p_i / tau)``); the negatives are the anchors'
    own (non-dilated) embeddings ``a_j`` of the same cloud.

    Two extensions, each Eq. 7 itself when off:

    * ``pos_mask`` (A4): patches ``j`` of the same cloud that are positives of anchor ``i`` beside its dilated
      patch. With ``P_i = {i+} + {j: pos_mask_ij}`` the term is the mean over the positives (the multi-positive
      InfoNCE "L_out" of Khosla et al., *Supervised Contrastive Learning*, NeurIPS 2020, Eq. 2)::

          -1/|P_i| sum_{p in P_i} log( f(i, p) / (sum_{q in P_i} f(i, q) + sum_{j in mask_i} f(i, j)) )

    * ``cross_cloud`` (A17): every patch of the batch's other clouds is a negative too (the sum over negatives
      also runs over the ``(B - 1) M`` embeddings ``a_j`` of the other clouds).

    Args:
        anchor: ``(B, M, C)`` ``G2`` embeddings of the anchor patches.
        positive: ``(B, M, C)`` ``G2`` embeddings of their dilated patches.
        neg_mask: ``(B, M, M)`` bool, ``[b, i, j]``: patch ``j`` is a negative of anchor ``i``.
        temperature: tau > 0.
        normalize: L2-normalise the embeddings first (cosine; A9).
        pos_mask: ``(B, M, M)`` bool extra positives, disjoint from ``neg_mask``, or ``None``.
        cross_cloud: add the other clouds' patches as negatives.

    Returns:
        ``(loss (B, M), valid (B, M))``: each anchor's term (0 for an anchor without negatives and extra
        positives) and whether it has at least one negative.

    Raises:
        ValueError: inconsistent shapes, ``temperature <= 0`` or a patch both a negative and a positive.
    """
    square = anchor.dim() == 3 and neg_mask.shape == (*anchor.shape[:2], anchor.shape[1])
    if not square or positive.shape != anchor.shape or (pos_mask is not None and pos_mask.shape != neg_mask.shape):
        raise ValueError(f"expected anchor and positive (B, M, C) and neg_mask, pos_mask (B, M, M), got "
                         f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(neg_mask.shape)} and "
                         f"{None if pos_mask is None else tuple(pos_mask.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b, m = anchor.shape[:2]
    if pos_mask is None:
        pos_mask = torch.zeros_like(neg_mask)
    if bool((pos_mask & neg_mask).any()):
        raise ValueError("info_nce: a patch is both a negative and a positive of the same anchor")
    if normalize:
        anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    pos = (anchor * positive).sum(dim=-1) / temperature                  # (B, M)
    if cross_cloud:                                                      # columns: every patch of the batch
        sim = (anchor @ anchor.reshape(b * m, -1).T) / temperature       # (B, M, B M)
        same = torch.eye(b, dtype=torch.bool, device=anchor.device).view(b, 1, b, 1)
        neg_mask = torch.where(same, neg_mask.unsqueeze(2), True).reshape(b, m, b * m)
        pos_mask = torch.where(same, pos_mask.unsqueeze(2), False).reshape(b, m, b * m)
    else:
        sim = (anchor @ anchor.transpose(-1, -2)) / temperature         # (B, M, M)
    logits = torch.cat([pos.unsqueeze(-1), sim.masked_fill(~(neg_mask | pos_mask), float("-inf"))], dim=-1)
    positives = pos + sim.masked_fill(~pos_mask, 0.0).sum(dim=-1)
    count = 1 + pos_mask.sum(dim=-1)
    return torch.logsumexp(logits, dim=-1) - positives / count, neg_mask.any(dim=-1)


# --------------------------------------------------------------------------------------------------
# Stage 1 network, for stage 2
# --------------------------------------------------------------------------------------------------

# The keys that build E1 / G1 and say what they encode: stage 2 builds and runs its frozen copy from its own
# values, which must be the stage-1 run's.
_SIMILARITY_KEYS = ("e1_widths", "sim_dim", "edgeconv_k", "rot_mode")


def check_stage1_run(source: Method, cfg: SCLConfig) -> None:
    """Check that ``source`` (the method rebuilt from ``cfg.stage1_from``'s checkpoint) is an SCL stage-1 run
    whose ``E1`` / ``G1`` the stage-2 config ``cfg`` builds: the same ``backbone.inputs``, ``e1_widths``,
    ``sim_dim`` and ``edgeconv_k``.

    Raises:
        ConfigError: one line starting ``method.stage1_from:``: a run of another method or of SCL's stage 2,
            other per-point inputs, or other E1 / G1 keys (named, with both values).
    """
    from pointtune.errors import ConfigError

    name, given = source.cfg.name, source.cfg
    if name != "scl" or getattr(given, "stage", None) != 1:
        what = f"a {name!r} run" if name != "scl" else "an SCL stage-2 run"
        raise ConfigError(f"method.stage1_from: {cfg.stage1_from} is {what}, not an SCL stage-1 run (method.stage=1)")
    if list(given.backbone.inputs) != list(cfg.backbone.inputs):
        raise ConfigError(f"method.stage1_from: the stage-1 run was fed backbone.inputs={list(given.backbone.inputs)}, "
                          f"this run method.backbone.inputs={list(cfg.backbone.inputs)}; they must match")
    differ = [key for key in _SIMILARITY_KEYS if getattr(given, key) != getattr(cfg, key)]
    if differ:
        theirs = ", ".join(f"method.{key}={getattr(given, key)}" for key in differ)
        ours = ", ".join(f"{getattr(cfg, key)}" for key in differ)
        raise ConfigError(f"method.stage1_from: the stage-1 run has {theirs}, this run {ours}; stage 2 builds E1/G1 "
                          f"from these keys, which must match (set them to the stage-1 run's)")


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


@register_method("scl")
class SCL(Method):
    """SCL in one of its two stages (``cfg.stage``); see the module docstring.

    * Stage 1: ``e1`` (:class:`SCLEncoder`, F = ``sim_dim``), ``g1`` (:class:`PatchAggregator`) and ``disc``
      (``Linear(2F, 1)``), all trained with Eq. 4. ``forward`` returns ``loss`` and the diagnostics
      ``bce_similar`` / ``bce_dissimilar`` (the two sums of Eq. 4 per pair), ``sim_acc`` (pairs on the right side
      of ``D = 0.5``) and ``s_mean`` (mean Eq. 5 score of different patches of a cloud: where the absolute
      thresholds of stage 2 fall).
    * Stage 2: ``e2`` (H = ``point_dim``), ``g2`` and ``head`` (:class:`ProjectionHead` with
      ``projection_head``, an identity otherwise), trained with Eq. 7; ``e1`` / ``g1`` from
      ``stage1_from``, frozen (``requires_grad=False``, kept in eval mode by :meth:`train`), absent with
      ``hard_negatives=False``. ``forward`` returns ``loss``, ``b_l``, ``b_u``, ``neg_per_anchor``,
      ``no_negative_frac``, ``dropped_frac``, ``fallback`` (A8), ``pos_cos`` (mean cosine of the anchor
      and positive embeddings) and, with ``extra_positives_from_sim``, ``extra_pos_per_anchor`` (A4).

    Data parallelism (:meth:`ddp_options`): every trainable parameter gets a gradient at every step (the
    loss without a valid anchor is a zero attached to them), so ``find_unused_parameters=False``; the frozen
    network requires no gradient and DDP leaves it out. The only buffers are BatchNorm statistics:
    ``forward_sync_buffers=False`` and :meth:`after_step` averages those of the layers in training mode over
    the workers (the frozen network is in eval mode and never changes). Each worker draws its centres,
    rotations and dissimilar patches from its own stream (the seed is offset by the rank).
    """

    task = Task.PRETRAIN
    Config = SCLConfig
    from_key = "method.stage1_from"
    sources = {"method.stage1_from": None}  # E1 / G1 are built from this config's own keys
    # Section 4.1.1 (A10): Adam (adamw with no weight decay), lr 0.002 halved every 50 of 512 epochs: stage 2's
    # schedule, as a fraction of the run (stage 1's: method.stage1). 2048 points per cloud, no augmentation in
    # the data pipeline (section 4.3 of the spec: the only transformation is the stage-1 rotation, made by the
    # method). Batch 32 is the default.
    recipe = {
        "optim": {"name": "adamw", "weight_decay": 0.0,
                  "lr": {"start": 2e-3, "shape": "step", "step_epochs": 50 / 512, "gamma": 0.5, "unit": "fraction"}},
        "data": {"num_points": 2048,
                 "augment": NO_AUGMENTATION},
    }

    @classmethod
    def prerequisite(cls, cfg: SCLConfig) -> Prerequisite | None:
        """Stage 2 with hard negatives and no ``stage1_from`` needs its stage-1 run first: the same config with
        ``stage: 1`` and ``method.stage1``'s epochs and StepLR schedule, in ``<run dir>/stage1``. Before it
        exists, stage 2 is checked with ``hard_negatives: false`` (the same encoder and patches)."""
        if cfg.stage != 2 or not cfg.hard_negatives or cfg.stage1_from is not None:
            return None
        s1 = cfg.stage1
        lr = {"start": s1.lr, "shape": "step", "step_epochs": s1.lr_step, "gamma": s1.lr_gamma, "unit": "fraction",
              "warmup_epochs": 0.0}
        return Prerequisite("stage1", {"method.stage": 1, "train.epochs": s1.epochs, "optim.lr": lr},
                            key="method.stage1_from",
                            stand_in={"method.hard_negatives": False, "method.extra_positives_from_sim": False},
                            own_keys=("method.stage1", "method.rotation", "method.rotation_deg", "method.up_axis",
                                      "method.e1_widths", "method.sim_dim", "method.rot_mode"))

    def __init__(self, cfg: SCLConfig, num_classes: int = 0, total_epochs: int = 1):
        super().__init__(cfg, num_classes, total_epochs)
        in_features = int(cfg.backbone.kwargs().get("in_features", 0))
        self.e1: SCLEncoder | None = None
        self.g1: PatchAggregator | None = None
        if cfg.stage == 2:
            self.e2 = SCLEncoder(cfg.e2_widths, cfg.point_dim, cfg.edgeconv_k, concat=True, in_features=in_features)
            self.g2 = PatchAggregator(cfg.point_dim)
            self.head = ProjectionHead(cfg.point_dim) if cfg.projection_head else nn.Identity()
        if cfg.stage == 1 or cfg.hard_negatives:
            self.e1 = SCLEncoder(cfg.e1_widths, cfg.sim_dim, cfg.edgeconv_k, concat=False, in_features=in_features)
            self.g1 = PatchAggregator(cfg.sim_dim)
        if cfg.stage == 1:
            self.disc = nn.Linear(2 * cfg.sim_dim, 1)
        elif cfg.hard_negatives:   # frozen: its weights come from stage1_from (warm_start)
            for module in (self.e1, self.g1):
                module.requires_grad_(False)
                module.eval()

    def weight_sources(self) -> dict[str, str]:
        """Stage 2 with hard negatives: ``{"method.stage1_from": path}``, whose ``E1`` / ``G1`` score the
        negatives; otherwise none."""
        return {"method.stage1_from": self.cfg.stage1_from} if self.frozen and self.cfg.stage1_from else {}

    def warm_start(self, sources: dict[str, Method]) -> None:
        """Stage 2 with hard negatives: load ``E1`` / ``G1`` (weights and BatchNorm statistics) from the stage-1
        run ``sources["method.stage1_from"]`` after :func:`check_stage1_run`; nothing otherwise.

        Raises:
            ConfigError: one line starting ``method.stage1_from:``: no stage-1 run given, or one that does not
                fit (:func:`check_stage1_run`).
        """
        if not self.frozen:
            return
        source = sources.get("method.stage1_from")
        if source is None:
            from pointtune.errors import ConfigError

            raise ConfigError("method.stage1_from: stage 2 needs the stage-1 run whose similarity network scores "
                              "the negatives (train it with `pointtune train scl --set method.stage=1`, then pass "
                              "--set method.stage1_from=<its run directory>)")
        check_stage1_run(source, self.cfg)
        self.e1.load_state_dict(source.e1.state_dict())
        self.g1.load_state_dict(source.g1.state_dict())

    @property
    def frozen(self) -> bool:
        """Whether this method holds the frozen stage-1 network (stage 2 with hard negatives)."""
        return self.cfg.stage == 2 and self.e1 is not None

    def train(self, mode: bool = True) -> "SCL":
        """``nn.Module.train``, keeping the frozen stage-1 network in eval mode (its BatchNorm statistics)."""
        super().train(mode)
        if self.frozen:
            self.e1.eval()
            self.g1.eval()
        return self

    def _generator(self, points: torch.Tensor) -> torch.Generator:
        seed = int(torch.randint(0, 2**62, (1,)).item())
        gen = torch.Generator(device=points.device)
        gen.manual_seed((seed + 1_000_003 * rank()) % 2**62)  # workers seeded alike draw different patches
        return gen

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        """Loss of one mini-batch of ``batch["points"]`` ``(B, N, 3)`` (and the per-point inputs of
        ``method.backbone.inputs``): Eq. 4 in stage 1, Eq. 7 in stage 2 (bounds at epoch ``progress *
        total_epochs``). Patches, rotations and losses in float32 with autocast off; the encoders run under
        the caller's autocast. Random draws come from a generator on the points' device seeded from torch's
        global RNG, so a run is reproducible under ``torch.manual_seed``.

        Raises:
            KeyError: a per-point input of ``method.backbone.inputs`` is missing from the batch.
            ValueError: clouds too small for ``num_patches``, ``patch_k x dilation + 1`` or ``edgeconv_k``.
        """
        if self.cfg.stage == 1:
            return self._similarity_step(batch)
        return self._contrastive_step(batch, progress * self.total_epochs)

    def _similarity_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg: SCLConfig = self.cfg
        points = batch["points"]
        b, m = points.shape[0], cfg.num_patches
        gen = self._generator(points)
        with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
            xyz = points.float()
            centres = sample_centres(xyz, m, gen, cfg.fps_start == "random")
            idx, _ = patch_indices(xyz, centres, cfg.patch_k, 1)
            clouds = self._similarity_clouds(batch, idx)      # whole clouds, or every patch on its own (A5)
            rot = random_rotation(clouds["points"].shape[0], cfg.rotation, cfg.rotation_deg, cfg.up_axis, gen,
                                  points.device)
            rotated = rotate_clouds(clouds, rot)
            other = dissimilar_indices(b, m, gen, points.device)
        z, z_rot = self._similarity_embeddings([clouds, rotated], idx)      # (B, M, F) each
        z_other = z.gather(1, other.unsqueeze(-1).expand(-1, -1, z.shape[-1]))
        with torch.autocast(device_type=points.device.type, enabled=False):
            wide = torch.promote_types(z.dtype, torch.float32)           # half -> float32; float64 stays
            z, z_rot, z_other = z.to(wide), z_rot.to(wide), z_other.to(wide)
            pos = self.disc(torch.cat([z, z_rot], dim=-1)).squeeze(-1)   # (B, M) logits, anchor first
            neg = self.disc(torch.cat([z, z_other], dim=-1)).squeeze(-1)
            loss = similarity_loss(pos, neg)
            with torch.no_grad():
                s = self_similarity(z.detach())
                off = ~torch.eye(m, dtype=torch.bool, device=s.device)
                out = {
                    "loss": loss,
                    "bce_similar": F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)),
                    "bce_dissimilar": F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg)),
                    "sim_acc": torch.cat([(pos > 0).float().flatten(), (neg < 0).float().flatten()]).mean(),
                    "s_mean": s[:, off].mean(),
                }
        return out

    def _similarity_clouds(self, batch: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """What ``E1`` encodes (A5): the batch itself (``rot_mode: whole_cloud``) or each patch of ``idx``
        ``(B, M, k + 1)`` as a cloud of its own (``per_patch``, :func:`standalone_patches`)."""
        if self.cfg.rot_mode == "whole_cloud":
            return batch
        return standalone_patches(batch, idx, self.cfg.backbone.inputs)

    def _similarity_embeddings(self, clouds: list[dict[str, torch.Tensor]], idx: torch.Tensor) -> list[torch.Tensor]:
        """``G1`` embeddings ``(B, M, F)`` of the patches ``idx`` ``(B, M, k + 1)`` in each of ``clouds``
        (batches of :meth:`_similarity_clouds`, alike in shape), ``E1`` run once on all of them."""
        dtype = clouds[0]["points"].dtype
        feats = [point_inputs(c, self.cfg.backbone) for c in clouds]
        f = self.e1.forward_features(torch.cat([c["points"].to(dtype) for c in clouds]),
                                     None if feats[0] is None else torch.cat(feats)).point_features
        b, m = idx.shape[:2]
        if self.cfg.rot_mode == "per_patch":                              # rows: the patches, (B M, k + 1, F)
            return [self.g1(chunk).view(b, m, -1) for chunk in f.chunk(len(clouds))]
        return [self.g1(gather_points(chunk, idx)) for chunk in f.chunk(len(clouds))]

    def _needs_scores(self, b_l: float, b_u: float) -> bool:
        # The interval holds every score (b_l <= 0, b_u >= 1, in either mode): all other patches are negatives.
        return self.frozen and not (b_l <= 0.0 and b_u >= 1.0)

    def _contrastive_step(self, batch: dict[str, torch.Tensor], now: float) -> dict[str, torch.Tensor]:
        cfg: SCLConfig = self.cfg
        points = batch["points"]
        m = cfg.num_patches
        gen = self._generator(points)
        with torch.no_grad(), torch.autocast(device_type=points.device.type, enabled=False):
            xyz = points.float()
            centres = sample_centres(xyz, m, gen, cfg.fps_start == "random")
            idx, idx_dil = patch_indices(xyz, centres, cfg.patch_k, cfg.dilation, cfg.dilated_ranks)
        feats = point_inputs(batch, cfg.backbone)
        h = self.e2.forward_features(points, feats).point_features       # (B, N, H)
        a = self.head(self.g2(gather_points(h, idx)))                     # (B, M, H)
        p = self.head(self.g2(gather_points(h, idx_dil)))
        b_l, b_u = cfg.bounds_at(now, self.total_epochs)
        off = ~torch.eye(m, dtype=torch.bool, device=points.device)
        fallback, extra = False, None
        if self._needs_scores(b_l, b_u):
            with torch.no_grad():
                z = self._similarity_embeddings([self._similarity_clouds(batch, idx)], idx)[0]
                with torch.autocast(device_type=points.device.type, enabled=False):
                    s = self_similarity(z.to(torch.promote_types(z.dtype, torch.float32)))
                    mask, empty, fallback = select_negatives(s, b_l, b_u, cfg.threshold_mode, cfg.fallback_frac,
                                                             cfg.fallback_k)
                    if cfg.extra_positives_from_sim:
                        extra = extra_positive_mask(s, b_l, b_u, cfg.threshold_mode)
        else:   # every score lies in the interval: all other patches are negatives, none is above it
            mask = off.expand(points.shape[0], m, m)
            empty = torch.zeros(points.shape[0], m, dtype=torch.bool, device=points.device)
        with torch.autocast(device_type=points.device.type, enabled=False):
            wide = torch.promote_types(a.dtype, torch.float32)           # half -> float32; float64 stays
            a, p = a.to(wide), p.to(wide)
            per_anchor, valid = info_nce(a, p, mask, cfg.temperature, cfg.normalize, extra,
                                         cfg.cross_cloud_negatives)
            loss = per_anchor[valid].mean() if bool(valid.any()) else (a.sum() + p.sum()) * 0.0
            ref = loss.detach()
            out = {
                "loss": loss,
                "b_l": ref.new_tensor(b_l),
                "b_u": ref.new_tensor(b_u),
                "neg_per_anchor": mask.float().sum(dim=-1).mean() + cfg.cross_cloud_negatives * (a.shape[0] - 1) * m,
                "no_negative_frac": empty.float().mean(),
                "dropped_frac": (~valid).float().mean(),
                "fallback": ref.new_tensor(float(fallback)),
                "pos_cos": F.cosine_similarity(a.detach(), p.detach(), dim=-1).mean(),
            }
            if cfg.extra_positives_from_sim:
                out["extra_pos_per_anchor"] = ref.new_tensor(0.0) if extra is None else extra.float().sum(-1).mean()
        return out

    def after_step(self, step: int, total_steps: int) -> None:
        """Average the BatchNorm running statistics of the layers in training mode over the data-parallel
        workers (see the class docstring); a no-op in a single process."""
        average_batchnorm_stats(self)

    def ddp_options(self) -> dict[str, bool]:
        """``find_unused_parameters=False`` and ``forward_sync_buffers=False`` (see the class docstring)."""
        return {"find_unused_parameters": False, "forward_sync_buffers": False}

    def encoder(self) -> nn.Module:
        """The transferable encoder: ``E2`` in stage 2, ``E1`` in stage 1 (an :class:`SCLEncoder`: ``forward``
        gives the average-pooled global feature, ``forward_features`` the point features too)."""
        return self.e2 if self.cfg.stage == 2 else self.e1

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Global features ``(B, D)`` of ``batch["points"]`` ``(B, N, 3)``: the average pooling of the
        encoder's point features (section 4.1.1; D = ``point_dim`` in stage 2, ``sim_dim`` in stage 1); the
        caller puts the module in eval mode."""
        return self.encoder()(batch["points"], point_inputs(batch, self.cfg.backbone))

    @torch.no_grad()
    def embed_points(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-point features ``(B, N, C)`` of every input point of ``batch["points"]`` ``(B, N, 3)``: ``H``
        of ``E2`` in stage 2 (C = ``point_dim``, the part-segmentation input of section 4.2.1), ``E1``'s in
        stage 1."""
        enc = self.encoder()
        return enc.forward_features(batch["points"], point_inputs(batch, self.cfg.backbone)).point_features
