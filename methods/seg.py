"""``seg``: semantic segmentation of scenes by fine-tuning any encoder that gives per-point features.

The transfer setting of DCGLR's Table 3 (spec ``shared/specs/dcglr.md`` 4.6: a DGCNN pretrained on ShapeNet,
fine-tuned for S3DIS segmentation, against the same network from random initialisation), for any pointtune
run: ``pointtune train seg --from RUN`` sets ``method.pretrained`` and the encoder of RUN's method (ConClu's
backbone, DCGLR's teacher, SCL's ``E2``, AMContrast3D's PointNeXt, a fine-tuned run's encoder...) is built from
``method.encoder_source`` and takes RUN's weights on a fresh start, as in ``finetune``
(:class:`~pointtune.methods.finetune.PretrainedEncoderMethod`: a ``seg`` checkpoint rebuilds without RUN).
Without ``pretrained`` the encoder is the registered backbone ``method.backbone`` (DGCNN by default) from random
initialisation: the baseline.

Model, per crop of ``N`` points (a scene item of the ``scene_seg`` pipeline, coordinates in metres)::

    xyz (B, N, 3) --normalize_crops--> encoder.forward_features --(interpolated to the N points if M != N)-->
        F (B, N, C) ; [F, max_N F (the crop's global feature, broadcast), head_inputs (color, height)]
        --SegmentationHead: per-point MLP, BN + LeakyReLU + dropout--> logits (B, N, K)

* Per-point features: :func:`pointtune.method.encoder_point_features`, the same computation as
  :meth:`pointtune.method.Method.embed_points` (which is it under ``no_grad``): the encoder's
  ``forward_features(xyz, inputs).point_features`` at ``point_xyz``, interpolated to every input point by
  :func:`~pointtune.method.interpolate_point_features` when ``M != N`` (3D-ViT, PointNet++).
* Head (:class:`SegmentationHead`): DGCNN's semantic-segmentation head (Wang et al. 2019, its ``DGCNN_semseg``:
  per-point features concatenated with their max over the crop, 1x1 convolutions 512-256 with BN and
  LeakyReLU(0.2), dropout 0.5 before the last layer). DGCNN's segmentation network has its own 3-EdgeConv
  encoder; here the encoder is whichever was pretrained (the classification DGCNN's ``emb_dims`` per-point
  embedding for a DGCNN run), since that is what transfers.
* Loss: :func:`pointtune.methods.amcontrast3d.segmentation_ce`, the cross-entropy averaged over labelled points;
  ``seg = -1`` (unannotated and padding points) contributes nothing. The crop's global feature is the max over
  its real points only (``mask``), so padding changes no real point's logits through it either.
* ``freeze_encoder``: the encoder's weights take no gradient and it stays in eval mode (frozen BatchNorm
  statistics and dropout); only the head trains.

**Input features** (the decision the transfer needs). The pretrained encoders of pointtune were trained on
single shapes normalised to the unit sphere, xyz only (ConClu, DCGLR) or with normals, whereas scene crops are
a few metres across (centred on their mean in x, y, floor at z = 0: ``data.scene_augment.center``) and carry
colour and height. So:

* The encoder sees the coordinates only (``method.backbone.inputs: []``, the default), as in pretraining and
  in DCGLR's Table 3 ("XYZ only"); another list feeds it those per-point inputs and must match what a
  pretrained encoder was built for (its ``in_features``, checked).
* ``normalize_crops: true`` (default) rescales each crop into the unit sphere for the encoder (centred on the
  mean of its real points, divided by the largest distance of one of them from it), the normalisation the
  pretrained encoder saw. A 4096-point crop at the default voxel sizes spans about 2 m in radius (24k-point
  GPU crops more); DGCNN's EdgeConv features ``[x_j - x_i, x_i]`` and a ViT's patch embedding are not scale
  invariant, so metres would put the encoder far from its training distribution. The random-init baseline gets
  the same input, so the two differ only in their initial weights.
* The head gets ``head_inputs`` (default ``color`` and ``height``) concatenated to the encoder's features:
  colour (normalised by the data pipeline) is what the encoder was never trained on, and height (metres above
  the crop's lowest point) restores the absolute vertical position and scale the normalisation removes, both
  without changing the encoder's input distribution. ``head_inputs: []`` is DCGLR's Table 3 input exactly (XYZ
  only). A DGCNN trained from scratch can also take colour and height itself
  (``method.backbone.inputs=[color,height]``: 7 channels, close to DGCNN's own 9-dimensional S3DIS input of
  xyz, RGB and room-normalised xyz).

Recipe: DGCNN's semantic-segmentation recipe (its ``main_semseg.py``): SGD lr 0.1 with momentum 0.9, cosine to
1e-3, weight decay 1e-4, 100 epochs, on S3DIS (``--dataset scannet`` for the other); crops of ``data.num_points``
(4096 by default for scenes: DGCNN's points per block). Judged by the ``scene_seg`` protocol (``val/mIoU``).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from pointtune.data.scenes import IGNORE_INDEX
from pointtune.distributed import average_batchnorm_stats, world_size
from pointtune.method import POINT_INPUTS, BackboneConfig, Task, encoder_point_features, point_inputs, register_method
from pointtune.methods.amcontrast3d import segmentation_ce
from pointtune.methods.finetune import PretrainedConfig, PretrainedEncoderMethod

__all__ = ["SegConfig", "SegFinetune", "SegmentationHead", "normalize_crops"]

PointInput = Literal["normals", "color", "height"]


class SegConfig(PretrainedConfig):
    """Hyperparameters of ``seg`` (see the module docstring for the model and the input-feature choices).

    ``pretrained``, ``encoder_source``: see :class:`~pointtune.methods.finetune.PretrainedConfig` (when
    ``pretrained`` is set the encoder's architecture is ``encoder_source``'s and ``backbone``'s name and
    arguments are ignored; ``backbone.inputs`` still names the encoder's per-point inputs)."""

    name: Literal["seg"] = Field("seg", description="method name")
    backbone: BackboneConfig = Field(
        BackboneConfig(name="dgcnn"),
        description="encoder built from random initialisation when pretrained is null (DCGLR Table 3: dgcnn); "
                    "its inputs feed the encoder in both cases")
    freeze_encoder: bool = Field(
        False, description="train the head only: the encoder takes no gradient and keeps its BatchNorm statistics")
    normalize_crops: bool = Field(
        True, description="rescale each crop into the unit sphere for the encoder (centre on its mean, farthest "
                          "point at 1), as its pretraining shapes")
    head_inputs: list[PointInput] = Field(
        ["color", "height"], description="per-point batch features concatenated to the encoder's for the head, "
                                         "in order ([]: xyz only, DCGLR Table 3)")
    head_global: bool = Field(
        True, description="concatenate the crop's max-pooled encoder feature to every point's (DGCNN's head)")
    head_hidden: list[int] = Field(
        [512, 256], description="widths of the head's hidden 1x1 layers, each with BatchNorm and LeakyReLU(0.2) "
                                "(DGCNN: 512, 256)")
    head_dropout: float = Field(
        0.5, ge=0, lt=1, description="dropout before the head's last layer (DGCNN: 0.5)")

    @field_validator("head_hidden")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        if any(width < 1 for width in value):
            raise ValueError(f"widths must be >= 1, got {value}")
        return value


def normalize_crops(points: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Each crop moved into the unit sphere: centred on the mean of its real points and divided by the largest
    distance of a real point from that mean (the zero-mean, unit-sphere normalisation of shape datasets, e.g.
    PointNet's ModelNet40 and ShapeNet, per crop).

    Args:
        points: ``(B, N, 3)`` coordinates (metres for scene crops).
        mask: ``(B, N)`` bool, True for real points (padding points are transformed like the rest but do not
            set the centre or the radius); ``None``: every point is real. A row without a real point uses all.
        eps: smallest radius (a crop of one point, or of duplicates, is only centred).

    Returns:
        ``(B, N, 3)`` unitless, the dtype of ``points``; the real points lie within distance 1 of the origin.

    Raises:
        ValueError: ``points`` is not ``(B, N, 3)`` or ``mask`` is not ``(B, N)``.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"normalize_crops: points must be (B, N, 3), got {tuple(points.shape)}")
    if mask is None:
        mask = torch.ones(points.shape[:2], dtype=torch.bool, device=points.device)
    if tuple(mask.shape) != tuple(points.shape[:2]):
        raise ValueError(f"normalize_crops: mask must be {tuple(points.shape[:2])}, got {tuple(mask.shape)}")
    mask = mask.bool()
    mask = mask | ~mask.any(dim=1, keepdim=True)
    weights = mask.to(points.dtype).unsqueeze(-1)  # (B, N, 1)
    centre = (points * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
    centred = points - centre
    radius = (centred.norm(dim=-1) * weights.squeeze(-1)).amax(dim=1).clamp(min=eps)  # (B,)
    return centred / radius[:, None, None]


class SegmentationHead(nn.Module):
    """Per-point classifier ``(B, N, in_dim) -> (B, N, num_classes)`` logits in the style of DGCNN's
    semantic-segmentation head (Wang et al. 2019, ``DGCNN_semseg``'s ``conv7``-``conv9``).

    Each hidden layer is a 1x1 ``Conv1d`` (no bias) + ``BatchNorm1d`` + ``LeakyReLU(0.2)``; ``Dropout(dropout)``
    follows the last hidden layer (DGCNN: only there), then a 1x1 ``Conv1d`` to the logits (with a bias:
    a class prior; DGCNN's has none). Points are independent except through BatchNorm's batch statistics in
    training mode, which need more than one point per channel.

    Args:
        in_dim: width of each point's input feature.
        num_classes: number of logits ``K``.
        hidden: hidden widths (DGCNN: 512, 256); empty: a linear classifier (no dropout).
        dropout: drop probability in ``[0, 1)``.

    Raises:
        ValueError: non-positive sizes or a dropout outside ``[0, 1)``.
    """

    def __init__(self, in_dim: int, num_classes: int, hidden: tuple[int, ...] | list[int] = (512, 256),
                 dropout: float = 0.5):
        super().__init__()
        if in_dim < 1 or num_classes < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"SegmentationHead: sizes must be positive, got in_dim={in_dim}, "
                             f"num_classes={num_classes}, hidden={tuple(hidden)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"SegmentationHead: dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Conv1d(width, h, 1, bias=False), nn.BatchNorm1d(h), nn.LeakyReLU(0.2)]
            width = h
        if hidden and dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Conv1d(width, num_classes, 1))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.num_classes = num_classes

    def forward(self, features: Tensor) -> Tensor:
        """``(B, N, in_dim)`` per-point features to ``(B, N, num_classes)`` logits.

        Raises:
            ValueError: ``features`` is not ``(B, N, in_dim)``.
        """
        if features.dim() != 3 or features.shape[-1] != self.in_dim:
            raise ValueError(f"SegmentationHead: expected (B, N, {self.in_dim}) features, got {tuple(features.shape)}")
        return self.net(features.transpose(1, 2)).transpose(1, 2)


@register_method("seg")
class SegFinetune(PretrainedEncoderMethod):
    """An encoder (pretrained or random) with a DGCNN-style segmentation head, trained with per-point
    cross-entropy on scene crops (module docstring).

    ``forward`` returns ``loss`` (the cross-entropy over labelled points, differentiable), ``ce`` (the same,
    detached) and ``acc`` (accuracy over labelled points, detached); ``predict`` the logits ``(B, N, K)``.
    Batches: ``points`` ``(B, N, 3)`` metres, ``seg`` ``(B, N)`` with -1 ignored, ``mask`` ``(B, N)`` (optional;
    True for real points), and the per-point inputs ``method.backbone.inputs`` / ``method.head_inputs`` name.

    Data parallelism (as :class:`~pointtune.methods.finetune.Finetune`): ``find_unused_parameters`` only for an
    encoder whose per-point features leave some of its parameters unused (:meth:`ddp_options`; a frozen
    encoder's parameters require no gradient); ``forward_sync_buffers=False`` and :meth:`after_step` averages
    the BatchNorm statistics of the layers in training mode over the workers, so every worker evaluates the
    same model.

    Args:
        cfg: the validated :class:`SegConfig`.
        num_classes: segmentation classes ``K`` (>= 2).
        total_epochs: length of the run (unused: no schedule of its own).

    The encoder is built by :meth:`~pointtune.methods.finetune.PretrainedEncoderMethod.build_encoder`
    (``method.encoder_source``'s architecture when ``method.pretrained`` is set) and takes the pretrained weights
    in :meth:`~pointtune.methods.finetune.PretrainedEncoderMethod.warm_start`, on a fresh start only.

    Raises:
        ValueError: ``num_classes < 2``, ``method.backbone.inputs`` whose width is not what the (pretrained)
            encoder was built for, or an encoder without per-point features (one line naming the key).
        ConfigError, NotImplementedError: from ``build_encoder`` (``method.pretrained`` without
            ``method.encoder_source``, a bad ``encoder_source``, a pretraining method without an encoder).
    """

    task = Task.SEGMENTATION
    Config = SegConfig
    recipe = {
        "optim": {"name": "sgd", "lr": {"start": 0.1, "end": 1e-3, "shape": "cosine"}, "momentum": 0.9,
                  "weight_decay": 1e-4},
        "train": {"epochs": 100},
        "data": {"name": "s3dis"},
    }

    def __init__(self, cfg: SegConfig, num_classes: int, total_epochs: int = 1):
        super().__init__(cfg, num_classes, total_epochs)
        if num_classes < 2:
            raise ValueError(f"seg segments points into classes: the dataset has {num_classes}")
        self.build_encoder(cfg)
        if not hasattr(self.backbone, "forward_features") or not hasattr(self.backbone, "point_dim"):
            raise ValueError(f"method.pretrained: a {type(self.backbone).__name__} encoder has no forward_features "
                             "and point_dim (no per-point features to segment with)")
        if cfg.freeze_encoder:
            self.backbone.requires_grad_(False)
        point_dim = int(self.backbone.point_dim)
        in_dim = point_dim * (2 if cfg.head_global else 1) + sum(POINT_INPUTS[name] for name in cfg.head_inputs)
        self.seg_head = SegmentationHead(in_dim, num_classes, cfg.head_hidden, cfg.head_dropout)

    def train(self, mode: bool = True) -> "SegFinetune":
        """``nn.Module.train``, except that a frozen encoder (``freeze_encoder``) stays in eval mode."""
        super().train(mode)
        if self.cfg.freeze_encoder:
            self.backbone.eval()
        return self

    def _encoder_xyz(self, batch: dict[str, Tensor]) -> Tensor:
        """The coordinates the encoder sees: ``batch["points"]`` through :func:`normalize_crops` (with the
        batch's ``mask``) when ``normalize_crops``, else as they are."""
        points = batch["points"]
        return normalize_crops(points, batch.get("mask")) if self.cfg.normalize_crops else points

    def _point_features(self, batch: dict[str, Tensor]) -> Tensor:
        """Encoder features ``(B, N, C)`` at every input point (no graph through a frozen encoder)."""
        frozen = contextlib.nullcontext() if not self.cfg.freeze_encoder else torch.no_grad()
        with frozen:
            return encoder_point_features(self.backbone, self._encoder_xyz(batch),
                                          point_inputs(batch, self.cfg.backbone))

    def _logits(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits ``(B, N, K)``: the head on ``[encoder features, their max over the real points, head_inputs]``.

        Raises:
            KeyError: a per-point input of ``method.backbone.inputs`` or ``method.head_inputs`` is missing.
        """
        cfg: SegConfig = self.cfg
        feats = self._point_features(batch)
        parts = [feats]
        if cfg.head_global:
            mask = batch.get("mask")
            if mask is None:
                pooled = feats.amax(dim=1, keepdim=True)
            else:
                mask = mask.bool()
                mask = (mask | ~mask.any(dim=1, keepdim=True)).unsqueeze(-1)
                pooled = feats.masked_fill(~mask, torch.finfo(feats.dtype).min).amax(dim=1, keepdim=True)
            parts.append(pooled.expand_as(feats))
        missing = [name for name in cfg.head_inputs if name not in batch]
        if missing:
            raise KeyError(f"method.head_inputs: the batch has no {missing[0]!r} (the scene pipeline adds height "
                           f"with data.scene_augment.height=true; normals only where the dataset has them)")
        parts += [batch[name].to(feats.dtype) for name in cfg.head_inputs]
        return self.seg_head(torch.cat(parts, dim=-1))

    def forward(self, batch: dict[str, Tensor], epoch: int, progress: float) -> dict[str, Tensor]:
        """Per-point cross-entropy of the logits ``(B, N, K)`` against ``batch["seg"]`` ``(B, N)``, points
        labelled -1 left out (:func:`~pointtune.methods.amcontrast3d.segmentation_ce`).

        Returns:
            ``loss`` (differentiable; 0 attached to the graph when no point is labelled), ``ce`` (detached) and
            ``acc`` (fraction of labelled points whose argmax is their label, detached); scalars.

        Raises:
            KeyError: ``seg`` or a per-point input of the config is missing from the batch.
            ValueError: a label outside ``[0, K)`` that is not -1.
        """
        labels = batch["seg"]
        logits = self._logits(batch)
        ce = segmentation_ce(logits.float(), labels, IGNORE_INDEX)
        with torch.no_grad():
            valid = labels != IGNORE_INDEX
            hits = (logits.argmax(dim=-1) == labels) & valid
            acc = hits.sum() / valid.sum().clamp(min=1)
        return {"loss": ce, "ce": ce.detach(), "acc": acc}

    @torch.no_grad()
    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-point logits ``(B, N, K)`` of ``batch["points"]`` ``(B, N, 3)``; the caller sets eval mode."""
        return self._logits(batch)

    def after_step(self, step: int, total_steps: int) -> None:
        """Average the BatchNorm running statistics of the layers in training mode over the data-parallel
        workers (class docstring); a no-op in a single process."""
        average_batchnorm_stats(self)

    def ddp_options(self) -> dict[str, bool]:
        """``forward_sync_buffers=False`` (class docstring) and ``find_unused_parameters``: True only when the
        encoder's per-point path leaves some of its trainable parameters without a gradient (PointNet++'s global
        level, the classification head of a PointNeXt; :meth:`unused_encoder_parameters`), or when that could
        not be probed; DGCNN, PointNet and the 3D-ViT use all of theirs. A single process (no DDP) is not probed."""
        unused = self.unused_encoder_parameters() if world_size() > 1 else []
        return {"find_unused_parameters": unused is None or bool(unused), "forward_sync_buffers": False}

    def unused_encoder_parameters(self, num_points: int = 512) -> list[str] | None:
        """Names of the encoder's trainable parameters that its per-point features do not depend on (they get no
        gradient from the head).

        Probed by one forward and backward pass of a seeded random batch of 2 clouds of ``num_points`` points in
        ``[-1, 1]^3`` (and random per-point inputs of ``method.backbone.inputs``' width) through
        :func:`~pointtune.method.encoder_point_features`, in eval mode (no BatchNorm statistics change), on the
        encoder's device, with the global random streams restored afterwards (the run's draws do not change).

        Returns:
            The parameter names (``[]``: all used, or a frozen encoder); ``None`` when the probe fails (an
            encoder that needs other clouds, e.g. more points than ``num_points``), which :meth:`ddp_options`
            treats as "maybe some".
        """
        params = {name: p for name, p in self.backbone.named_parameters() if p.requires_grad}
        if not params:
            return []
        device = next(iter(params.values())).device
        gen = torch.Generator().manual_seed(0)
        xyz = (torch.rand(2, num_points, 3, generator=gen) * 2 - 1).to(device)
        width = sum(POINT_INPUTS[name] for name in self.cfg.backbone.inputs)
        inputs = torch.randn(2, num_points, width, generator=gen).to(device) if width else None
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
                feats = encoder_point_features(self.backbone, xyz, inputs)
                grads = torch.autograd.grad(feats.float().sum(), list(params.values()), allow_unused=True)
        except (RuntimeError, ValueError):
            return None
        finally:
            self.backbone.train(was_training)
        return [name for name, grad in zip(params, grads) if grad is None]

    @torch.no_grad()
    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        """The encoder's global features ``(B, D)`` of the crops, on the coordinates it is trained on
        (:func:`normalize_crops` when ``normalize_crops``)."""
        return self.backbone(self._encoder_xyz(batch), point_inputs(batch, self.cfg.backbone))

    @torch.no_grad()
    def embed_points(self, batch: dict[str, Tensor]) -> Tensor:
        """The encoder's per-point features ``(B, N, C)`` at every input point, on the coordinates it is
        trained on (what the head reads, before the global feature and ``head_inputs`` are added)."""
        return encoder_point_features(self.backbone, self._encoder_xyz(batch), point_inputs(batch, self.cfg.backbone))

    def encoder(self) -> nn.Module:
        """The (fine-tuned) encoder: a ``seg`` run is itself a ``--from`` for ``finetune`` or another ``seg``."""
        return self.backbone
