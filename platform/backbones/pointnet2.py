"""PointNet++ single-scale-grouping encoder (Qi, Yi, Su, Guibas, "PointNet++: Deep Hierarchical Feature
Learning on Point Sets in a Metric Space", NeurIPS 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ops import ball_query, fps, gather_points, group
from ._util import check_features, check_non_negative_int, check_positive_int, check_xyz
from .base import Backbone, BackboneOutput
from .registry import register_backbone

__all__ = ["PointNet2SSG", "SetAbstraction"]


class SetAbstraction(nn.Module):
    """One set-abstraction level: sample centres, group neighbours, apply a mini-PointNet.

    * sampling: ``npoint`` centres by farthest point sampling;
    * grouping: up to ``nsample`` points within ``radius`` of each centre (ball query), coordinates made
      relative to the centre and concatenated with the points' features;
    * PointNet: shared 1x1 ``Conv2d`` + BN + ReLU layers of widths ``mlp``, max pooling over the group.

    With ``npoint=None`` it is the "group all" level: one group holding every point (absolute coordinates,
    as in the paper's final level) and a single output centre at the origin.

    ``forward(xyz (B, N, 3), features (B, N, C) or None) -> (new_xyz (B, M, 3), new_features (B, M, mlp[-1]))``
    with ``M = npoint`` (or 1 for group all).
    """

    def __init__(
        self,
        npoint: int | None,
        radius: float | None,
        nsample: int | None,
        in_channels: int,
        mlp: Sequence[int],
    ):
        super().__init__()
        self.npoint, self.radius, self.nsample = npoint, radius, nsample
        layers: list[nn.Module] = []
        c_in = in_channels + 3
        for c_out in mlp:
            layers += [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.mlp = nn.Sequential(*layers)
        self.out_channels = c_in

    def forward(self, xyz: Tensor, features: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.npoint is None:
            grouped = xyz.unsqueeze(1)  # (B, 1, N, 3)
            if features is not None:
                grouped = torch.cat([grouped, features.unsqueeze(1)], dim=-1)
            new_xyz = xyz.new_zeros(xyz.shape[0], 1, 3)
        else:
            new_xyz = gather_points(xyz, fps(xyz, self.npoint))  # (B, M, 3)
            idx = ball_query(xyz, new_xyz, self.radius, self.nsample)  # (B, M, k)
            grouped = group(xyz, new_xyz, idx, features, relative=True)  # (B, M, k, 3 + C)
        h = self.mlp(grouped.permute(0, 3, 1, 2))  # (B, C', M, k)
        return new_xyz, h.amax(dim=-1).transpose(1, 2)


@register_backbone("pointnet2_ssg")
class PointNet2SSG(Backbone):
    """PointNet++ SSG classification encoder: ``forward(xyz (B, N, 3), features (B, N, in_features) or None)
    -> (B, emb_dims)``.

    Three set-abstraction levels with the paper's ModelNet40 SSG settings (defaults):
    SA(512 centres, r=0.2, 32 samples, MLP 64-64-128) -> SA(128, r=0.4, 64, MLP 128-128-256) ->
    group-all SA(MLP 256-512-1024). The global feature is the output of the last level. Radii are in the
    units of the input, which the paper (and pointtune) normalises into the unit sphere. Extra input
    channels (normals, as in the paper's ModelNet40 "with normal" runs) are grouped with the local
    coordinates by the first level.

    :meth:`forward_features` returns as ``point_features`` the second level's features at its
    ``npoints[1]`` centres, ``(B, npoints[1], point_dim)``, and in ``levels`` the (xyz, features) of the
    input and of the first two levels, for feature-propagation decoders.

    Args:
        npoints: centres of the first two levels; the input needs ``N >= npoints[0]`` and
            ``npoints[0] >= npoints[1]``.
        radii: ball-query radii of the first two levels.
        nsamples: group sizes of the first two levels.
        width: multiplier on every hidden MLP width (rounded, at least 1), for small models in tests and
            scaling studies; the final width is ``emb_dims``.
        emb_dims: width of the last layer and of the global feature (paper: 1024).
        in_features: extra per-point input channels beside the coordinates (normals, colour, height), so
            the first level's MLP takes ``3 + in_features`` channels.

    Attributes:
        out_dim: ``emb_dims``.
        point_dim: channels of the second level, ``max(1, round(256 * width))``.

    Raises:
        ValueError: sequences that are not of length 2, non-positive sizes / radii / width, negative
            ``in_features``.
    """

    def __init__(
        self,
        npoints: Sequence[int] = (512, 128),
        radii: Sequence[float] = (0.2, 0.4),
        nsamples: Sequence[int] = (32, 64),
        width: float = 1.0,
        emb_dims: int = 1024,
        in_features: int = 0,
    ):
        super().__init__()
        for arg, seq in (("npoints", npoints), ("radii", radii), ("nsamples", nsamples)):
            if len(seq) != 2:
                raise ValueError(f"pointnet2_ssg: {arg} must have 2 entries (one per level), got {tuple(seq)}")
        for i in range(2):
            check_positive_int("pointnet2_ssg", f"npoints[{i}]", npoints[i])
            check_positive_int("pointnet2_ssg", f"nsamples[{i}]", nsamples[i])
            if not radii[i] > 0:
                raise ValueError(f"pointnet2_ssg: radii must be > 0, got {tuple(radii)}")
        if npoints[1] > npoints[0]:
            raise ValueError(f"pointnet2_ssg: npoints must not increase, got {tuple(npoints)}")
        if not width > 0:
            raise ValueError(f"pointnet2_ssg: width must be > 0, got {width}")
        check_positive_int("pointnet2_ssg", "emb_dims", emb_dims)
        check_non_negative_int("pointnet2_ssg", "in_features", in_features)

        def w(c: int) -> int:
            return max(1, round(c * width))

        self.sa1 = SetAbstraction(npoints[0], radii[0], nsamples[0], in_features, [w(64), w(64), w(128)])
        self.sa2 = SetAbstraction(npoints[1], radii[1], nsamples[1], self.sa1.out_channels, [w(128), w(128), w(256)])
        self.sa3 = SetAbstraction(None, None, None, self.sa2.out_channels, [w(256), w(512), emb_dims])
        self.npoints = tuple(npoints)
        self.emb_dims = emb_dims
        self.in_features = in_features
        self.out_dim = emb_dims
        self.point_dim = self.sa2.out_channels

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """Second-level features ``(B, npoints[1], point_dim)`` at their centres, the global feature
        ``(B, emb_dims)`` and the per-level (xyz, features), for clouds ``xyz`` ``(B, N, 3)`` with
        ``N >= npoints[0]`` and ``features`` ``(B, N, in_features)`` (``None`` when ``in_features == 0``)."""
        check_xyz("pointnet2_ssg", xyz)
        check_features("pointnet2_ssg", xyz, features, self.in_features)
        if xyz.shape[1] < self.npoints[0]:
            raise ValueError(
                f"pointnet2_ssg: clouds have N={xyz.shape[1]} points, fewer than npoints[0]={self.npoints[0]}"
            )
        xyz = xyz.contiguous()
        xyz1, f1 = self.sa1(xyz, features)
        xyz2, f2 = self.sa2(xyz1, f1)
        _, f3 = self.sa3(xyz2, f2)
        return BackboneOutput(
            global_feature=f3.squeeze(1),
            point_features=f2,
            point_xyz=xyz2,
            levels=((xyz, features), (xyz1, f1), (xyz2, f2)),
        )
