"""PointNet encoder (Qi, Su, Mo, Guibas, "PointNet: Deep Learning on Point Sets for 3D Classification and
Segmentation", CVPR 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._util import check_features, check_non_negative_int, check_positive_int, check_xyz
from .base import Backbone, BackboneOutput
from .registry import register_backbone

__all__ = ["PointNet", "TNet"]


class TNet(nn.Module):
    """Input transform network of PointNet: predicts a ``k x k`` matrix from the cloud.

    Architecture from the paper's appendix: shared MLP (64, 128, 1024) with BN + ReLU, max pooling, fully
    connected (512, 256) with BN + ReLU, then a linear layer to ``k * k`` values. The last layer is
    zero-initialised and the identity is added, so the transform starts as the identity (as in the authors'
    code).

    Input ``(B, k, N)`` channels-first; output ``(B, k, k)``.
    """

    def __init__(self, k: int = 3):
        super().__init__()
        self.k = k
        self.features = nn.Sequential(
            nn.Conv1d(k, 64, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
            nn.Conv1d(64, 128, 1, bias=False), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
            nn.Conv1d(128, 1024, 1, bias=False), nn.BatchNorm1d(1024), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.regressor = nn.Sequential(
            nn.Linear(1024, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.out = nn.Linear(256, k * k)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        g = self.features(x).amax(dim=-1)  # (B, 1024)
        t = self.out(self.regressor(g)).view(-1, self.k, self.k)
        return t + torch.eye(self.k, dtype=t.dtype, device=t.device)


@register_backbone("pointnet")
class PointNet(Backbone):
    """PointNet encoder: ``forward(xyz (B, N, 3), features (B, N, in_features) or None) -> (B, emb_dims)``.

    Shared per-point MLP (3 + in_features)-64-64-64-128-``emb_dims`` (``Conv1d`` kernel 1 + BatchNorm + ReLU
    on every layer), then global max pooling (the symmetric function of the paper, so the output is
    invariant to the order of the points). This is the five-layer variant used as the PointNet baseline in
    the DGCNN code base; the paper's 64-64 | 64-128-1024 stack is the same with the feature transform
    omitted. ``emb_dims=1024`` is the paper's global feature width.

    :meth:`forward_features` also returns the per-point output of the last MLP layer (the features that
    are max-pooled), ``(B, N, emb_dims)``, at the input points.

    Args:
        emb_dims: width of the last layer, of the per-point and of the global feature (paper: 1024).
        input_transform: apply the 3x3 input T-Net before the MLP (paper: yes; default off, as in the DGCNN
            baseline). The T-Net sees and transforms the coordinates only; extra input channels are
            concatenated after the transform, unchanged. The 64x64 feature transform and its orthogonality
            regulariser are not implemented.
        in_features: extra per-point input channels beside the coordinates (normals, colour, height), so
            the first layer takes ``3 + in_features`` channels.

    Attributes:
        out_dim: ``emb_dims``.
        point_dim: ``emb_dims``.
    """

    def __init__(self, emb_dims: int = 1024, input_transform: bool = False, in_features: int = 0):
        super().__init__()
        check_positive_int("pointnet", "emb_dims", emb_dims)
        check_non_negative_int("pointnet", "in_features", in_features)
        widths = [3 + in_features, 64, 64, 64, 128, emb_dims]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers)
        self.tnet = TNet(3) if input_transform else None
        self.emb_dims = emb_dims
        self.in_features = in_features
        self.out_dim = emb_dims
        self.point_dim = emb_dims

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """Per-point features ``(B, N, emb_dims)`` at ``xyz`` and their max pool ``(B, emb_dims)``, for clouds
        ``xyz`` ``(B, N, 3)`` and ``features`` ``(B, N, in_features)`` (``None`` when ``in_features == 0``)."""
        check_xyz("pointnet", xyz)
        check_features("pointnet", xyz, features, self.in_features)
        x = xyz.transpose(1, 2)  # (B, 3, N)
        if self.tnet is not None:
            x = torch.bmm(self.tnet(x).transpose(1, 2), x)  # row-vector convention: xyz @ T
        if features is not None:
            x = torch.cat([x, features.transpose(1, 2)], dim=1)  # (B, 3 + in_features, N)
        h = self.mlp(x)  # (B, emb_dims, N)
        return BackboneOutput(global_feature=h.amax(dim=-1), point_features=h.transpose(1, 2), point_xyz=xyz)
