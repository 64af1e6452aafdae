"""DGCNN encoder (Wang, Sun, Liu, Sarma, Bronstein, Solomon, "Dynamic Graph CNN for Learning on Point
Clouds", ACM TOG 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import knn
from ._util import check_features, check_non_negative_int, check_positive_int, check_xyz
from .base import Backbone, BackboneOutput
from .registry import register_backbone

__all__ = ["DGCNN", "EdgeConv", "edge_features", "edge_mlp", "max_avg_pool", "point_mlp"]


def edge_features(x: Tensor, k: int, graph: Tensor | None = None) -> Tensor:
    """EdgeConv input: for every point ``i`` and each of its ``k`` nearest neighbours ``j`` in the space
    of ``x`` (or of ``graph``), the edge feature ``[x_j - x_i, x_i]``.

    Args:
        x: ``(B, C, N)`` channels-first point features; the kNN graph is rebuilt from them (dynamic graph,
            each point is its own nearest neighbour).
        k: neighbours per point, ``<= N``.
        graph: optional ``(B, C', N)`` channels-first features to build the kNN graph from instead of ``x``
            (the first DGCNN layer searches neighbours on the coordinates alone when normals or colours are
            part of its input, as in the authors' segmentation code).

    Returns:
        ``(B, 2C, N, k)``.

    Raises:
        ValueError: ``k > N`` (from :func:`pointtune.ops.knn`).
    """
    b, c, n = x.shape
    space = (x if graph is None else graph).transpose(1, 2)  # (B, N, C)
    idx = knn(space, space, k)  # (B, N, k)
    # gathered channels-first, so the edges come out in (B, 2C, N, k) without a copy to that layout
    neighbours = x.gather(2, idx.reshape(b, 1, n * k).expand(b, c, n * k)).view(b, c, n, k)
    centre = x.unsqueeze(-1).expand(b, c, n, k)
    return torch.cat([neighbours - centre, centre], dim=1)


def edge_mlp(c_in: int, c_out: int, width: int = 1) -> nn.Sequential:
    """Shared layer on edge features: ``Conv2d`` with kernel ``(1, width)`` (no bias) + BN + LeakyReLU(0.2),
    ``(B, c_in, N, k) -> (B, c_out, N, k - width + 1)``. ``width=1`` is EdgeConv's ``h``, the same MLP on every
    edge; ``width=k`` convolves across a point's ``k`` edges (sorted nearest first) into one vector, as GBNet's
    ABEM does (:mod:`pointtune.backbones.gbnet`)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, (1, width), bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)
    )


def point_mlp(c_in: int, c_out: int) -> nn.Sequential:
    """Shared per-point layer: 1x1 ``Conv1d`` (no bias) + BN + LeakyReLU(0.2), ``(B, c_in, N) -> (B, c_out, N)``
    (DGCNN's embedding of the concatenated EdgeConv outputs, also GBNet's)."""
    return nn.Sequential(nn.Conv1d(c_in, c_out, 1, bias=False), nn.BatchNorm1d(c_out), nn.LeakyReLU(0.2))


def max_avg_pool(x: Tensor) -> Tensor:
    """DGCNN's global feature: max pooling over the points concatenated with average pooling,
    ``(B, C, N) -> (B, 2C)`` (max first)."""
    return torch.cat([x.amax(dim=-1), x.mean(dim=-1)], dim=1)


class EdgeConv(nn.Module):
    """One EdgeConv layer: ``h(x_i, x_j - x_i)`` as a 1x1 Conv2d + BN + LeakyReLU(0.2) (:func:`edge_mlp`), max
    over the ``k`` edges. ``(B, C_in, N) -> (B, C_out, N)``; the optional ``graph`` ``(B, C', N)`` is the space
    the kNN graph is built in (default: the input)."""

    def __init__(self, c_in: int, c_out: int, k: int):
        super().__init__()
        self.k = k
        self.h = edge_mlp(2 * c_in, c_out)

    def forward(self, x: Tensor, graph: Tensor | None = None) -> Tensor:
        return self.h(edge_features(x, self.k, graph)).amax(dim=-1)


@register_backbone("dgcnn")
class DGCNN(Backbone):
    """DGCNN classification encoder: ``forward(xyz (B, N, 3), features (B, N, in_features) or None) ->
    (B, out_dim)``.

    Four EdgeConv layers of widths 64, 64, 128, 256, each on a kNN graph recomputed in the space of its
    input (the first on the coordinates, also when extra input channels are given), edge feature
    ``[x_j - x_i, x_i]``, BN + LeakyReLU(0.2), max aggregation over the ``k`` edges. The four outputs are
    concatenated (512 channels) and mapped by a shared ``Conv1d`` + BN + LeakyReLU(0.2) to ``emb_dims``
    per-point features (what :meth:`forward_features` returns as ``point_features``, at the input points);
    the global feature is the concatenation of max and average pooling over the points. Defaults ``k=20``
    and ``emb_dims=1024`` are the paper's ModelNet40 settings (its code base also offers ``k=40``,
    ``emb_dims=2048``).

    Args:
        k: neighbours per point in every EdgeConv (paper: 20); the input needs ``N >= k`` points.
        emb_dims: width of the per-point embedding before pooling (paper: 1024).
        pooling: ``"maxavg"`` (max || avg, the paper's classifier; ``out_dim = 2 * emb_dims``) or ``"max"``
            (max only, ``out_dim = emb_dims``, as specified by several self-supervised methods).
        in_features: extra per-point input channels beside the coordinates (normals, colour, height), so
            the first EdgeConv takes ``3 + in_features`` channels per point.

    Attributes:
        out_dim: ``2 * emb_dims`` for ``"maxavg"``, ``emb_dims`` for ``"max"``.
        point_dim: ``emb_dims``.

    Raises:
        ValueError: non-positive ``k`` / ``emb_dims``, negative ``in_features`` or an unknown ``pooling``.
    """

    def __init__(self, k: int = 20, emb_dims: int = 1024, pooling: str = "maxavg", in_features: int = 0):
        super().__init__()
        check_positive_int("dgcnn", "k", k)
        check_positive_int("dgcnn", "emb_dims", emb_dims)
        check_non_negative_int("dgcnn", "in_features", in_features)
        if pooling not in ("maxavg", "max"):
            raise ValueError(f"dgcnn: pooling must be 'maxavg' or 'max', got {pooling!r}")
        widths = (64, 64, 128, 256)
        c_in = 3 + in_features
        convs = []
        for w in widths:
            convs.append(EdgeConv(c_in, w, k))
            c_in = w
        self.edge_convs = nn.ModuleList(convs)
        self.embed = point_mlp(sum(widths), emb_dims)
        self.k = k
        self.emb_dims = emb_dims
        self.pooling = pooling
        self.in_features = in_features
        self.out_dim = 2 * emb_dims if pooling == "maxavg" else emb_dims
        self.point_dim = emb_dims

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """Per-point embeddings ``(B, N, emb_dims)`` at ``xyz`` and the pooled ``(B, out_dim)``, for clouds
        ``xyz`` ``(B, N, 3)`` with ``N >= k`` and ``features`` ``(B, N, in_features)`` (``None`` when
        ``in_features == 0``)."""
        check_xyz("dgcnn", xyz)
        check_features("dgcnn", xyz, features, self.in_features)
        if xyz.shape[1] < self.k:
            raise ValueError(f"dgcnn: clouds have N={xyz.shape[1]} points, fewer than k={self.k}")
        x = xyz.transpose(1, 2)  # (B, 3, N)
        graph = None
        if features is not None:
            graph = x  # the first kNN graph is built on the coordinates alone
            x = torch.cat([x, features.transpose(1, 2)], dim=1)  # (B, 3 + in_features, N)
        outs = []
        for conv in self.edge_convs:
            x = conv(x, graph)
            graph = None
            outs.append(x)
        x = self.embed(torch.cat(outs, dim=1))  # (B, emb_dims, N)
        pooled = x.amax(dim=-1) if self.pooling == "max" else max_avg_pool(x)
        return BackboneOutput(global_feature=pooled, point_features=x.transpose(1, 2), point_xyz=xyz)
