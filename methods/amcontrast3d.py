"""AMContrast3D: adaptive-margin contrastive learning for ambiguity-aware 3D semantic segmentation.

Paper: Y. Chen, Y. Duan, R. Zhang, Y.-P. Tan, *"Adaptive Margin Contrastive Learning for Ambiguity-aware 3D
Semantic Segmentation"* (ICME 2024). Spec: ``shared/specs/amcontrast3d.md``.

The training losses are pure PyTorch functions on batched, channels-last tensors ``(B, N_s, ...)``;
:class:`AMContrast3D` (the registered method) feeds them a PointNeXt's per-stage decoder features
(:meth:`pointtune.backbones.pointnext.PointNeXt.forward_seg`). Per decoder stage ``s`` (positions ``P^s``, features ``F^s``, labels ``Y^s``):

1. **Labels** at a subsampled stage (spec 2.1, CBL's label mining; :func:`mine_labels`, :func:`stage_labels`):
   the one-hot labels of the ``k_r`` nearest full-resolution points are averaged into a soft label and its
   argmax (ties: the lowest class index) is the stage label. The input-resolution stage keeps the input labels.
2. **Ambiguity Estimation Framework** (Eqs. 1-4; :func:`neighbourhoods`, :func:`closeness_centralities`,
   :func:`ambiguity`): the ``K`` nearest neighbours in ``P^s`` are split into intra-class ``N_i^+`` and
   inter-class ``N_i^-`` sets; ``cc^+ = |N^+| / d^+`` and ``cc^- = |N^-| / d^-`` with ``d`` the sum of squared
   Euclidean distances (m^-2 for metric coordinates);
   ``a_i = 0`` if no inter-class neighbour, ``1`` if no intra-class neighbour but the point itself,
   ``G = 1 / (1 + exp(beta (cc^+ - cc^-)))`` otherwise. Constants: computed under ``no_grad``.
3. **Margin generator** (Eq. 7, Table III; :func:`margins`): ``adaptive`` ``m = mu a + nu``; ``constant``
   ``m = nu`` (Table III rows 1-2, ``mu = 0``); ``clipped`` ``m = max(0, mu a + nu)`` (Table III's last row).
   Detached.
4. **Adaptive-margin contrastive loss** (Eqs. 9-10; :func:`am_contrast_loss`), local to the kNN neighbourhood,
   cosine similarity of the raw decoder features (no projection head), margin on positive pairs only::

       L_AM^s = 1/n^s sum_{i in boundary} -log( P_i / (P_i + sum_{k in N-} e^{cos_ik/tau}) ),
       P_i = sum_{j in N+} e^{(cos_ij - m_i)/tau}

5. **Total** (Eq. 11; :func:`total_loss`): ``lambda CE + (1 - lambda) sum_s L_AM^s``; with ``contrast: false``
   it is the plain CE (the PointNeXt baseline), not ``lambda CE``. CE (:func:`segmentation_ce`) is PyTorch's
   mean over the non-ignored points (spec A5: no ``1/C``, no label smoothing).

:func:`contrast_terms` runs 1-4 over the configured stages with an :class:`AMContrast3DConfig` and returns the
per-stage losses and their diagnostics; the Method adds CE and calls :func:`total_loss`.

Readings taken (ids of ``shared/specs/amcontrast3d.md`` section 6; [REC] of the spec unless stated):

* A1 (self in ``N_i^+``): ``include_self: false`` (default, the official code): the ``K`` nearest points are
  queried with the point itself among them and self is dropped, leaving ``K - 1`` neighbours for the
  centralities, the rules of Eq. 4 and the loss. Self is identified by index, not by distance: when exact
  duplicates tie with it and push it out of the ``K``, the farthest of the ``K`` is dropped instead, so every
  point always has exactly ``K - 1`` others (a duplicate of the point counts as a neighbour, at distance 0).
  ``include_self: true`` is the paper read literally: self is one of the ``K`` (column 0), counts in
  ``|N^+|`` (Eq. 1's sum gets a zero distance), and adds the positive pair ``e^{(1 - m_i)/tau}`` to Eq. 10.
  Eq. 4's rules in both readings: ``a = 0`` iff ``N^-`` is empty (``|N^+| = K``), ``a = 1`` iff ``N^+`` holds
  no point but the anchor itself (``|N^+| = 1`` with self, ``0`` without), ``G`` otherwise.
* A2 (extremely ambiguous points, ``a = 1``, no positive but self): with ``include_self: false`` they count in
  ``n^s`` and contribute zero loss and zero gradient (gradient-equivalent to the code's constant
  ``-log 1e-12``; the logged loss has no such constant, so it is about ``27.6 x (their share)`` below the
  official code's). With ``include_self: true`` they keep the self pair and are trained by Eq. 10 as printed.
* A3 (stages and features): ``stages`` indexes the decoder outputs, 0 the input resolution ``N``, 1 ``N/4``,
  ... (default ``[0, 1, 2, 3]``, the code's 4 "up" stages); the positions of a stage are its encoder points,
  the features the decoder output at them, used raw (no projection head); the stage losses are summed. An
  integer ``n`` for ``stages`` means the ``n`` finest stages ``[0, ..., n - 1]`` (the search space's "number of
  stages"; which ``n`` stages the code's ``stages_num`` keeps is not stated: my reading).
* A4 (labels at subsampled stages): CBL mining as the code, ``k_r`` = the stage's subsampling ratio
  ``round(N / N_s)`` (:func:`mining_k`), which is the code's ``4^s`` for PointNeXt's stride-4 stages and
  follows other strides. Ignored full-resolution points take part in the mining as an extra class ``C``
  (as the code); a stage point whose soft label peaks at that class is ignored (``ignore_index``), a tie with
  a real class goes to the real class (lowest index). In the contrast, ``ignore_mode: exclude`` (default; the
  spec's flagged alternative, chosen because pointtune requires that ignored points contribute nothing):
  an ignored point is no anchor, is not counted in ``n^s`` and is no neighbour: the kNN runs over the
  non-ignored points only (ignored points are moved beyond the scene before the search), so an anchor's
  ``K`` neighbours are its ``K`` nearest labelled points, and changing an ignored point's position, feature
  or label changes nothing. ``ignore_mode: extra_class`` is the code: ignored points are one more class in
  the ambiguity and the contrast (anchors and neighbours); CE ignores them in both modes. Padding points of a
  padded batch must carry ``ignore_index`` (then ``exclude`` removes them too).
* A5: CE as ``F.cross_entropy`` mean over non-ignored points, no label smoothing (:func:`segmentation_ce`):
  ``ce_normalization: mean``, the official code's. Eq. 12 printed divides by ``n C`` (``paper``), which
  would weight CE by ``lambda / C`` (0.0077 on S3DIS) against the contrast: kept as a switch, not the default.
* A9: the paper's S3DIS setting is the recipe; ``method.recipe: scannet`` selects the ScanNet one (the
  code's lr 0.001, x0.1 at 70 % and 90 % of the run; the paper's ``temperature`` 0.5 and ``nu`` 0.6; the
  ``scannet`` dataset).
* A6: ``lambda_ce`` 0.1 as both paper and code.
* A7: ``beta`` (0.04) is used as given with the coordinates in the data pipeline's units (metres, not
  unit-sphere normalised); :func:`stage_stats` gives the per-stage share of boundary points and mean ``a``.
* A8: ``a`` through ``torch.sigmoid(-beta (cc^+ - cc^-))`` (no overflow); ``d^+, d^-`` clamped at
  ``eps = 1e-10`` (duplicate points); the anchors of Eq. 10 (the ``n^s`` points with ``a in (0, 1]``) are
  chosen by labels, "at least one inter-class neighbour", not by the float value of ``a`` (a boundary point
  whose ``G`` underflows to 0 stays an anchor with ``m = nu``); "all intra" is ``N^- = {}``, not the batch
  maximum of ``|N^+|``. The logsumexps of Eq. 10 are max-stabilised.
* A11 (kNN across samples): per sample by default; ``cross_sample_knn: true`` searches the whole batch as
  one cloud for the mining, the ambiguity and the contrast, as the official code does.
* A13: ambiguities and margins are detached; ``L_AM`` reaches only the features (anchor and neighbours).
* K larger than the points of a stage (a coarse stage of a small crop): ``K`` is clamped to ``N_s`` (every
  other point is a neighbour); a cloud of one point has no neighbour, ``a = 0`` and no anchor.
* ``L_AM^s`` is the mean over the boundary points of the whole (per-worker) batch, as the code's flattened
  batch; with none it is a zero still attached to the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor

from pointtune.method import BackboneConfig, Method, MethodConfig, Task, point_inputs, register_method
from pointtune.ops import gather_points, knn

__all__ = [
    "AMContrast3D",
    "AMContrast3DConfig",
    "Neighbourhood",
    "mining_k",
    "mine_labels",
    "stage_labels",
    "neighbourhoods",
    "closeness_centralities",
    "ambiguity",
    "margins",
    "am_contrast_loss",
    "stage_stats",
    "stage_loss",
    "contrast_terms",
    "segmentation_ce",
    "total_loss",
]

MarginKind = Literal["adaptive", "constant", "clipped"]
IgnoreMode = Literal["exclude", "extra_class"]

DIST_EPS = 1e-10   # floor of d^+ and d^- (squared input units), A8
COS_EPS = 1e-8     # floor of feature norms in the cosine similarity (F.cosine_similarity's default)
_FILL = -1e30      # finite "minus infinity" for masked logsumexp entries (no NaN gradients)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


class AMContrast3DConfig(MethodConfig):
    """Hyperparameters of AMContrast3D, named after the paper's symbols (spec section 3); defaults are the
    paper's S3DIS values (ScanNet: ``temperature 0.5``, ``nu 0.6``). See the module docstring for the
    readings behind each."""

    name: Literal["amcontrast3d"] = Field("amcontrast3d", description="method name")
    backbone: BackboneConfig = Field(
        BackboneConfig(name="pointnext", inputs=["color", "height"]),
        description="the encoder-decoder giving per-stage points and decoder features (paper: PointNeXt-XL; "
                    "S3DIS inputs RGB + height)")
    contrast: bool = Field(
        True, description="add the adaptive-margin contrastive loss (false: plain CE, the PointNeXt baseline)")
    lambda_ce: float = Field(
        0.1, ge=0, le=1, description="lambda of Eq. 11: CE weight, the stage losses get 1 - lambda (paper 0.1)")
    temperature: float = Field(
        0.3, gt=0, description="tau of Eqs. 9-10 (paper: 0.3 S3DIS, 0.5 ScanNet)")
    beta: float = Field(
        0.04, ge=0, description="beta of Eq. 3, slope of the inverse sigmoid of cc+ - cc- in m^2 (paper 0.04)")
    mu: float = Field(-1.0, description="mu of Eq. 7, scale of the margin generator m = mu a + nu (paper -1)")
    nu: float = Field(
        0.5, description="nu of Eq. 7, bias of the margin generator (paper: 0.5 S3DIS, 0.6 ScanNet)")
    margin: MarginKind = Field(
        "adaptive",
        description="adaptive: m = mu a + nu (paper) | constant: m = nu | clipped: m = max(0, mu a + nu) (Table III)")
    k: int = Field(
        24, ge=2, description="K, neighbourhood size counting the point itself (paper 24; K - 1 others, A1)")
    stages: list[int] = Field(
        [0, 1, 2, 3], min_length=1,
        description="decoder stages with L_AM (0: input resolution N, s: N/4^s); an int n means [0..n-1] (A3)")
    include_self: bool = Field(
        False, description="count the point itself in N+ and as a positive pair (paper literal; false: code, A1)")
    ignore_index: int = Field(-1, description="label of unannotated points: no CE, no mining vote, no contrast")
    ignore_mode: IgnoreMode = Field(
        "exclude",
        description="exclude: ignored points are no anchor and no neighbour | extra_class: one more class (code, A4)")
    cross_sample_knn: bool = Field(
        False, description="search neighbours across the whole batch as one cloud (official-code quirk, A11)")
    ce_normalization: Literal["mean", "paper"] = Field(
        "mean", description="CE of Eq. 12: mean over points (code, A5) | paper: divided by n C as printed")

    @field_validator("stages", mode="before")
    @classmethod
    def _stage_count(cls, value):
        if isinstance(value, bool):
            raise ValueError("stages: a list of stage indices or a number of stages, not a boolean")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"stages: a number of stages must be >= 1, got {value}")
            return list(range(value))
        return value

    @field_validator("stages")
    @classmethod
    def _stage_list(cls, value: list[int]) -> list[int]:
        if min(value) < 0:
            raise ValueError(f"stages: indices must be >= 0 (0 is the input resolution), got {value}")
        if len(set(value)) != len(value):
            raise ValueError(f"stages: each stage at most once, got {value}")
        return sorted(value)


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_xyz(name: str, xyz: Tensor) -> None:
    if not isinstance(xyz, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(xyz).__name__}")
    if xyz.dim() != 3 or xyz.shape[-1] != 3 or not xyz.is_floating_point():
        raise ValueError(f"{name} must be floating point (B, N, 3), got {tuple(xyz.shape)} {xyz.dtype}")


def _check_labels(name: str, labels: Tensor, shape: tuple[int, ...]) -> None:
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {labels.dtype}")
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


# --------------------------------------------------------------------------------------------------
# Labels at subsampled stages (spec 2.1, A4)
# --------------------------------------------------------------------------------------------------


def mining_k(n: int, n_stage: int) -> int:
    """``k_r``, the full-resolution neighbours voting for a stage point's label: the subsampling ratio
    ``round(n / n_stage)``, at least 1 and at most ``n`` (``4^s`` for PointNeXt's stride-4 stages: 24000 points
    give 1, 4, 16, 64 at stages of 24000, 6000, 1500, 375 points; spec 2.1, A4).

    Raises:
        TypeError: a non-int count.
        ValueError: ``n < 1`` or ``n_stage < 1``.
    """
    _check_int("n", n, 1)
    _check_int("n_stage", n_stage, 1)
    return max(1, min(n, int(round(n / n_stage))))


@torch.no_grad()
def mine_labels(xyz: Tensor, labels: Tensor, stage_xyz: Tensor, k_r: int, num_classes: int,
                ignore_index: int = -1, cross_sample: bool = False) -> Tensor:
    """Labels of subsampled points by CBL's label mining (spec 2.1; the paper's "label mining strategy from
    [7]", no equation): the one-hot labels of the ``k_r`` nearest full-resolution points (Euclidean, in
    ``xyz``) are averaged into a soft label over ``C + 1`` classes, the extra class ``C`` standing for
    ``ignore_index``; the stage label is its argmax, ties to the lowest index (so a tie between a real class
    and the ignore class goes to the real class), and ``ignore_index`` where class ``C`` wins.

    Args:
        xyz: ``(B, N, 3)`` full-resolution positions (metres).
        labels: ``(B, N)`` integer labels in ``[0, num_classes)`` or ``ignore_index``.
        stage_xyz: ``(B, N_s, 3)`` positions of the stage's points (usually an FPS subset of ``xyz``).
        k_r: voting neighbours, ``>= 1`` (clamped to ``N``; :func:`mining_k`).
        num_classes: ``C``.
        ignore_index: label of unannotated points.
        cross_sample: search the whole batch as one cloud (A11, the official code); default per sample.

    Returns:
        ``(B, N_s)`` int64 labels in ``[0, C)`` or ``ignore_index``; no gradient.

    Raises:
        TypeError: non-tensor, non-floating positions or non-integer labels, non-int ``k_r``/``num_classes``.
        ValueError: bad shapes, mismatched batch sizes, ``k_r < 1``, ``num_classes < 1``, or a label outside
            ``[0, C)`` that is not ``ignore_index``.
    """
    _check_xyz("xyz", xyz)
    _check_xyz("stage_xyz", stage_xyz)
    b, n, _ = xyz.shape
    _check_labels("labels", labels, (b, n))
    if stage_xyz.shape[0] != b:
        raise ValueError(f"stage_xyz has batch size {stage_xyz.shape[0]}, xyz has {b}")
    _check_int("k_r", k_r, 1)
    _check_int("num_classes", num_classes, 1)
    labels = labels.long()
    ignored = labels == ignore_index
    bad = ~ignored & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        value = int(labels[bad][0])
        raise ValueError(f"labels: {value} is outside [0, {num_classes}) and is not ignore_index={ignore_index}")
    m = stage_xyz.shape[1]
    votes = torch.where(ignored, torch.full_like(labels, num_classes), labels)          # (B, N), ignore -> C
    query, ref = stage_xyz.to(xyz.dtype), xyz
    if cross_sample:
        query, ref, votes = query.reshape(1, b * m, 3), ref.reshape(1, b * n, 3), votes.reshape(1, b * n)
    k = min(k_r, ref.shape[1])
    idx = knn(query, ref, k)                                                            # (B', M', k)
    voted = votes.gather(1, idx.reshape(idx.shape[0], -1)).reshape(idx.shape)           # (B', M', k)
    counts = torch.zeros(*idx.shape[:2], num_classes + 1, dtype=torch.float32, device=xyz.device)
    counts.scatter_add_(-1, voted, torch.ones_like(voted, dtype=torch.float32))         # k x soft label
    hard = counts.argmax(-1).reshape(b, m)                                              # first max: lowest
    return torch.where(hard == num_classes, torch.full_like(hard, ignore_index), hard)


@torch.no_grad()
def stage_labels(xyz: Tensor, labels: Tensor, stage_xyz: Sequence[Tensor], num_classes: int,
                 ignore_index: int = -1, cross_sample: bool = False) -> list[Tensor]:
    """Labels ``Y^s`` of every stage (spec 2.1): a stage whose points are the input cloud itself (same ``N``
    and equal positions, in order: PointNeXt's stage 0) keeps ``labels``; every other stage is mined by
    :func:`mine_labels` with ``k_r = mining_k(N, N_s)`` (``4^s`` for stride 4).

    Args:
        xyz: ``(B, N, 3)`` input positions; labels: ``(B, N)`` integer labels.
        stage_xyz: per stage, ``(B, N_s, 3)`` positions.
        num_classes, ignore_index, cross_sample: as :func:`mine_labels`.

    Returns:
        Per stage, ``(B, N_s)`` int64 labels.

    Raises:
        TypeError, ValueError: as :func:`mine_labels`.
    """
    _check_xyz("xyz", xyz)
    _check_labels("labels", labels, tuple(xyz.shape[:2]))
    out = []
    n = xyz.shape[1]
    for s, pts in enumerate(stage_xyz):
        _check_xyz(f"stage_xyz[{s}]", pts)
        if pts.shape == xyz.shape and torch.equal(pts.to(xyz.dtype), xyz):
            out.append(labels.long())
        else:
            out.append(mine_labels(xyz, labels, pts, mining_k(n, pts.shape[1]), num_classes, ignore_index,
                                   cross_sample))
    return out


# --------------------------------------------------------------------------------------------------
# Ambiguity Estimation Framework (Eqs. 1-4)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Neighbourhood:
    """The kNN neighbourhoods of one stage and their intra/inter-class split (spec 2.2 step 1).

    Tensors are in the search layout ``(B', N', K')``: ``(B, N_s, K')`` per sample, ``(1, B N_s, K')`` with
    ``cross_sample`` (indices then run over the whole batch). ``K' = min(K, N') - 1`` others without self,
    ``min(K, N')`` with self in column 0 (``include_self``).

    Attributes:
        idx: ``(B', N', K')`` int64 neighbour indices into ``N'``, nearest first (self first when included).
        intra: ``(B', N', K')`` bool, neighbour in ``N_i^+`` (same label; anchor and neighbour not excluded).
        inter: ``(B', N', K')`` bool, neighbour in ``N_i^-`` (other label; neither excluded).
        d2: ``(B', N', K')`` squared Euclidean distances to the neighbours (squared input units; 0 for self).
        anchor: ``(B', N')`` bool, the point may be an anchor (not excluded as ignored).
        include_self: column 0 is the point itself.
        batch_shape: ``(B, N_s)``, the layout of the caller's per-point tensors.
    """

    idx: Tensor
    intra: Tensor
    inter: Tensor
    d2: Tensor
    anchor: Tensor
    include_self: bool
    batch_shape: tuple[int, int]

    @property
    def n_intra(self) -> Tensor:
        """``(B', N')`` int64 ``|N_i^+|`` (self included when ``include_self``)."""
        return self.intra.sum(-1)

    @property
    def n_inter(self) -> Tensor:
        """``(B', N')`` int64 ``|N_i^-|``."""
        return self.inter.sum(-1)

    @property
    def boundary(self) -> Tensor:
        """``(B', N')`` bool: the anchors of Eq. 10, ``a_i in (0, 1]`` by labels (at least one inter-class
        neighbour; A8); their count is ``n^s``."""
        return self.anchor & self.inter.any(-1)

    @property
    def extreme(self) -> Tensor:
        """``(B', N')`` bool: boundary points with no intra-class neighbour but (possibly) self, ``a_i = 1``."""
        others = self.intra[..., 1:] if self.include_self else self.intra
        return self.boundary & ~others.any(-1)

    def to_batch(self, x: Tensor) -> Tensor:
        """A per-point tensor ``(B', N', ...)`` of the search layout back to ``(B, N_s, ...)``."""
        return x.reshape(*self.batch_shape, *x.shape[2:])

    def to_search(self, x: Tensor) -> Tensor:
        """A per-point tensor ``(B, N_s, ...)`` into the search layout ``(B', N', ...)``."""
        return x.reshape(*self.anchor.shape, *x.shape[2:])


@torch.no_grad()
def neighbourhoods(xyz: Tensor, labels: Tensor, k: int = 24, include_self: bool = False, ignore_index: int = -1,
                   ignore_mode: IgnoreMode = "exclude", cross_sample: bool = False) -> Neighbourhood:
    """The ``K`` nearest neighbours of every point in position space, split into intra-class ``N_i^+`` and
    inter-class ``N_i^-`` (paper section III-B; Algorithm 1 lines 1-5; spec 2.2 step 1, A1, A4, A11).

    Neighbours come from :func:`pointtune.ops.knn` on ``xyz`` (Euclidean). ``min(K, N)`` points are queried,
    the point itself among them; self is then removed by index (when exact duplicates push it out of the
    ``K``, the farthest is removed instead), leaving ``K - 1`` others; with ``include_self`` self is put back
    as column 0 (``K`` in all). With ``ignore_mode='exclude'`` points labelled ``ignore_index`` are moved
    beyond the scene before the search, so they are found only when a sample has fewer than ``K`` labelled
    points, and then masked: they are in neither set and are no anchor. With ``'extra_class'`` the ignore
    label is a class like the others.

    Args:
        xyz: ``(B, N, 3)`` stage positions ``P^s`` (metres).
        labels: ``(B, N)`` integer stage labels ``Y^s`` (any integers; ``ignore_index`` for unannotated).
        k: ``K``, ``>= 1`` (clamped to ``N``).
        include_self: the paper's literal ``N_i^+`` containing the point itself (A1).
        ignore_index: label of unannotated points.
        ignore_mode: ``exclude`` or ``extra_class`` (A4).
        cross_sample: one search over the whole batch (A11).

    Returns:
        A :class:`Neighbourhood` (no gradient).

    Raises:
        TypeError: non-tensor or non-floating positions, non-integer labels, non-int ``k``.
        ValueError: bad shapes, ``k < 1`` or an unknown ``ignore_mode``.
    """
    _check_xyz("xyz", xyz)
    b, n, _ = xyz.shape
    _check_labels("labels", labels, (b, n))
    _check_int("k", k, 1)
    if ignore_mode not in ("exclude", "extra_class"):
        raise ValueError(f"ignore_mode must be 'exclude' or 'extra_class', got {ignore_mode!r}")
    labels = labels.long()
    if cross_sample:
        xyz, labels = xyz.reshape(1, b * n, 3), labels.reshape(1, b * n)
    bb, nn_ = labels.shape
    keep = labels != ignore_index if ignore_mode == "exclude" else torch.ones_like(labels, dtype=torch.bool)
    search = xyz
    if not bool(keep.all()):
        lo, hi = xyz.amin(1, keepdim=True), xyz.amax(1, keepdim=True)                 # (B', 1, 3)
        span = (hi - lo).norm(dim=-1, keepdim=True) + 1.0
        far = hi + 2.0 * span                          # farther from every point than any two points apart
        search = torch.where(keep.unsqueeze(-1), xyz, far.expand_as(xyz))
    kk = min(k, nn_)
    idx = knn(search, search, kk)                                                       # (B', N', kk)
    own = torch.arange(nn_, device=xyz.device).view(1, nn_, 1)
    drop = idx == own
    drop[..., -1] |= ~drop.any(-1)                 # self pushed out by duplicates: drop the farthest
    idx = idx[~drop].reshape(bb, nn_, kk - 1)      # exactly one dropped per row; order kept, nearest first
    if include_self:
        idx = torch.cat([own.expand(bb, nn_, 1), idx], dim=-1)
    kp = idx.shape[-1]
    flat = idx.reshape(bb, -1)
    nbr_labels = labels.gather(1, flat).reshape(bb, nn_, kp)
    nbr_keep = keep.gather(1, flat).reshape(bb, nn_, kp) & keep.unsqueeze(-1)
    same = nbr_labels == labels.unsqueeze(-1)
    d2 = (gather_points(xyz, idx) - xyz.unsqueeze(2)).pow(2).sum(-1)                    # exact, not ranked
    return Neighbourhood(idx=idx, intra=same & nbr_keep, inter=~same & nbr_keep, d2=d2, anchor=keep,
                         include_self=include_self, batch_shape=(b, n))


@torch.no_grad()
def closeness_centralities(nbh: Neighbourhood, eps: float = DIST_EPS) -> tuple[Tensor, Tensor]:
    """Closeness centralities of Eqs. 1-2: ``cc_i^+ = |N_i^+| / d_i^+`` and ``cc_i^- = |N_i^-| / d_i^-``, with
    ``d`` the sum of squared Euclidean distances to the set's points, clamped at ``eps`` (A8: duplicate
    points); units: inverse squared input units (m^-2). Self, when included, counts in ``|N^+|`` with a zero
    distance. An empty set gives 0 (it is not used by Eq. 4).

    Args:
        nbh: from :func:`neighbourhoods`.
        eps: floor of ``d`` (squared input units), ``> 0``.

    Returns:
        ``(cc_plus, cc_minus)``, each ``(B', N')`` in the dtype of the positions, search layout.

    Raises:
        ValueError: ``eps <= 0``.
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    d2 = nbh.d2
    n_pos, n_neg = nbh.intra.to(d2.dtype).sum(-1), nbh.inter.to(d2.dtype).sum(-1)
    d_pos = (d2 * nbh.intra).sum(-1).clamp_min(eps)
    d_neg = (d2 * nbh.inter).sum(-1).clamp_min(eps)
    return n_pos / d_pos, n_neg / d_neg


@torch.no_grad()
def ambiguity(nbh: Neighbourhood, beta: float = 0.04, eps: float = DIST_EPS) -> Tensor:
    """Per-point ambiguity ``a_i`` of Eq. 4 with the inverse sigmoid ``G`` of Eq. 3::

        a_i = 0                                          if N_i^- is empty              (|N^+| = K)
        a_i = 1                                          if N_i^+ holds no point but i  (|N^+| = 1)
        a_i = 1 / (1 + exp(beta (cc_i^+ - cc_i^-)))      otherwise

    evaluated as ``sigmoid(-beta (cc^+ - cc^-))`` (A8). Non-anchors (ignored points under ``exclude``) and
    points without neighbours get 0. A constant: no gradient (A13).

    Args:
        nbh: from :func:`neighbourhoods`.
        beta: ``beta`` of Eq. 3 in squared input units (m^2), ``>= 0``.
        eps: floor of ``d`` (:func:`closeness_centralities`).

    Returns:
        ``(B, N_s)`` ambiguities in ``[0, 1]``, in the dtype of the positions (caller's layout).

    Raises:
        ValueError: ``beta < 0`` or ``eps <= 0``.
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    cc_pos, cc_neg = closeness_centralities(nbh, eps)
    g = torch.sigmoid(-beta * (cc_pos - cc_neg))
    a = torch.where(nbh.extreme, torch.ones_like(g), g)
    a = torch.where(nbh.boundary, a, torch.zeros_like(g))
    return nbh.to_batch(a)


# --------------------------------------------------------------------------------------------------
# Margin generator (Eq. 7, Table III)
# --------------------------------------------------------------------------------------------------


def margins(a: Tensor, mu: float = -1.0, nu: float = 0.5, kind: MarginKind = "adaptive") -> Tensor:
    """Ambiguity-aware margins (Eq. 7 and the variants of Table III), detached (A13)::

        adaptive:  m_i = mu a_i + nu               (Eq. 7; Table III rows 3-5: a_i, 1 - a_i, 0.5 - a_i)
        constant:  m_i = nu                        (Table III rows 1-2: mu = 0, m = 0 or 0.5)
        clipped:   m_i = max(0, mu a_i + nu)       (Table III row 6: max(0, 0.5 - a_i))

    Args:
        a: ``(...)`` ambiguities in ``[0, 1]``.
        mu: scale (paper -1); ignored by ``constant``.
        nu: bias (paper 0.5 S3DIS, 0.6 ScanNet).
        kind: ``adaptive``, ``constant`` or ``clipped``.

    Returns:
        ``(...)`` margins (cosine-similarity units), same dtype as ``a``, no gradient.

    Raises:
        ValueError: an unknown ``kind``.
    """
    a = a.detach()
    if kind == "adaptive":
        return mu * a + nu
    if kind == "constant":
        return torch.full_like(a, nu)
    if kind == "clipped":
        return (mu * a + nu).clamp_min(0.0)
    raise ValueError(f"margin must be 'adaptive', 'constant' or 'clipped', got {kind!r}")


# --------------------------------------------------------------------------------------------------
# Adaptive-margin contrastive loss (Eqs. 9-10)
# --------------------------------------------------------------------------------------------------


def _masked_logsumexp(z: Tensor, mask: Tensor) -> Tensor:
    return torch.logsumexp(z.masked_fill(~mask, _FILL), dim=-1)


def am_contrast_loss(feats: Tensor, nbh: Neighbourhood, m: Tensor, temperature: float = 0.3) -> Tensor:
    """The adaptive-margin contrastive loss ``L_AM^s`` of one stage (Eqs. 9-10)::

        emb_ij = exp((cos(f_i, f_j) - m_i) / tau)   j in N_i^+          (Eq. 9, margin on positives only)
        emb_ik = exp(cos(f_i, f_k) / tau)           k in N_i^-
        L_AM^s = 1/n^s sum_{i: a_i in (0, 1]} -log( sum_j emb_ij / (sum_j emb_ij + sum_k emb_ik) )   (Eq. 10)

    Cosine similarity of the raw features (norms floored at 1e-8, computed in at least float32); the sums
    run in log space (max-stabilised). The anchors are ``nbh.boundary`` (at least one inter-class
    neighbour; ``n^s`` their count over the whole batch). An anchor without a positive (``a = 1`` without
    self) counts in ``n^s`` with zero loss and zero gradient (A2). Non-anchors and excluded neighbours do not
    enter. Gradients reach ``feats`` (anchors and neighbours), never ``m``.

    Args:
        feats: ``(B, N_s, C)`` decoder features ``F^s`` at the stage's points.
        nbh: from :func:`neighbourhoods` on the same points.
        m: ``(B, N_s)`` margins (:func:`margins`); detached here.
        temperature: ``tau``, ``> 0``.

    Returns:
        A scalar tensor (float32 or float64); a zero attached to ``feats`` when the stage has no anchor.

    Raises:
        ValueError: ``feats`` or ``m`` not matching the neighbourhood's points, or ``temperature <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not isinstance(feats, Tensor) or feats.dim() != 3 or tuple(feats.shape[:2]) != nbh.batch_shape:
        got = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
        raise ValueError(f"feats must be (B, N_s, C) = {(*nbh.batch_shape, 'C')}, got {got}")
    if not isinstance(m, Tensor) or tuple(m.shape) != nbh.batch_shape:
        got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
        raise ValueError(f"m must be (B, N_s) = {nbh.batch_shape}, got {got}")
    if nbh.idx.shape[-1] == 0:
        return feats.sum() * 0.0
    f = feats if feats.dtype == torch.float64 else feats.float()
    f = F.normalize(nbh.to_search(f), dim=-1, eps=COS_EPS)                          # (B', N', C)
    cos = (f.unsqueeze(2) * gather_points(f, nbh.idx)).sum(-1)                      # (B', N', K')
    margin = nbh.to_search(m.detach().to(cos.dtype))
    z = (cos - margin.unsqueeze(-1) * nbh.intra) / temperature
    used = nbh.intra | nbh.inter
    per_point = _masked_logsumexp(z, used) - _masked_logsumexp(z, nbh.intra)       # -log(pos / all)
    anchors = nbh.boundary
    trained = anchors & nbh.intra.any(-1)
    per_point = torch.where(trained, per_point, torch.zeros_like(per_point))
    return per_point.sum() / anchors.sum().clamp_min(1).to(per_point.dtype)


@torch.no_grad()
def stage_stats(nbh: Neighbourhood, a: Tensor, m: Tensor) -> dict[str, Tensor]:
    """Diagnostics of one stage (A7), scalar tensors for ``train/`` logging.

    Args:
        nbh: the stage's :class:`Neighbourhood`; a, m: ``(B, N_s)`` ambiguities and margins.

    Returns:
        ``boundary_frac`` (share of the anchors-to-be, i.e. non-excluded points, with ``a in (0, 1]``),
        ``extreme_frac`` (share of those boundary points with ``a = 1``), ``ambiguity`` and ``margin`` (their
        means over the boundary points), ``neg_margin_frac`` (share of boundary points with ``m < 0``); 0 when
        the stage has no boundary point.
    """
    boundary = nbh.to_batch(nbh.boundary)
    n_b = boundary.sum()
    n_b1 = n_b.clamp_min(1).float()
    return {
        "boundary_frac": n_b.float() / nbh.anchor.sum().clamp_min(1).float(),
        "extreme_frac": nbh.to_batch(nbh.extreme).sum().float() / n_b1,
        "ambiguity": (a.float() * boundary).sum() / n_b1,
        "margin": (m.float() * boundary).sum() / n_b1,
        "neg_margin_frac": ((m < 0) & boundary).sum().float() / n_b1,
    }


def stage_loss(xyz: Tensor, feats: Tensor, labels: Tensor,
               cfg: AMContrast3DConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """``L_AM^s`` of one stage with a config's hyperparameters: :func:`neighbourhoods` (``k``,
    ``include_self``, ``ignore_index``, ``ignore_mode``, ``cross_sample_knn``), :func:`ambiguity` (``beta``),
    :func:`margins` (``mu``, ``nu``, ``margin``) and :func:`am_contrast_loss` (``temperature``).

    Args:
        xyz: ``(B, N_s, 3)`` stage positions (metres); feats: ``(B, N_s, C)`` decoder features;
        labels: ``(B, N_s)`` stage labels (:func:`stage_labels`); cfg: the method's config.

    Returns:
        ``(loss, stats)``: the scalar ``L_AM^s`` and :func:`stage_stats`.

    Raises:
        TypeError, ValueError: as the functions it calls.
    """
    nbh = neighbourhoods(xyz, labels, cfg.k, cfg.include_self, cfg.ignore_index, cfg.ignore_mode,
                         cfg.cross_sample_knn)
    a = ambiguity(nbh, cfg.beta)
    m = margins(a, cfg.mu, cfg.nu, cfg.margin)
    return am_contrast_loss(feats, nbh, m, cfg.temperature), stage_stats(nbh, a, m)


def contrast_terms(xyz: Tensor, labels: Tensor, stages: Sequence[tuple[Tensor, Tensor]], num_classes: int,
                   cfg: AMContrast3DConfig) -> tuple[list[Tensor], dict[str, Tensor]]:
    """The stage losses ``L_AM^s`` for ``s`` in ``cfg.stages`` (Eqs. 1-10), ready for :func:`total_loss`.

    Stage labels by :func:`stage_labels` (mined from the input labels), then :func:`stage_loss` per stage.

    Args:
        xyz: ``(B, N, 3)`` input positions (metres).
        labels: ``(B, N)`` input labels in ``[0, num_classes)`` or ``cfg.ignore_index``.
        stages: per decoder stage, ``(xyz (B, N_s, 3), feats (B, N_s, C_s))``, stage 0 the input resolution.
        num_classes: ``C``.
        cfg: the method's config.

    Returns:
        ``(losses, logs)``: one scalar per configured stage, in ``cfg.stages`` order, and the logs
        ``am_s<s>`` (the stage loss, detached) and ``<stat>_s<s>`` (:func:`stage_stats`).

    Raises:
        ValueError: a configured stage the backbone does not provide (the message names ``method.stages``),
            and as the functions it calls.
    """
    if max(cfg.stages) >= len(stages):
        raise ValueError(f"method.stages: {cfg.stages} asks for stage {max(cfg.stages)} but the backbone gives "
                         f"{len(stages)} decoder stages (0..{len(stages) - 1})")
    chosen = [stages[s] for s in cfg.stages]
    ys = stage_labels(xyz, labels, [p for p, _ in chosen], num_classes, cfg.ignore_index, cfg.cross_sample_knn)
    losses, logs = [], {}
    for s, (p, f), y in zip(cfg.stages, chosen, ys):
        loss, stats = stage_loss(p, f, y, cfg)
        losses.append(loss)
        logs[f"am_s{s}"] = loss.detach()
        logs.update({f"{key}_s{s}": value for key, value in stats.items()})
    return losses, logs


# --------------------------------------------------------------------------------------------------
# Cross-entropy (Eq. 12, A5) and the total (Eq. 11)
# --------------------------------------------------------------------------------------------------


def segmentation_ce(logits: Tensor, labels: Tensor, ignore_index: int = -1, normalization: str = "mean") -> Tensor:
    """Per-point cross-entropy ``L_CE`` (Eq. 12, A5): ``F.cross_entropy`` averaged over the points whose label is
    not ``ignore_index``, no label smoothing; ``normalization="paper"`` also divides by ``C`` (Eq. 12's
    ``1 / (n C)`` as printed), ``"mean"`` does not (the official code).

    Args:
        logits: ``(B, N, C)`` class logits at the input resolution.
        labels: ``(B, N)`` integer labels in ``[0, C)`` or ``ignore_index``.
        ignore_index: label excluded from the mean.
        normalization: ``mean`` or ``paper``.

    Returns:
        A scalar; a zero attached to ``logits`` when every point is ignored.

    Raises:
        ValueError: bad shapes, a label outside ``[0, C)`` that is not ``ignore_index``, or an unknown
            ``normalization``.
        TypeError: non-integer labels.
    """
    if normalization not in ("mean", "paper"):
        raise ValueError(f"normalization must be 'mean' or 'paper', got {normalization!r}")
    if not isinstance(logits, Tensor) or logits.dim() != 3:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be (B, N, C), got {got}")
    _check_labels("labels", labels, tuple(logits.shape[:2]))
    c = logits.shape[-1]
    labels = labels.long()
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= c))
    if bad.any():
        raise ValueError(f"labels: {int(labels[bad][0])} is outside [0, {c}) and is not ignore_index={ignore_index}")
    if not bool(valid.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.reshape(-1, c), labels.reshape(-1), ignore_index=ignore_index)
    return ce / c if normalization == "paper" else ce


def total_loss(ce: Tensor, stage_losses: Sequence[Tensor], lambda_ce: float = 0.1, contrast: bool = True) -> Tensor:
    """The overall objective of Eq. 11: ``lambda CE + (1 - lambda) sum_s L_AM^s`` (stage losses summed, not
    averaged); with ``contrast=False`` the plain ``CE`` (the PointNeXt baseline; ``stage_losses`` unused).

    Args:
        ce: scalar ``L_CE`` (:func:`segmentation_ce`).
        stage_losses: scalar ``L_AM^s`` per stage (:func:`contrast_terms`).
        lambda_ce: ``lambda`` in ``[0, 1]`` (paper 0.1).
        contrast: include the contrastive term.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: ``lambda_ce`` outside ``[0, 1]``, or ``contrast`` with no stage loss.
    """
    if not 0.0 <= lambda_ce <= 1.0:
        raise ValueError(f"lambda_ce must be in [0, 1], got {lambda_ce}")
    if not contrast:
        return ce
    if len(stage_losses) == 0:
        raise ValueError("total_loss: contrast is on but no stage loss was given (method.stages is empty?)")
    return lambda_ce * ce + (1.0 - lambda_ce) * torch.stack([loss.to(ce.dtype) for loss in stage_losses]).sum()


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


@register_method("amcontrast3d")
class AMContrast3D(Method):
    """AMContrast3D on a segmentation backbone with per-stage outputs (PointNeXt, ``method.backbone``).

    ``forward`` runs ``backbone.forward_seg`` on ``batch["points"]`` ``(B, N, 3)`` (metres) and the per-point
    inputs of ``method.backbone.inputs`` (``color``, ``height``), and returns ``loss`` (Eq. 11, or the plain CE
    with ``contrast: false``), ``ce``, ``acc`` (accuracy over labelled points) and, with the contrast, each
    stage's ``am_s<s>`` and its diagnostics (:func:`stage_stats`: ``boundary_frac_s<s>``, ``ambiguity_s<s>``,
    ``margin_s<s>``, ...). Labels are ``batch["seg"]`` ``(B, N)``, ``ignore_index`` (-1: unannotated or
    padding) contributing nothing. ``predict`` returns the logits ``(B, N, K)`` (inference is the plain
    backbone: the losses act at training time only).

    Data parallelism: every parameter gets a gradient every step and BatchNorm buffers are DDP's to
    broadcast (``ddp_options``: the defaults); ambiguities use each worker's own batch (``cross_sample_knn``
    searches within it).
    """

    task = Task.SEGMENTATION
    Config = AMContrast3DConfig
    # Spec A9 (S3DIS, paper values where given): AdamW, lr 0.01 cosine to 1e-5, weight decay 1e-4, gradient-norm
    # clip 10 (official code); 100 epochs (the paper) with each scene repeated data.loop times per epoch, on
    # S3DIS (the paper's first dataset; --dataset scannet for the other).
    recipe = {
        "optim": {"name": "adamw", "lr": {"start": 0.01, "end": 1e-5, "shape": "cosine"}, "weight_decay": 1e-4},
        "train": {"grad_clip": 10.0, "epochs": 100},
        "data": {"name": "s3dis"},
    }
    # Spec A9 (ScanNet): the official code's lr 0.001 multiplied by 0.1 at epochs 70 and 90 of 100 (kept as
    # fractions of the run), the paper's ScanNet temperature 0.5 and nu 0.6.
    recipes = {"scannet": {
        "optim": {"lr": {"start": 0.001, "shape": "multistep", "milestones": [0.7, 0.9], "gamma": 0.1,
                         "unit": "fraction"}},
        "method": {"temperature": 0.5, "nu": 0.6},
        "data": {"name": "scannet"},
    }}

    def __init__(self, cfg: AMContrast3DConfig, num_classes: int, total_epochs: int = 1):
        super().__init__(cfg, num_classes, total_epochs)
        from pointtune.backbones import backbone_factory, build_backbone

        if num_classes < 2:
            raise ValueError(f"AMContrast3D segments points into classes: the dataset has {num_classes}")
        if not hasattr(backbone_factory(cfg.backbone.name), "forward_seg"):
            raise ValueError(f"method.backbone.name: {cfg.backbone.name!r} has no forward_seg (per-stage points "
                             f"and decoder features); use pointnext")
        self.backbone = build_backbone(cfg.backbone.name, **{**cfg.backbone.kwargs(), "num_classes": num_classes})
        stages = getattr(self.backbone, "num_stages", None)
        if cfg.contrast and stages is not None and max(cfg.stages) >= stages:
            raise ValueError(f"method.stages: {cfg.stages} asks for stage {max(cfg.stages)}, the backbone has "
                             f"{stages} decoder stages (0..{stages - 1})")

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        """The loss dict of one mini-batch (see the class docstring).

        Raises:
            KeyError: ``seg`` or a per-point input of ``method.backbone.inputs`` is missing from the batch.
        """
        cfg: AMContrast3DConfig = self.cfg
        points, labels = batch["points"], batch["seg"]
        out = self.backbone.forward_seg(points, point_inputs(batch, cfg.backbone))
        ce = segmentation_ce(out.logits.float(), labels, cfg.ignore_index, cfg.ce_normalization)
        with torch.no_grad():
            valid = labels != cfg.ignore_index
            hits = (out.logits.argmax(dim=-1) == labels) & valid
            logs = {"ce": ce.detach(), "acc": hits.sum() / valid.sum().clamp(min=1)}
        if not cfg.contrast:
            return {"loss": ce, **logs}
        stages = [(p.float(), f.float()) for p, f in out.stages]
        losses, stats = contrast_terms(points.float(), labels, stages, self.num_classes, cfg)
        return {"loss": total_loss(ce, losses, cfg.lambda_ce, cfg.contrast), **logs, **stats}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-point logits ``(B, N, K)`` of ``batch["points"]`` ``(B, N, 3)``; the caller sets eval mode."""
        return self.backbone.forward_seg(batch["points"], point_inputs(batch, self.cfg.backbone)).logits

    def encoder(self) -> torch.nn.Module:
        """The PointNeXt encoder-decoder (its ``forward_features``: decoder features at every input point)."""
        return self.backbone
