"""GBNet encoder (Qiu, Anwar, Barnes, "Geometric Back-projection Network for Point Cloud Classification",
IEEE TMM 2021, arXiv:1911.12885; authors' code github.com/ShiQiu0419/GBNet, ``model.py`` at a71232e).

The paper's network (its architecture figure, ``gbnet.png`` in the authors' repository): a geometric point
descriptor lifts the coordinates to 14 channels; four Attentional Back-projection Edge Features Modules
(ABEM, widths 64, 64, 128, 256) each give a "prominent" and a "fine-grained" feature; their eight outputs
(1024 channels) go through a shared MLP to ``emb_dims`` channels and a Channel-wise Affinity Attention (CAA)
module; max and average pooling are concatenated into the global feature (2048-d at the defaults). The
sections named below are the paper's; ``model.py:L`` are lines of the authors' file.

Fixed number of points. CAA's comparator (:class:`ChannelAffinityAttention`) compresses every channel's vector
of ``N`` point values with a learned ``N -> N/8`` map, so the network is built for one ``num_points`` (the
authors' code fixes ``N = 1024``) and depends on the order of the points through it: the features are
permutation-invariant only while every CAA's residual weight ``alpha`` is 0, as at initialisation. The
authors' data loader shuffles the points of every training cloud.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import gather_points, knn
from ._util import check_features, check_non_negative_int, check_positive_int, check_xyz
from .base import Backbone, BackboneOutput
from .dgcnn import edge_features, edge_mlp, max_avg_pool, point_mlp
from .registry import register_backbone

__all__ = ["ABEM", "ChannelAffinityAttention", "GBNet", "geometric_point_descriptor"]

#: Channels of :func:`geometric_point_descriptor`: point, normal, two edge lengths, two edges.
DESCRIPTOR_DIM = 14
#: Output widths of the four ABEMs (the paper's architecture figure; ``model.py:306-309``).
ABEM_WIDTHS = (64, 64, 128, 256)
#: CAA's comparator compresses the ``N`` point values of a channel to ``N // COMPRESSION`` (``model.py:100-108``).
COMPRESSION = 8


def geometric_point_descriptor(xyz: Tensor) -> Tensor:
    """The paper's "Geometric Point Descriptor" (``model.py:30-66``): the triangle a point ``p`` forms with its
    two nearest other points ``p1``, ``p2`` in 3-D, ``[p, (p1 - p) x (p2 - p), |p1 - p|, |p2 - p|, p1 - p,
    p2 - p]``: the point, the (unnormalised) triangle normal, the two edge lengths and the two edges.

    Args:
        xyz: ``(B, N, 3)`` coordinates, ``N >= 3``.

    Returns:
        ``(B, N, 14)``, in the input's units (lengths) and squared units (the normal).

    Raises:
        ValueError: ``N < 3`` (from :func:`pointtune.ops.knn`).
    """
    idx = knn(xyz, xyz, 3)[..., 1:]  # (B, N, 2): the point itself is its own nearest neighbour
    edge1, edge2 = (gather_points(xyz, idx) - xyz.unsqueeze(2)).unbind(dim=2)  # (B, N, 3) each
    normal = torch.linalg.cross(edge1, edge2, dim=-1)
    lengths = [edge1.norm(dim=-1, keepdim=True), edge2.norm(dim=-1, keepdim=True)]
    return torch.cat([xyz, normal, *lengths, edge1, edge2], dim=-1)


class ChannelAffinityAttention(nn.Module):
    """The paper's Channel-wise Affinity Attention (CAA) module, ``(B, C, N) -> (B, C, N)``
    (``model.py:95-138``).

    * "Compact Channel-wise Comparator": each channel's vector of ``N`` point values is compressed to
      ``N // 8`` by a query and a key map (1x1 ``Conv1d`` over the point axis + BN + ReLU), and the channel
      similarity is ``S = K^T Q`` ``(B, C, C)``, ``S[i, j] = k_i . q_j``.
    * "Channel Affinity Estimator": the affinity ``A = softmax_j(max_j S[i, j] - S[i, j])`` favours the
      channels *least* similar to channel ``i``; the output is ``alpha * A V + x`` with the value
      ``V = ReLU(BN(Conv1d(x)))`` ``(B, C, N)`` and a learnable residual weight ``alpha`` that starts at 0.

    The comparator's maps weigh each point index separately, so the module is built for ``num_points`` and is
    not equivariant to reordering the points unless ``alpha == 0``.

    Args:
        channels: ``C``.
        num_points: ``N`` of the input, ``>= 8``.
    """

    def __init__(self, channels: int, num_points: int):
        super().__init__()
        compact = num_points // COMPRESSION
        self.query = nn.Sequential(nn.Conv1d(num_points, compact, 1, bias=False), nn.BatchNorm1d(compact), nn.ReLU())
        self.key = nn.Sequential(nn.Conv1d(num_points, compact, 1, bias=False), nn.BatchNorm1d(compact), nn.ReLU())
        self.value = nn.Sequential(nn.Conv1d(channels, channels, 1, bias=False), nn.BatchNorm1d(channels), nn.ReLU())
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, N)`` -> ``(B, C, N)``."""
        points_first = x.transpose(1, 2)  # (B, N, C): the point axis is the Conv1d's channel axis
        query = self.query(points_first)  # (B, N/8, C)
        key = self.key(points_first)  # (B, N/8, C)
        similarity = key.transpose(1, 2) @ query  # (B, C, C)
        affinity = torch.softmax(similarity.amax(dim=-1, keepdim=True) - similarity, dim=-1)
        return self.alpha * (affinity @ self.value(x)) + x


class ABEM(nn.Module):
    """The paper's Attentional Back-projection Edge Features Module, ``(B, C_in, N) -> 2 x (B, C_out, N)``
    (``model.py:141-197``).

    "Prominent Feature Encoding", an error-correcting feedback (back-projection) loop:

    1. edge features ``E = [x_j - x_i, x_i]`` of the ``k`` nearest neighbours (:func:`edge_features`) and
       ``H = h(E)`` ``(B, C_out, N, k)``, EdgeConv's shared MLP;
    2. back-projection: a ``(1, k)`` convolution across the ``k`` edges ("LFC") maps ``H`` back to the input
       space, ``x' (B, C_in, N)``;
    3. the error ``x' - x`` gets its own edge features (a kNN graph in the error's space) and shared MLP ``H_e``;
    4. the corrected edges are max-pooled and attended, ``CAA(max_k(H + H_e))``.

    "Fine-grained Feature Encoding": a ``(1, k)`` convolution across the edges ``E``, then CAA.

    Every layer is conv (no bias) + BN + LeakyReLU(0.2) (:func:`edge_mlp`); the ``k`` edges are ordered nearest
    first, which the ``(1, k)`` convolutions rely on.

    Args:
        c_in: ``C_in``.
        c_out: ``C_out``.
        k: neighbours per point, ``<= N``.
        num_points: ``N``, for the two CAA modules.
    """

    def __init__(self, c_in: int, c_out: int, k: int, num_points: int):
        super().__init__()
        self.k = k
        self.edge = edge_mlp(2 * c_in, c_out)
        self.back_projection = edge_mlp(c_out, c_in, width=k)
        self.error_edge = edge_mlp(2 * c_in, c_out)
        self.caa_prominent = ChannelAffinityAttention(c_out, num_points)
        self.fine = edge_mlp(2 * c_in, c_out, width=k)
        self.caa_fine = ChannelAffinityAttention(c_out, num_points)

    def forward(self, x: Tensor, graph: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Prominent and fine-grained features, each ``(B, C_out, N)``, of ``x`` ``(B, C_in, N)``; the
        optional ``graph`` ``(B, C', N)`` is the space of the input's kNN graph (default: ``x``)."""
        edges = edge_features(x, self.k, graph)  # (B, 2 C_in, N, k)
        hidden = self.edge(edges)  # (B, C_out, N, k)
        error = self.back_projection(hidden).squeeze(-1) - x  # (B, C_in, N)
        corrected = hidden + self.error_edge(edge_features(error, self.k))
        prominent = self.caa_prominent(corrected.amax(dim=-1))
        fine = self.caa_fine(self.fine(edges).squeeze(-1))
        return prominent, fine


@register_backbone("gbnet")
class GBNet(Backbone):
    """GBNet classification encoder: ``forward(xyz (B, N, 3), features (B, N, in_features) or None) ->
    (B, 2 * emb_dims)``, for clouds of exactly ``N = num_points`` points.

    The :func:`geometric_point_descriptor` (14 channels) feeds four :class:`ABEM` of widths 64, 64, 128, 256,
    each fed the previous one's prominent feature; the eight outputs (prominent and fine-grained of every
    ABEM, 1024 channels) are mapped by a shared ``Conv1d`` + BN + LeakyReLU(0.2) to ``emb_dims`` per-point
    features and a :class:`ChannelAffinityAttention` (what :meth:`forward_features` returns as
    ``point_features``, at the input points); the global feature is max pooling concatenated with average
    pooling, as DGCNN's (``model.py:300-353``). The authors' classifier on top (``model.py:318-324``: FC 512,
    256 with BN, LeakyReLU(0.2), dropout 0.5, then ``C``) is :class:`~pointtune.backbones.ClassificationHead`
    but for the bias of its second linear layer. Defaults are the authors' (``main.py``: ``k=20``,
    ``emb_dims=1024``, ``num_points=1024``).

    Args:
        k: neighbours per point in every ABEM (authors: 20), ``<= num_points``.
        emb_dims: width of the per-point embedding before pooling (authors: 1024).
        num_points: ``N`` of every input cloud, the data's ``num_points`` (authors: 1024), ``>= 8``: every
            CAA module compresses a channel's ``N`` point values to ``N // 8`` with learned weights.
        in_features: extra per-point input channels beside the coordinates (normals, colour, height),
            appended to the descriptor, so the first ABEM takes ``14 + in_features`` channels; its kNN graph
            is built on the descriptor alone, the authors' graph when ``in_features == 0``.

    Attributes:
        out_dim: ``2 * emb_dims``.
        point_dim: ``emb_dims``.

    Raises:
        ValueError: non-positive ``k`` / ``emb_dims``, ``num_points < 8``, ``k > num_points`` or negative
            ``in_features``.
    """

    def __init__(self, k: int = 20, emb_dims: int = 1024, num_points: int = 1024, in_features: int = 0):
        super().__init__()
        check_positive_int("gbnet", "k", k)
        check_positive_int("gbnet", "emb_dims", emb_dims)
        check_positive_int("gbnet", "num_points", num_points)
        check_non_negative_int("gbnet", "in_features", in_features)
        if num_points < COMPRESSION:
            raise ValueError(f"gbnet: num_points must be >= {COMPRESSION} (CAA compresses N to N // "
                             f"{COMPRESSION}), got {num_points}")
        if k > num_points:
            raise ValueError(f"gbnet: k={k} exceeds num_points={num_points}")
        c_in = DESCRIPTOR_DIM + in_features
        blocks = []
        for width in ABEM_WIDTHS:
            blocks.append(ABEM(c_in, width, k, num_points))
            c_in = width
        self.abems = nn.ModuleList(blocks)
        self.embed = point_mlp(2 * sum(ABEM_WIDTHS), emb_dims)
        self.caa = ChannelAffinityAttention(emb_dims, num_points)
        self.k = k
        self.emb_dims = emb_dims
        self.num_points = num_points
        self.in_features = in_features
        self.out_dim = 2 * emb_dims
        self.point_dim = emb_dims

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """Per-point embeddings ``(B, N, emb_dims)`` at ``xyz`` and the pooled ``(B, 2 * emb_dims)``, for
        clouds ``xyz`` ``(B, N, 3)`` with ``N == num_points`` and ``features`` ``(B, N, in_features)``
        (``None`` when ``in_features == 0``).

        Raises:
            ValueError: a malformed ``xyz`` or ``features``, or ``N != num_points``.
        """
        check_xyz("gbnet", xyz)
        check_features("gbnet", xyz, features, self.in_features)
        if xyz.shape[1] != self.num_points:
            raise ValueError(f"gbnet: clouds have N={xyz.shape[1]} points but the model was built for "
                             f"num_points={self.num_points}")
        x = geometric_point_descriptor(xyz).transpose(1, 2)  # (B, 14, N)
        graph = None
        if features is not None:
            graph = x  # the first kNN graph is built on the descriptor alone
            x = torch.cat([x, features.transpose(1, 2)], dim=1)  # (B, 14 + in_features, N)
        outs = []
        for abem in self.abems:
            x, fine = abem(x, graph)
            graph = None
            outs += [x, fine]
        x = self.caa(self.embed(torch.cat(outs, dim=1)))  # (B, emb_dims, N)
        return BackboneOutput(global_feature=max_avg_pool(x), point_features=x.transpose(1, 2), point_xyz=xyz)
