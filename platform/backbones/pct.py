"""PCT encoder (Guo, Cai, Liu, Mu, Martin, Hu, "PCT: Point Cloud Transformer", Computational Visual Media 7(2),
2021; arXiv:2012.09688): neighbour embedding by two sample-and-group layers, four offset-attention layers,
concatenation, a 1x1 convolution to ``emb_dims`` and pooling.

The configuration follows the authors' classification network (their Jittor ``networks/cls/pct.py`` at commit
0e3429a, class ``Point_Transformer2``; the same network as ``Pct`` in the PyTorch port
Strawberry-Eat-Mango/PCT_Pytorch ``model.py``). A later Jittor commit (5888878) adds a position embedding of
the centres to every attention layer; it is not in the paper and not followed here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..ops import fps, gather_points, knn
from ._util import check_features, check_non_negative_int, check_positive_int, check_xyz
from .base import Backbone, BackboneOutput
from .registry import register_backbone

__all__ = ["LBR", "PCT", "OffsetAttention", "SampleAndGroup", "offset_attention_map"]

#: Attention layers of the encoder (Sec. 3.1, Eq. 1: ``AT^1 .. AT^4``).
N_ATTENTION = 4


class LBR(nn.Module):
    """The paper's LBR block on channels-last features: ``Linear`` (shared by every point), ``BatchNorm1d``
    with statistics over every leading position, then ``act`` (ReLU; the final fusion uses LeakyReLU(0.2)).
    ``forward(x (..., c_in)) -> (..., c_out)``; in training mode the leading positions must number more than
    one. The authors' 1x1 ``Conv1d`` layers hold the same weights; on a 2-core CPU a ``Linear`` on channels-last
    input ran forward + backward 1.8x faster than that ``Conv1d`` (128 channels, 16 x 8192 points)."""

    def __init__(self, c_in: int, c_out: int, bias: bool = False, act: nn.Module | None = None):
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=bias)
        self.bn = nn.BatchNorm1d(c_out)
        self.act = nn.ReLU(inplace=True) if act is None else act

    def forward(self, x: Tensor) -> Tensor:
        h = self.bn(self.linear(x).reshape(-1, self.linear.out_features))
        return self.act(h).view(*x.shape[:-1], -1)


def offset_attention_map(energy: Tensor) -> Tensor:
    """The attention map of offset-attention (Sec. 3.3, Eq. 9) from the energies ``alpha~ = Q K^T``
    ``(B, N, N)`` (Eq. 3): softmax over the first index, ``alpha-_ij = exp(alpha~_ij) / sum_k exp(alpha~_kj)``,
    then l1 normalisation over the second, ``alpha_ij = alpha-_ij / sum_k alpha-_ik``, so that
    ``F_sa = A V`` (Eq. 5) averages the values with weights summing to 1 for every point ``i``. No
    ``1 / sqrt(d_a)`` scaling (Eq. 4 of naive self-attention is replaced). The ``1e-9`` in the l1 denominator
    is the authors' code's.

    Returns:
        ``(B, N, N)`` ``A`` with rows that sum to 1 (up to that ``1e-9``).
    """
    column_softmax = energy.softmax(dim=1)
    return column_softmax / (1e-9 + column_softmax.sum(dim=2, keepdim=True))


class OffsetAttention(nn.Module):
    """One offset-attention layer (Sec. 3.3): ``F_out = OA(F_in) = LBR(F_in - F_sa) + F_in`` (Eq. 7), where
    ``F_in - F_sa`` plays the part of a discrete Laplacian (Eq. 8) and ``F_sa = A V`` with the map of Eq. 9
    (:func:`offset_attention_map`).

    ``Q = K = F_in W_qk`` of width ``channels / 4`` (``d_a = d_e / 4``): the authors' code ties the query and
    key weights (one layer without bias), which makes the energies symmetric; ``V = F_in W_v + b_v``
    (``channels -> channels``) and the LBR's ``Linear`` has a bias too, as in their code (those two biases
    shift every point alike, so the LBR's BatchNorm removes them; they are kept for the official parameter
    count). ``forward(x (B, N, channels)) -> (B, N, channels)``, equivariant to permutations of the ``N``
    points.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.qk = nn.Linear(channels, channels // 4, bias=False)
        self.v = nn.Linear(channels, channels)
        self.lbr = LBR(channels, channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        q = self.qk(x)  # (B, N, channels / 4), also the keys
        attention = offset_attention_map(q @ q.transpose(1, 2))  # (B, N, N), Eqs. 3 and 9
        f_sa = attention @ self.v(x)  # (B, N, channels), Eq. 5
        return x + self.lbr(x - f_sa)


class SampleAndGroup(nn.Module):
    """One SG layer of the neighbour embedding (Sec. 3.4, Eq. 10).

    ``M`` centres by farthest point sampling (:func:`pointtune.ops.fps`, which starts at point 0), each
    grouped with its ``k = min(nsample, N)`` nearest points in coordinate space (itself included); the
    feature of a neighbour ``q`` of centre ``p`` is ``[F(q) - F(p), F(p)]``, mapped by two LBRs
    (``2 c_in -> c_out -> c_out``, BatchNorm over every neighbour of every centre) and max-pooled over the
    ``k`` neighbours. Coordinates enter only through the choice of neighbours, as in the authors' code.

    ``forward(xyz (B, N, 3), features (B, N, c_in), m) -> (centres (B, m, 3), features (B, m, c_out))``.
    """

    def __init__(self, c_in: int, c_out: int, nsample: int):
        super().__init__()
        self.nsample = nsample
        self.mlp = nn.Sequential(LBR(2 * c_in, c_out), LBR(c_out, c_out))

    def forward(self, xyz: Tensor, features: Tensor, m: int) -> tuple[Tensor, Tensor]:
        centre_idx = fps(xyz, m)  # (B, M)
        centres = gather_points(xyz, centre_idx)  # (B, M, 3)
        idx = knn(centres, xyz, min(self.nsample, xyz.shape[1]))  # (B, M, k)
        neighbours = gather_points(features, idx)  # (B, M, k, C)
        centre = gather_points(features, centre_idx).unsqueeze(2).expand_as(neighbours)
        grouped = torch.cat([neighbours - centre, centre], dim=-1)  # (B, M, k, 2C)
        return centres, self.mlp(grouped).amax(dim=2)


@register_backbone("pct")
class PCT(Backbone):
    """PCT classification encoder: ``forward(xyz (B, N, 3), features (B, N, in_features) or None) ->
    (B, out_dim)``.

    With ``d = channels / 4`` (official ``channels = 256``, ``d = 64``):

    * input embedding (Sec. 3.1): two LBRs ``3 + in_features -> d -> d`` per point;
    * neighbour embedding (Sec. 3.4, Eq. 10; :class:`SampleAndGroup`): SG to ``npoints[0]`` centres
      (``d -> 2d``), then SG of those to ``npoints[1]`` centres (``2d -> channels``), ``nsample`` neighbours
      each;
    * two LBRs ``channels -> channels`` (the authors' code, not drawn in the paper);
    * four offset-attention layers (Sec. 3.3, Eqs. 7-9; :class:`OffsetAttention`) of width ``channels``;
    * their outputs and the neighbour-embedding features concatenated (``5 channels``, Eq. 1's ``concat``),
      ``Linear`` + BN + LeakyReLU(0.2) to ``emb_dims`` per centre (Eq. 1's ``W_o``; what
      :meth:`forward_features` returns as ``point_features``, at the ``npoints[1]`` centres);
    * pooling over the centres: max only in the authors' code and in spec ``dcglr.md`` 2.9 (default), or the
      concatenation of max and average pooling that Sec. 3.1 describes.

    With the defaults and ``N = 2048`` (DCGLR's clouds) the two stages take 512 and 256 centres, the official
    counts; ``npoints=(512, 256)`` is the official ModelNet40 network at ``N = 1024``. The official encoder has
    2,208,704 parameters (2,876,136 = the paper's 2.88M with its classifier; ``tests/test_pct.py``).

    FPS starts at point 0 of every cloud, so the output is invariant to permutations of the input points that
    keep point 0 first (same centres in the same order, same neighbourhoods); the attention and the pooling are
    invariant to the order of the centres.

    Args:
        npoints: centres of the two sampling stages, each an absolute count (int ``>= 1``, official 512 and 256)
            or a fraction of the input's ``N`` (float in ``(0, 1]``, giving ``max(1, floor(f N))``; default
            ``(0.25, 0.125)``, spec 2.9, so that views of any size, e.g. DCGLR's 409-point local crops, go
            through); the second stage samples from the first, so it must not take more.
        nsample: neighbours per centre in both stages (official 32); a stage that sees fewer points groups all
            of them.
        channels: width of the attention layers (official 256); a multiple of 4 (the query/key width is
            ``channels / 4``, the input embedding ``channels / 4``, the first stage ``channels / 2``).
        emb_dims: width of the per-centre embedding before pooling (official 1024).
        pooling: ``"max"`` (official code, spec; ``out_dim = emb_dims``) or ``"maxavg"`` (max || avg, Sec. 3.1;
            ``out_dim = 2 * emb_dims``).
        in_features: extra per-point input channels beside the coordinates (normals, colour, height), so the
            input embedding takes ``3 + in_features`` channels; neighbours are searched on the coordinates.

    Attributes:
        out_dim: ``emb_dims`` for ``"max"``, ``2 * emb_dims`` for ``"maxavg"``.
        point_dim: ``emb_dims``.

    Raises:
        ValueError: ``npoints`` not two counts or fractions, or increasing; non-positive ``nsample`` /
            ``emb_dims``; ``channels`` not a positive multiple of 4; an unknown ``pooling``; negative
            ``in_features``; each a one-line message naming the argument.
    """

    def __init__(
        self,
        npoints: Sequence[int | float] = (0.25, 0.125),
        nsample: int = 32,
        channels: int = 256,
        emb_dims: int = 1024,
        pooling: str = "max",
        in_features: int = 0,
    ):
        super().__init__()
        npoints = tuple(npoints) if isinstance(npoints, (list, tuple)) else npoints
        if not isinstance(npoints, tuple) or len(npoints) != 2:
            raise ValueError(f"pct: npoints must have 2 entries (one per sampling stage), got {npoints!r}")
        for i, value in enumerate(npoints):
            if isinstance(value, float):
                if not 0.0 < value <= 1.0:
                    raise ValueError(f"pct: npoints[{i}] as a fraction of N must lie in (0, 1], got {value!r}")
            else:
                check_positive_int("pct", f"npoints[{i}]", value)
        if type(npoints[0]) is type(npoints[1]) and npoints[1] > npoints[0]:
            raise ValueError(f"pct: npoints must not increase (stage 2 samples stage 1's centres), got {npoints}")
        check_positive_int("pct", "nsample", nsample)
        check_positive_int("pct", "channels", channels)
        if channels % 4:
            raise ValueError(f"pct: channels must be a multiple of 4 (query/key width channels / 4), got {channels}")
        check_positive_int("pct", "emb_dims", emb_dims)
        if pooling not in ("max", "maxavg"):
            raise ValueError(f"pct: pooling must be 'max' or 'maxavg', got {pooling!r}")
        check_non_negative_int("pct", "in_features", in_features)
        d = channels // 4
        self.input_embed = nn.Sequential(LBR(3 + in_features, d), LBR(d, d))
        self.sg1 = SampleAndGroup(d, 2 * d, nsample)
        self.sg2 = SampleAndGroup(2 * d, channels, nsample)
        self.pre_attention = nn.Sequential(LBR(channels, channels), LBR(channels, channels))
        self.attention = nn.ModuleList(OffsetAttention(channels) for _ in range(N_ATTENTION))
        self.fuse = LBR((N_ATTENTION + 1) * channels, emb_dims, act=nn.LeakyReLU(0.2))
        self.npoints = npoints
        self.nsample = nsample
        self.channels = channels
        self.emb_dims = emb_dims
        self.pooling = pooling
        self.in_features = in_features
        self.out_dim = 2 * emb_dims if pooling == "maxavg" else emb_dims
        self.point_dim = emb_dims

    def centres(self, n: int) -> tuple[int, int]:
        """Centres ``(M1, M2)`` of the two sampling stages for clouds of ``n`` points: an int entry of
        ``npoints`` as it is, a fraction ``f`` as ``max(1, floor(f n))``.

        Raises:
            ValueError: an absolute count above ``n``, or a second stage larger than the first; the message
                names ``npoints``.
        """
        counts = []
        for i, value in enumerate(self.npoints):
            if isinstance(value, float):
                counts.append(max(1, int(value * n)))
            elif value > n:
                raise ValueError(f"pct: npoints[{i}]={value} centres requested from clouds of N={n} points (give a "
                                 f"fraction of N instead, e.g. npoints=[0.25, 0.125])")
            else:
                counts.append(value)
        if counts[1] > counts[0]:
            raise ValueError(f"pct: npoints={list(self.npoints)} gives {counts[1]} centres in stage 2 but only "
                             f"{counts[0]} in stage 1 for N={n}")
        return counts[0], counts[1]

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """Per-centre embeddings ``(B, M, emb_dims)`` at the ``M`` second-stage centres ``(B, M, 3)``, the
        pooled ``(B, out_dim)`` and the (xyz, features) of the input and both stages in ``levels``, for clouds
        ``xyz`` ``(B, N, 3)`` and ``features`` ``(B, N, in_features)`` (``None`` when ``in_features == 0``);
        ``M`` follows ``npoints`` (:meth:`centres`).

        Raises:
            ValueError: malformed ``xyz`` / ``features``, or ``npoints`` that do not fit ``N``.
        """
        check_xyz("pct", xyz)
        check_features("pct", xyz, features, self.in_features)
        m1, m2 = self.centres(xyz.shape[1])
        x = xyz if features is None else torch.cat([xyz, features], dim=-1)  # (B, N, 3 + in_features)
        f0 = self.input_embed(x)  # (B, N, d)
        xyz1, f1 = self.sg1(xyz, f0, m1)  # (B, M1, 3), (B, M1, 2d)
        xyz2, f2 = self.sg2(xyz1, f1, m2)  # (B, M2, 3), (B, M2, channels)
        h = self.pre_attention(f2)
        outs = []
        for layer in self.attention:
            h = layer(h)
            outs.append(h)
        emb = self.fuse(torch.cat([*outs, f2], dim=-1))  # (B, M2, emb_dims)
        pooled = emb.amax(dim=1) if self.pooling == "max" else torch.cat([emb.amax(dim=1), emb.mean(dim=1)], 1)
        return BackboneOutput(
            global_feature=pooled,
            point_features=emb,
            point_xyz=xyz2,
            levels=((xyz, features), (xyz1, f1), (xyz2, emb)),
        )

    def extra_repr(self) -> str:
        return f"npoints={self.npoints}, nsample={self.nsample}, channels={self.channels}, pooling={self.pooling!r}"
