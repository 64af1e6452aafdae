"""The backbone contract: ``forward_features`` returns per-point and global features, ``forward`` the global
one (the ``forward_features`` / ``forward_head`` split of timm, Wightman 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["Backbone", "BackboneOutput"]


@dataclass
class BackboneOutput:
    """Everything a backbone computes for a batch of clouds.

    Attributes:
        global_feature: ``(B, D)`` one vector per cloud, ``D = out_dim`` (what ``forward`` returns).
        point_features: ``(B, M, C)`` one vector per point of ``point_xyz``, ``C = point_dim``: the input
            points (``M = N``) for PointNet, DGCNN and GBNet, the centres of the last set-abstraction level for
            PointNet++, of the last sampling stage for PCT.
        point_xyz: ``(B, M, 3)`` the coordinates ``point_features`` belong to.
        levels: hierarchical backbones only (PointNet++, PCT): the ``(xyz (B, M_s, 3), features (B, M_s, C_s))``
            pair of every stage, finest first, for feature-propagation decoders; ``levels[0]`` is the input
            (its features are the extra input channels, or ``None``) and ``levels[-1]`` is
            ``(point_xyz, point_features)``. Empty for flat backbones.
    """

    global_feature: Tensor
    point_features: Tensor
    point_xyz: Tensor
    levels: tuple[tuple[Tensor, Tensor | None], ...] = ()


class Backbone(nn.Module):
    """Base of the registered encoders: subclasses implement :meth:`forward_features` and set ``out_dim``,
    ``point_dim`` and ``in_features``.

    Attributes:
        out_dim: ``D``, width of the global feature.
        point_dim: ``C``, width of the per-point features.
        in_features: extra input channels per point beside the coordinates (0: coordinates only).
    """

    out_dim: int
    point_dim: int
    in_features: int

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """Per-point and global features of clouds ``xyz`` ``(B, N, 3)`` with optional extra per-point input
        channels ``features`` ``(B, N, in_features)``."""
        raise NotImplementedError

    def forward(self, xyz: Tensor, features: Tensor | None = None) -> Tensor:
        """Global feature ``(B, out_dim)`` of clouds ``(B, N, 3)``: ``forward_features(...).global_feature``."""
        return self.forward_features(xyz, features).global_feature
