"""3D-ViT encoder of DCGLR (Sec. 3.3, Eqs. 14-16; spec ``dcglr.md`` 2.8, A14, A15): a plain ViT (Dosovitskiy
et al., ICLR 2021) over point patches, each patch an FPS centre with its ``k`` nearest neighbours embedded by a
mini-PointNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import fps, gather_points, group, knn
from ._util import check_features, check_non_negative_int, check_positive_int, check_xyz
from .base import Backbone, BackboneOutput
from .registry import register_backbone

__all__ = ["DropPath", "PatchEmbed", "PointViT", "SelfAttention", "TransformerBlock", "patchify"]

PATCH_COORDS = ("absolute", "relative")


def _check_fraction(owner: str, name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number in ``[0, 1)``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be a number in [0, 1), got {value!r}")


def patchify(xyz: Tensor, k: int) -> tuple[Tensor, Tensor, int]:
    """Split clouds into ``S`` kNN patches around farthest-point-sampled centres (paper Sec. 3.3; A14, A15).

    ``k_eff = min(k, N)`` points per patch and ``S = N // k_eff`` patches (floor of ``N / k``, so ``S >= 1``; a
    cloud smaller than ``k`` is one patch of all its points, A15). The centres are ``S`` points picked by
    :func:`pointtune.ops.fps` (which starts at point 0 of every cloud); each patch is its centre's ``k_eff``
    nearest input points, the centre itself included (distance 0).

    Args:
        xyz: ``(B, N, 3)`` floating point coordinates, ``N >= 1``.
        k: requested points per patch, ``>= 1``.

    Returns:
        ``(centres (B, S, 3), idx (B, S, k_eff) int64 indices into N, nearest first, k_eff)``.

    Raises:
        ValueError: ``N == 0`` or ``k < 1``; malformed ``xyz`` (from :mod:`pointtune.ops`).
    """
    n = xyz.shape[1]
    if n < 1:
        raise ValueError("vit3d: clouds have N=0 points; at least one is needed")
    if k < 1:
        raise ValueError(f"vit3d: k must be >= 1, got {k}")
    k_eff = min(k, n)
    centres = gather_points(xyz, fps(xyz, n // k_eff))  # (B, S, 3)
    return centres, knn(centres, xyz, k_eff), k_eff


class PatchEmbed(nn.Module):
    """Patch tokens of Eq. 14, ``z_0^i = maxpool(MLP(P^i))``: a shared per-point MLP ``c_in -> 128 -> 256``
    (``Linear`` + ``BatchNorm1d`` over every point of every patch + ReLU, spec 2.8 [REC]), max pooling over the
    ``k`` points of a patch, then ``Linear 256 -> dim``.

    ``forward(patches (B, S, k, c_in)) -> (B, S, dim)``; ``c_in = 3 + in_features``. In training mode the
    BatchNorm needs more than one point in the batch (``B * S * k > 1``).
    """

    def __init__(self, c_in: int, dim: int, widths: tuple[int, int] = (128, 256)):
        super().__init__()
        layers: list[nn.Module] = []
        for c_out in widths:
            layers += [nn.Linear(c_in, c_out, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.mlp = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, dim)

    def forward(self, patches: Tensor) -> Tensor:
        b, s, k, c = patches.shape
        h = self.mlp(patches.reshape(b * s * k, c)).view(b, s, k, -1)  # BN over all B*S*k points
        return self.proj(h.amax(dim=2))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., ECCV 2016) on a residual branch: in training, each sample's branch
    output is zeroed with probability ``p`` and the kept ones are scaled by ``1 / (1 - p)``; identity in eval
    mode or for ``p == 0``. ``forward(x (B, ...)) -> (B, ...)``. Spec 2.8 [REC] ``drop_path 0.1``.

    Raises:
        ValueError: ``p`` outside ``[0, 1)``.
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        _check_fraction("DropPath", "p", p)
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class SelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017) through
    :func:`torch.nn.functional.scaled_dot_product_attention`: fused ``Linear dim -> 3 dim`` for queries, keys
    and values, ``heads`` heads of width ``dim / heads``, output ``Linear dim -> dim``. No masking, no attention
    dropout. ``forward(x (B, T, dim)) -> (B, T, dim)``; equivariant to permutations of the ``T`` tokens.

    Raises:
        ValueError: ``dim`` not divisible by ``heads``.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"vit3d: dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d_h)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, H, T, d_h)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """Pre-norm Transformer encoder layer (spec 2.8 [REC]: pre-LN, GELU, FFN ratio 4):
    ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(FFN(LN(x)))`` with ``FFN = Linear dim -> hidden, GELU,
    Linear hidden -> dim`` and ``hidden = int(dim * mlp_ratio)``. ``forward(x (B, T, dim)) -> (B, T, dim)``.

    Raises:
        ValueError: ``dim`` not divisible by ``heads``, ``hidden < 1`` or ``drop_path`` outside ``[0, 1)``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        if hidden < 1:
            raise ValueError(f"vit3d: mlp_ratio={mlp_ratio} gives an FFN of width {hidden} for dim={dim}")
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.ffn(self.norm2(x)))


@register_backbone("vit3d")
class PointViT(Backbone):
    """3D-ViT of DCGLR: ``forward(xyz (B, N, 3), features (B, N, in_features) or None) -> (B, dim)``.

    * Patching (Sec. 3.3; A14, A15; :func:`patchify`): ``S = N // k`` FPS centres, each grouped with its ``k``
      nearest points, itself included; a cloud of fewer than ``k`` points is one patch of all of them. ``S``
      follows ``N``, so views of any size (2048, 409, 100, 20 points) go through the same model.
    * Patch embedding (Eq. 14; :class:`PatchEmbed`): per-point MLP ``3 + in_features -> 128 -> 256`` (BN +
      ReLU), max pool over the patch, ``Linear 256 -> dim``. The extra input channels are concatenated to the
      coordinates of every point of a patch.
    * Positional embedding (not in the paper; A14 resolution): a learned ``MLP 3 -> 128 -> dim`` (GELU) of the
      centre coordinates is added to every patch token, whatever ``patch_coords``. Without it the tokens of a
      ``"relative"`` model would not know where their patch lies.
    * Sequence (Eq. 15): a learnable ``[CLS]`` token, with its own learned positional embedding, prepended to
      the ``S`` patch tokens: ``(B, S + 1, dim)``.
    * Encoder (Eq. 16): ``depth`` pre-norm Transformer blocks (:class:`TransformerBlock`, multi-head attention
      by ``scaled_dot_product_attention``), stochastic depth rising linearly from 0 at the first block to
      ``drop_path`` at the last (as in timm's ViT), then a final LayerNorm.
    * Output: the ``[CLS]`` token after the final LayerNorm is the global feature (A14 [REC]: the backbone
      feature for pre-training and downstream); the ``Linear`` of Eq. 16 is not part of the backbone (it is the
      classification head when fine-tuning, the projector's place when pre-training). :meth:`forward_features`
      also returns the ``S`` patch tokens after the final LayerNorm at their centres.

    The FPS start is point 0 of each cloud, so the output is invariant to permutations of the input points
    that keep point 0 first (same centres in the same order, same patches); other permutations change the
    centres and hence the output. The Transformer itself carries no sequence-order information, so the
    ``[CLS]`` output is invariant to the order of the patch tokens.

    Args:
        k: points per patch (paper: 32).
        dim: token width ``D`` (spec [REC] 384; not stated in the paper).
        depth: Transformer blocks ``L`` (spec [REC] 12; not stated).
        heads: attention heads (paper Sec. 5.5: 8); must divide ``dim``.
        mlp_ratio: FFN hidden width over ``dim`` (spec [REC] 4).
        drop_path: stochastic-depth rate of the last block, in ``[0, 1)`` (spec [REC] 0.1).
        patch_coords: ``"absolute"``: raw xyz of the patch points into the patch MLP, Eq. 14 literally
            (default); ``"relative"``: xyz minus the patch centre (Point-BERT style).
        in_features: extra per-point input channels beside the coordinates (normals, colour, height).

    Attributes:
        out_dim: ``dim``.
        point_dim: ``dim``.

    Raises:
        ValueError: non-positive ``k`` / ``dim`` / ``depth`` / ``heads``, ``dim`` not divisible by ``heads``,
            non-positive ``mlp_ratio`` (or one giving an FFN of width 0), ``drop_path`` outside ``[0, 1)``,
            unknown ``patch_coords`` or negative ``in_features``; each a one-line message naming the argument.
    """

    def __init__(
        self,
        k: int = 32,
        dim: int = 384,
        depth: int = 12,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        patch_coords: str = "absolute",
        in_features: int = 0,
    ):
        super().__init__()
        for name, value in (("k", k), ("dim", dim), ("depth", depth), ("heads", heads)):
            check_positive_int("vit3d", name, value)
        check_non_negative_int("vit3d", "in_features", in_features)
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ValueError(f"vit3d: mlp_ratio must be a positive number, got {mlp_ratio!r}")
        _check_fraction("vit3d", "drop_path", drop_path)
        if patch_coords not in PATCH_COORDS:
            raise ValueError(f"vit3d: patch_coords must be 'absolute' or 'relative', got {patch_coords!r}")
        if dim % heads:
            raise ValueError(f"vit3d: dim={dim} must be divisible by heads={heads}")
        self.patch_embed = PatchEmbed(3 + in_features, dim)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
        rates = [drop_path * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # timm: linear from 0
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(dim)
        self.k = k
        self.dim = dim
        self.depth = depth
        self.heads = heads
        self.patch_coords = patch_coords
        self.in_features = in_features
        self.out_dim = dim
        self.point_dim = dim
        self.apply(self._init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """ViT initialisation (timm): truncated normal (std 0.02) ``Linear`` weights, zero biases; LayerNorm
        and BatchNorm at weight 1, bias 0."""
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def tokens(self, xyz: Tensor, features: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Patch tokens with their positional embedding, before the Transformer (Eq. 14 + A14).

        Args:
            xyz: ``(B, N, 3)`` clouds, ``N >= 1``.
            features: ``(B, N, in_features)`` extra channels, ``None`` when ``in_features == 0``.

        Returns:
            ``(tokens (B, S, dim), centres (B, S, 3))`` with ``S = N // min(k, N)``.

        Raises:
            ValueError: malformed ``xyz`` / ``features`` or ``N == 0``.
        """
        check_xyz("vit3d", xyz)
        check_features("vit3d", xyz, features, self.in_features)
        centres, idx, _ = patchify(xyz, self.k)
        patches = group(xyz, centres, idx, features, relative=self.patch_coords == "relative")  # (B, S, k, 3+C)
        return self.patch_embed(patches) + self.pos_embed(centres), centres

    def encode(self, tokens: Tensor) -> Tensor:
        """Eqs. 15-16 without the final Linear: prepend ``[CLS]`` (plus its positional embedding) to patch
        ``tokens`` ``(B, S, dim)``, run the Transformer blocks and the final LayerNorm. Returns
        ``(B, S + 1, dim)``, ``[CLS]`` first."""
        cls = (self.cls_token + self.cls_pos).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_features(self, xyz: Tensor, features: Tensor | None = None) -> BackboneOutput:
        """``[CLS]`` feature ``(B, dim)`` and patch tokens ``(B, S, dim)`` at the patch centres ``(B, S, 3)``,
        all after the final LayerNorm, for clouds ``xyz`` ``(B, N, 3)`` (any ``N >= 1``;
        ``S = N // min(k, N)``) and ``features`` ``(B, N, in_features)`` (``None`` when ``in_features == 0``).

        Raises:
            ValueError: malformed ``xyz`` / ``features`` or ``N == 0``.
        """
        tokens, centres = self.tokens(xyz, features)
        x = self.encode(tokens)
        return BackboneOutput(global_feature=x[:, 0], point_features=x[:, 1:], point_xyz=centres)

    def extra_repr(self) -> str:
        return f"k={self.k}, dim={self.dim}, depth={self.depth}, heads={self.heads}, patch_coords={self.patch_coords!r}"

