"""PointNeXt segmentation network (Qian, Li, Peng, Mai, Hammoud, Elhoseiny, Ghanem, "PointNeXt: Revisiting
PointNet++ with Improved Training and Scaling Strategies", NeurIPS 2022), in pure PyTorch on
:mod:`pointtune.ops`; the backbone of AMContrast3D (spec ``amcontrast3d.md`` §4, notation §2.0).

Architecture (the paper's Fig. 2 and its "architecture modernization" section: receptive-field scaling, model
scaling; "Sec. AM" below):

* **stem**: a shared MLP (``Linear`` + BN + ReLU) from the input channels to ``width``, at the ``N`` input points
  (encoder level 0);
* **stages** ``s = 1..L`` (``L = 4``): a set-abstraction (SA) block that picks ``N_{s-1} // stride`` centres by
  farthest point sampling, groups up to ``nsample`` neighbours per centre by ball query with the
  relative coordinates normalised by the radius (``dp / r``, Sec. AM "normalizing Δp"),
  and reduces ``[dp/r, f_j]`` with an MLP and max pooling; then ``blocks[s-1]`` InvResMLP blocks (Sec. AM:
  local aggregation, two pointwise layers with an inverted bottleneck of ``expansion``, a residual). The width
  doubles at every stage (``width * 2**s``) and so does the ball radius (Sec. AM / the official configs'
  radius scaling 2): the SA of stage ``s`` groups at ``radius * 2**(s-1)``, the InvResMLP blocks of stage ``s``
  at ``radius * 2**s``;
* **decoder**: feature propagation (PointNet++ Sec. 3.4) from the coarsest level back to the input, at every
  level three-NN inverse-distance interpolation of the coarser decoder features, concatenation with the
  encoder skip features of that level and a 2-layer MLP to the encoder width of the level;
* **head**: ``Linear`` + BN + ReLU + dropout + ``Linear`` to ``num_classes`` logits per point.

Radii are in the units of the input. The defaults (``radius=0.1``, ``nsample=32``) are the paper's S3DIS
settings with coordinates in **metres** (ScanNet uses 0.05 m); they are not meant for clouds normalised into
the unit sphere.

Choices and departures (each checked against the parameter counts of the official S3DIS configs, to within
0.2 %): the SA blocks are those of the official configs (one layer; PointNeXt-S: two layers, hidden width
``c_out // 2``, residual); the stem sees ``xyz`` and the features by default (``stem_xyz=True``, as the official
ScanNet config; the S3DIS one feeds only RGB + height, ``stem_xyz=False``), which adds ``3 * width`` weights;
the interpolation weights are ``1 / (distance + 1e-8)`` (PointNet++ Eq. 2 with ``p = 1``); ball query keeps the
first ``nsample`` points of a ball in index order (:func:`pointtune.ops.ball_query`); the InvResMLP blocks of a
stage share one ball query. Output for AMContrast3D: :meth:`PointNeXt.forward_seg` returns a
:class:`PointNeXtOutput` with the per-stage ``(P^s, F^s)`` and the FPS indices between levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..ops import ball_query, fps, gather_points, group, three_interpolate, three_nn
from ._util import check_features, check_non_negative_int, check_positive_int, check_xyz
from .base import Backbone, BackboneOutput
from .registry import register_backbone

__all__ = [
    "FeaturePropagation",
    "InvResMLP",
    "LocalAggregation",
    "POINTNEXT_VARIANTS",
    "PointNeXt",
    "PointNeXtOutput",
    "PointNeXtSA",
]

#: The PointNeXt variants of the paper (Sec. AM "model scaling"; parameters in its S3DIS table): stem width
#: ``C`` and InvResMLP blocks per stage ``B``; ``sa_layers`` / ``sa_residual`` are the SA blocks of the official
#: S3DIS configs (PointNeXt-S uses a residual two-layer SA, the others a one-layer SA).
POINTNEXT_VARIANTS: dict[str, dict] = {
    "S": {"width": 32, "blocks": (0, 0, 0, 0), "sa_layers": 2, "sa_residual": True},
    "B": {"width": 32, "blocks": (1, 2, 1, 1), "sa_layers": 1, "sa_residual": False},
    "L": {"width": 32, "blocks": (2, 4, 2, 2), "sa_layers": 1, "sa_residual": False},
    "XL": {"width": 64, "blocks": (3, 6, 3, 3), "sa_layers": 1, "sa_residual": False},
}

POOLINGS = ("max", "mean", "maxavg")

#: Added to the distance in the inverse-distance weights of :func:`pointtune.ops.three_interpolate` (input units).
INTERP_EPS = 1e-8


class _BNLast(nn.BatchNorm1d):
    """``BatchNorm1d`` over the last (channel) dimension of a channels-last tensor of any rank ``(..., C)``:
    statistics over every leading position (all points, or all neighbours of all points)."""

    def forward(self, x: Tensor) -> Tensor:
        """Normalised ``x`` ``(..., C)``, same shape."""
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


def _mlp_layer(c_in: int, c_out: int, act: bool = True) -> nn.Sequential:
    """``Linear (no bias) -> BN [-> ReLU]`` on channels-last tensors ``(..., c_in) -> (..., c_out)``."""
    layers: list[nn.Module] = [nn.Linear(c_in, c_out, bias=False), _BNLast(c_out)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _grouped_linear(
    linear: nn.Linear, xyz: Tensor, centres: Tensor, nbr: Tensor, features: Tensor, radius: float
) -> Tensor:
    """``linear([dp_ij / r, f_j])`` for every neighbour ``j`` of every centre ``i`` (PointNeXt's ``dp_fj``
    grouping, Sec. AM), computed without materialising the concatenation: the weight is split into the
    columns of ``dp`` (first 3) and of ``f``, and ``W_f f`` is evaluated once per point before gathering, which
    is exactly equal and ``k`` times cheaper.

    Shapes: ``xyz (B, N, 3)``, ``centres (B, M, 3)``, ``nbr (B, M, k)`` indices into ``N``, ``features (B, N, C)``,
    ``linear: 3 + C -> C'``; returns ``(B, M, k, C')``.
    """
    w = linear.weight  # (C', 3 + C)
    dp = group(xyz, centres, nbr) / radius  # (B, M, k, 3), relative coordinates normalised by the radius
    per_point = features @ w[:, 3:].t()  # (B, N, C')
    out = gather_points(per_point, nbr) + dp @ w[:, :3].t()
    if linear.bias is not None:
        out = out + linear.bias
    return out


class LocalAggregation(nn.Module):
    """Grouped local aggregation of PointNeXt (Sec. AM, the "LA" of InvResMLP and of set abstraction): for
    every centre ``i``, ``max_j ReLU(BN(W [dp_ij / r, f_j]))`` over its ball-query neighbours ``j``.

    ``forward(xyz (B, N, 3), centres (B, M, 3), nbr (B, M, k), features (B, N, c_in)) -> (B, M, c_out)``;
    ``dp_ij = p_j - p_i`` in input units, divided by ``radius``.

    Args:
        c_in: feature channels of the grouped points (the layer sees ``3 + c_in``).
        c_out: output channels.
        radius: ball radius the neighbours were found with, ``> 0`` (the ``dp`` normaliser).

    Raises:
        ValueError: non-positive channels or radius.
    """

    def __init__(self, c_in: int, c_out: int, radius: float):
        super().__init__()
        check_positive_int("pointnext", "c_in", c_in)
        check_positive_int("pointnext", "c_out", c_out)
        if not radius > 0:
            raise ValueError(f"pointnext: radius must be > 0, got {radius!r}")
        self.linear = nn.Linear(3 + c_in, c_out, bias=False)
        self.bn = _BNLast(c_out)
        self.radius = float(radius)

    def forward(self, xyz: Tensor, centres: Tensor, nbr: Tensor, features: Tensor) -> Tensor:
        """Aggregated features ``(B, M, c_out)``; shapes in the class docstring."""
        h = self.bn(_grouped_linear(self.linear, xyz, centres, nbr, features, self.radius))
        return torch.relu(h).amax(dim=2)


class PointNeXtSA(nn.Module):
    """PointNeXt set abstraction (Sec. AM; PointNet++ Sec. 3.2 with ``dp/r`` normalisation): downsample by
    ``stride`` with farthest point sampling, group ``nsample`` ball-query neighbours of each new centre in the
    finer set, reduce ``[dp/r, f_j]`` with ``layers`` shared MLP layers and max pooling.

    With ``residual`` (the PointNeXt-S configuration) the last MLP layer has no activation and the output is
    ``ReLU(maxpool(...) + skip(f_i))``, ``skip`` a ``Linear`` + BN of the centre's own features (identity when
    ``c_in == c_out``). With ``layers == 2`` the hidden width is ``c_out // 2`` for stride ``> 1``.

    ``forward(xyz (B, N, 3), features (B, N, c_in)) -> (new_xyz (B, M, 3), new_features (B, M, c_out),
    sample_idx (B, M))`` with ``M = N // stride``; ``sample_idx`` are the FPS indices into ``N`` (``arange(N)``
    for stride 1), so ``new_xyz = gather_points(xyz, sample_idx)``.

    Raises:
        ValueError: non-positive sizes or radius (constructor); ``N // stride < 1`` (forward).
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, radius: float, nsample: int, layers: int = 1, residual: bool = False
    ):
        super().__init__()
        for name, value in (("c_in", c_in), ("c_out", c_out), ("stride", stride), ("nsample", nsample)):
            check_positive_int("pointnext", name, value)
        check_positive_int("pointnext", "sa_layers", layers)
        if not radius > 0:
            raise ValueError(f"pointnext: radius must be > 0, got {radius!r}")
        self.stride, self.radius, self.nsample, self.residual = stride, float(radius), nsample, residual
        hidden = max(1, c_out // 2) if (layers > 1 and stride > 1) else c_out
        widths = [hidden] * (layers - 1) + [c_out]
        self.first = nn.Linear(3 + c_in, widths[0], bias=False)
        self.first_bn = _BNLast(widths[0])
        rest: list[nn.Module] = []
        for i in range(1, layers):
            rest.append(_mlp_layer(widths[i - 1], widths[i], act=not (residual and i == layers - 1)))
        self.rest = nn.Sequential(*rest)
        self.first_act = not (residual and layers == 1)
        self.skip: nn.Module | None = None
        if residual:
            self.skip = nn.Identity() if c_in == c_out else _mlp_layer(c_in, c_out, act=False)
        self.c_in, self.c_out = c_in, c_out

    def forward(self, xyz: Tensor, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(new_xyz, new_features, sample_idx)``; shapes in the class docstring."""
        b, n, _ = xyz.shape
        m = n // self.stride
        if m < 1:
            raise ValueError(f"pointnext: cannot downsample N={n} points by stride {self.stride}")
        if self.stride == 1:
            sample_idx = torch.arange(n, device=xyz.device).expand(b, n)
            new_xyz = xyz
        else:
            sample_idx = fps(xyz, m)  # (B, M)
            new_xyz = gather_points(xyz, sample_idx)
        nbr = ball_query(xyz, new_xyz, self.radius, self.nsample)  # (B, M, k)
        h = self.first_bn(_grouped_linear(self.first, xyz, new_xyz, nbr, features, self.radius))
        if self.first_act:
            h = torch.relu(h)
        h = self.rest(h).amax(dim=2)  # (B, M, c_out)
        if self.skip is not None:
            h = torch.relu(h + self.skip(gather_points(features, sample_idx)))
        return new_xyz, h, sample_idx


class InvResMLP(nn.Module):
    """Inverted residual MLP block of PointNeXt (Sec. AM, Fig. 2): ``ReLU(f + BN(W2 ReLU(BN(W1 LA(f)))))``
    with the grouped local aggregation ``LA`` (:class:`LocalAggregation`, ``channels -> channels``), a pointwise
    inverted bottleneck ``channels -> expansion * channels -> channels`` and the residual connection.

    ``forward(xyz (B, M, 3), features (B, M, channels), nbr (B, M, k)) -> (B, M, channels)``; ``nbr`` are the
    ball-query neighbours of each point within the same set (shared by every block of a stage).

    Args:
        channels: feature width ``C``.
        expansion: bottleneck ratio (paper: 4).
        radius: the stage's ball radius (the ``dp`` normaliser).

    Raises:
        ValueError: non-positive ``channels`` / ``expansion`` / ``radius``.
    """

    def __init__(self, channels: int, expansion: int, radius: float):
        super().__init__()
        check_positive_int("pointnext", "expansion", expansion)
        self.la = LocalAggregation(channels, channels, radius)
        self.pw1 = _mlp_layer(channels, channels * expansion, act=True)
        self.pw2 = _mlp_layer(channels * expansion, channels, act=False)

    def forward(self, xyz: Tensor, features: Tensor, nbr: Tensor) -> Tensor:
        """Block output ``(B, M, channels)``; shapes in the class docstring."""
        h = self.pw2(self.pw1(self.la(xyz, xyz, nbr, features)))
        return torch.relu(h + features)


class FeaturePropagation(nn.Module):
    """Feature-propagation (decoder) block (PointNet++ Sec. 3.4, as used by PointNeXt): interpolate the
    coarser level's features to the finer points (:func:`pointtune.ops.three_nn`, :func:`pointtune.ops.three_interpolate`), concatenate the finer level's
    encoder (skip) features, apply two shared MLP layers (``Linear`` + BN + ReLU) to ``c_out`` channels.

    ``forward(xyz (B, N, 3), skip (B, N, c_skip), coarse_xyz (B, M, 3), coarse (B, M, c_coarse)) ->
    (B, N, c_out)``.

    Raises:
        ValueError: non-positive channel counts.
    """

    def __init__(self, c_skip: int, c_coarse: int, c_out: int):
        super().__init__()
        for name, value in (("c_skip", c_skip), ("c_coarse", c_coarse), ("c_out", c_out)):
            check_positive_int("pointnext", name, value)
        self.mlp = nn.Sequential(_mlp_layer(c_skip + c_coarse, c_out), _mlp_layer(c_out, c_out))

    def forward(self, xyz: Tensor, skip: Tensor, coarse_xyz: Tensor, coarse: Tensor) -> Tensor:
        """Decoder features ``(B, N, c_out)`` at the finer points; shapes in the class docstring."""
        dist2, idx = three_nn(xyz, coarse_xyz)
        up = three_interpolate(coarse, idx, dist2, INTERP_EPS)
        return self.mlp(torch.cat([skip, up], dim=-1))


@dataclass
class PointNeXtOutput:
    """Everything :meth:`PointNeXt.forward_seg` computes (the ``{P^s, F^s}`` of spec §2.0).

    Attributes:
        logits: ``(B, N, num_classes)`` per-point class scores at the input points.
        stages: for ``s = 0..L-1`` (``L = len(blocks)``, 4 by default), ``(P^s, F^s)``: the points of encoder
            level ``s`` ``(B, N_s, 3)`` (``N_0 = N``, ``N_s = N_{s-1} // strides[s-1]``, i.e. ``N, N/4, N/16,
            N/64``) and the decoder features there ``(B, N_s, width * 2**s)`` (``F^0`` feeds the head). The
            coarsest level ``L`` has no decoder output and is not in ``stages``.
        sample_idx: for every encoder level ``s = 0..L`` (one more entry than ``stages``), ``(B, N_s)`` int64
            indices of level ``s``'s points into level ``s - 1``'s points (the FPS picks), so
            ``gather_points(P^{s-1}, sample_idx[s]) == P^s``; ``sample_idx[0]`` is ``arange(N)`` (the input).
        encoder: for every encoder level ``s = 0..L``, ``(xyz (B, N_s, 3), features (B, N_s, width * 2**s))``:
            the stem output at ``s = 0``, each stage's output after its InvResMLP blocks above.
    """

    logits: Tensor
    stages: list[tuple[Tensor, Tensor]]
    sample_idx: list[Tensor]
    encoder: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def input_index(self, s: int) -> Tensor:
        """``(B, N_s)`` int64 indices of level ``s``'s points into the ``N`` input points (the composition of
        ``sample_idx[1..s]``), e.g. to read full-resolution labels of the stage-``s`` points.

        Raises:
            IndexError: ``s`` outside ``0..L``.
        """
        if not 0 <= s < len(self.sample_idx):
            raise IndexError(f"PointNeXtOutput.input_index: level s={s} outside 0..{len(self.sample_idx) - 1}")
        idx = self.sample_idx[0]
        for t in range(1, s + 1):
            idx = torch.gather(idx, 1, self.sample_idx[t])
        return idx


@register_backbone("pointnext")
class PointNeXt(Backbone):
    """PointNeXt encoder-decoder for per-point segmentation (Qian et al., NeurIPS 2022, Fig. 2; the module
    docstring describes the architecture), registered as ``"pointnext"``.

    ``forward_seg(xyz (B, N, 3), features (B, N, in_features) or None) -> PointNeXtOutput`` (logits, per-stage
    points and decoder features, FPS indices). The :class:`Backbone` interface: ``forward_features`` returns the
    global feature (pooling of the coarsest encoder level, ``(B, out_dim)``) and as point features the decoder
    output at the input points ``(B, N, point_dim = width)``; ``forward`` the global feature. ``N`` must satisfy
    ``N // prod(strides) >= 1`` (256 points by default). In training mode BatchNorm needs more than one value per
    channel: ``B * N_L > 1`` at the coarsest level.

    Args:
        variant: ``"S"``, ``"B"``, ``"L"`` or ``"XL"`` (:data:`POINTNEXT_VARIANTS`, paper Sec. AM "model scaling"):
            the default ``width``, ``blocks``, ``sa_layers`` and ``sa_residual``.
        width: stem width ``C``; stage ``s`` has ``C * 2**s`` channels (``None``: the variant's).
        blocks: InvResMLP blocks per downsampling stage; its length is the number of stages ``L``
            (``None``: the variant's, 4 stages).
        strides: downsampling factor per stage (paper: 4), same length as ``blocks``.
        radius: ball-query radius of the first SA, in input units (default 0.1: S3DIS, metres); doubled per
            stage by ``radius_scaling``.
        radius_scaling: radius factor per stage (paper: 2).
        nsample: neighbours per ball query (paper: 32).
        expansion: InvResMLP bottleneck ratio (paper: 4).
        sa_layers: MLP layers of each SA block (``None``: the variant's; the official S3DIS configs use 2 for S
            and 1 otherwise).
        sa_residual: residual SA blocks (``None``: the variant's; True for S).
        in_features: extra per-point input channels beside the coordinates (S3DIS: RGB + height = 4).
        stem_xyz: the stem sees the coordinates as well as the features (``3 + in_features`` channels); the
            official S3DIS configs feed only the features, ScanNet's feed xyz too.
        num_classes: logits per point (S3DIS: 13).
        dropout: dropout of the head's hidden layer, in ``[0, 1)`` (paper: 0.5).
        pooling: global feature of ``forward_features``: ``"max"``, ``"mean"`` or ``"maxavg"`` (both,
            concatenated) over the coarsest level's points.

    Attributes:
        out_dim: ``width * 2**L`` (``2 *`` that for ``"maxavg"``).
        point_dim: ``width`` (the decoder's output at the input points).
        stage_dims: decoder widths of ``stages`` ``[width * 2**s for s in 0..L-1]`` (64, 128, 256, 512 for XL).
        num_stages: ``L``.

    Raises:
        ValueError: an unknown ``variant`` or ``pooling``, ``strides`` of another length than ``blocks``,
            non-positive ``width`` / ``strides`` / ``radius`` / ``radius_scaling`` / ``nsample`` /
            ``expansion`` / ``sa_layers`` / ``num_classes``, negative ``blocks`` or ``in_features``, a
            ``dropout`` outside ``[0, 1)``, or ``stem_xyz=False`` with ``in_features=0`` (no stem input); each
            message names the argument.
    """

    def __init__(
        self,
        variant: str = "XL",
        width: int | None = None,
        blocks: Sequence[int] | None = None,
        strides: Sequence[int] | None = None,
        radius: float = 0.1,
        radius_scaling: float = 2.0,
        nsample: int = 32,
        expansion: int = 4,
        sa_layers: int | None = None,
        sa_residual: bool | None = None,
        in_features: int = 0,
        stem_xyz: bool = True,
        num_classes: int = 13,
        dropout: float = 0.5,
        pooling: str = "max",
    ):
        super().__init__()
        if variant not in POINTNEXT_VARIANTS:
            raise ValueError(f"pointnext: variant must be one of {', '.join(POINTNEXT_VARIANTS)}, got {variant!r}")
        preset = POINTNEXT_VARIANTS[variant]
        width = preset["width"] if width is None else width
        blocks = tuple(preset["blocks"] if blocks is None else blocks)
        strides = tuple((4,) * len(blocks) if strides is None else strides)
        sa_layers = preset["sa_layers"] if sa_layers is None else sa_layers
        sa_residual = preset["sa_residual"] if sa_residual is None else sa_residual

        check_positive_int("pointnext", "width", width)
        if len(blocks) < 1:
            raise ValueError("pointnext: blocks must have at least one entry (one per stage), got ()")
        for i, b in enumerate(blocks):
            check_non_negative_int("pointnext", f"blocks[{i}]", b)
        if len(strides) != len(blocks):
            raise ValueError(
                f"pointnext: strides must have one entry per stage ({len(blocks)}, the length of blocks), "
                f"got {strides}"
            )
        for i, st in enumerate(strides):
            check_positive_int("pointnext", f"strides[{i}]", st)
        for name, value in (("radius", radius), ("radius_scaling", radius_scaling)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"pointnext: {name} must be a number > 0, got {value!r}")
        check_positive_int("pointnext", "nsample", nsample)
        check_positive_int("pointnext", "expansion", expansion)
        check_positive_int("pointnext", "sa_layers", sa_layers)
        if not isinstance(sa_residual, bool):
            raise ValueError(f"pointnext: sa_residual must be a bool, got {sa_residual!r}")
        check_non_negative_int("pointnext", "in_features", in_features)
        if not isinstance(stem_xyz, bool):
            raise ValueError(f"pointnext: stem_xyz must be a bool, got {stem_xyz!r}")
        if not stem_xyz and in_features == 0:
            raise ValueError("pointnext: stem_xyz=False needs in_features >= 1 (the stem would have no input)")
        check_positive_int("pointnext", "num_classes", num_classes)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"pointnext: dropout must be a number in [0, 1), got {dropout!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pointnext: pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")

        n_stages = len(blocks)
        dims = [width * 2**s for s in range(n_stages + 1)]  # encoder widths of levels 0..L
        self.stem = _mlp_layer((3 if stem_xyz else 0) + in_features, width)
        self.sa = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.block_radii: list[float] = []
        for s in range(1, n_stages + 1):
            r_sa = radius * radius_scaling ** (s - 1)
            r_blk = r_sa * radius_scaling
            self.sa.append(
                PointNeXtSA(dims[s - 1], dims[s], strides[s - 1], r_sa, nsample, layers=sa_layers, residual=sa_residual)
            )
            self.blocks.append(nn.ModuleList(InvResMLP(dims[s], expansion, r_blk) for _ in range(blocks[s - 1])))
            self.block_radii.append(r_blk)
        # decoder[s] produces level s from level s+1 (decoded) and level s (skip), s = L-1 .. 0
        self.decoder = nn.ModuleList(FeaturePropagation(dims[s], dims[s + 1], dims[s]) for s in range(n_stages))
        self.head = nn.Sequential(
            _mlp_layer(width, width), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )

        self.variant = variant
        self.width, self.blocks_per_stage, self.strides = width, blocks, strides
        self.radius, self.radius_scaling = float(radius), float(radius_scaling)
        self.nsample, self.expansion = nsample, expansion
        self.sa_layers, self.sa_residual, self.stem_xyz = sa_layers, sa_residual, stem_xyz
        self.in_features, self.num_classes, self.pooling = in_features, num_classes, pooling
        self.num_stages = n_stages
        self.stage_dims = dims[:-1]
        self.point_dim = width
        self.out_dim = dims[-1] * (2 if pooling == "maxavg" else 1)
        self.min_points = 1
        for st in strides:
            self.min_points *= st

    # --- the network ------------------------------------------------------------------------------------------

    def _check_input(self, xyz: Tensor, features: Tensor | None) -> None:
        """Raise ``ValueError`` for malformed inputs or ``N < prod(strides)``."""
        check_xyz("pointnext", xyz)
        check_features("pointnext", xyz, features, self.in_features)
        if xyz.shape[1] < self.min_points:
            raise ValueError(
                f"pointnext: clouds have N={xyz.shape[1]} points, fewer than prod(strides)={self.min_points} "
                f"(every stage needs at least one point)"
            )

    def _encode_decode(
        self, xyz: Tensor, features: Tensor | None
    ) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor], list[Tensor]]:
        """Encoder levels ``[(xyz_s, f_s)]`` for ``s = 0..L``, sample indices per level and decoder features for
        ``s = 0..L-1``."""
        self._check_input(xyz, features)
        xyz = xyz.contiguous()
        b, n, _ = xyz.shape
        parts = ([xyz] if self.stem_xyz else []) + ([features] if features is not None else [])
        f = self.stem(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
        encoder = [(xyz, f)]
        sample_idx = [torch.arange(n, device=xyz.device).expand(b, n)]
        for sa, stage_blocks, r_blk in zip(self.sa, self.blocks, self.block_radii):
            p, f, idx = sa(*encoder[-1])
            if len(stage_blocks):
                nbr = ball_query(p, p, r_blk, self.nsample)  # one neighbourhood per stage, shared by its blocks
                for blk in stage_blocks:
                    f = blk(p, f, nbr)
            encoder.append((p, f))
            sample_idx.append(idx)
        decoded = [encoder[-1][1]]
        for s in range(self.num_stages - 1, -1, -1):
            (p, skip), (p_c, _) = encoder[s], encoder[s + 1]
            decoded.insert(0, self.decoder[s](p, skip, p_c, decoded[0]))
        return encoder, sample_idx, decoded[:-1]

    def forward_seg(self, xyz: Tensor, features: Tensor | None = None) -> PointNeXtOutput:
        """Per-point logits and the per-stage points / decoder features of clouds ``xyz`` ``(B, N, 3)`` (input
        units; metres for the default radius) with extra channels ``features`` ``(B, N, in_features)``
        (``None`` when ``in_features == 0``); see :class:`PointNeXtOutput` for the shapes.

        Raises:
            ValueError: malformed ``xyz`` / ``features``, or ``N < prod(strides)``.
        """
        encoder, sample_idx, decoded = self._encode_decode(xyz, features)
        stages = [(encoder[s][0], decoded[s]) for s in range(self.num_stages)]
        return PointNeXtOutput(
            logits=self.head(decoded[0]), stages=stages, sample_idx=sample_idx, encoder=encoder
        )

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """The :class:`Backbone` contract: global feature ``(B, out_dim)`` pooled (``pooling``) over the coarsest
        encoder level, point features = decoder output at the input points ``(B, N, width)`` at ``xyz``; no
        ``levels`` (the decoder is part of the network; :meth:`forward_seg` exposes every stage). The head is
        not run.

        Raises:
            ValueError: as :meth:`forward_seg`.
        """
        encoder, _, decoded = self._encode_decode(xyz, features)
        last = encoder[-1][1]  # (B, N_L, C_L)
        if self.pooling == "max":
            glob = last.amax(dim=1)
        elif self.pooling == "mean":
            glob = last.mean(dim=1)
        else:
            glob = torch.cat([last.amax(dim=1), last.mean(dim=1)], dim=-1)
        return BackboneOutput(global_feature=glob, point_features=decoded[0], point_xyz=encoder[0][0])
