"""Supervised fine-tuning of a pretrained encoder: the downstream protocol of every self-supervised method.

The encoder comes from a pointtune checkpoint of any method (``method.pretrained``, or
``pointtune train finetune --from``: a checkpoint directory, a run directory, local or multi-worker, or a
sweep directory). A classification head (DGCNN-style MLP) on the encoder's global feature is trained with
cross-entropy (Eq. 1 of CEDR, optionally label-smoothed). Without ``pretrained`` the same model starts from
random initialisation: the "from scratch" baseline of the transfer tables (ConClu Table 2, OcCo, Point-MAE).

A fine-tuned checkpoint stands alone: the constructor builds the architecture only, the encoder's from
``method.encoder_source`` (the pretraining method's config and class count, which
:func:`pointtune.train.sources.resolve_sources` fills from the pretrained checkpoint when a run starts, after
copying that checkpoint into ``<run dir>/sources/pretrained``); the pretrained weights are applied by
:meth:`PretrainedEncoderMethod.warm_start` on a fresh start only. :class:`PretrainedConfig` and
:class:`PretrainedEncoderMethod` are shared with ``seg`` (:mod:`pointtune.methods.seg`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator, model_validator

from pointtune.distributed import average_batchnorm_stats
from pointtune.method import Method, MethodConfig, POINT_INPUTS, Task, get_method, point_inputs, register_method


class PretrainedConfig(MethodConfig):
    """Base of the configs of methods that fine-tune an encoder pretrained by another run (``finetune``,
    ``seg``): ``pretrained`` names that run and ``encoder_source`` holds its architecture.

    When ``pretrained`` is set the encoder's architecture is ``encoder_source``'s and ``backbone``'s name and
    arguments are ignored; ``backbone.inputs`` still names the encoder's per-point inputs. ``encoder_source``
    is not written by hand: a run fills it from the pretrained checkpoint when it starts
    (:func:`pointtune.train.sources.resolve_sources`), so that its config and checkpoints rebuild the model
    without that checkpoint."""

    pretrained: str | None = Field(
        None, description="checkpoint, run or sweep directory of the pretrained encoder (null: random "
                          "initialisation); a run copies it into <run dir>/sources/pretrained and points here")
    encoder_source: dict[str, Any] | None = Field(
        None, description="architecture of the pretrained encoder, {method: <its run's method config>, "
                          "num_classes: n}: filled from method.pretrained's checkpoint when a run starts")

    @field_validator("encoder_source")
    @classmethod
    def _source_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        method, classes = value.get("method"), value.get("num_classes")
        if (set(value) != {"method", "num_classes"} or not isinstance(method, dict)
                or not isinstance(method.get("name"), str) or isinstance(classes, bool)
                or not isinstance(classes, int) or classes < 0):
            raise ValueError("expected {method: {name: ..., ...}, num_classes: n >= 0}, as a run fills it from "
                             "method.pretrained's checkpoint")
        return value

    @model_validator(mode="after")
    def _source_needs_pretrained(self) -> "PretrainedConfig":
        if self.encoder_source is not None and not self.pretrained:
            raise ValueError("encoder_source is the architecture of method.pretrained's encoder: set pretrained "
                             "too, or set both null for random initialisation")
        return self


def source_encoder(source: dict[str, Any]) -> tuple[torch.nn.Module, str]:
    """The encoder of the method that ``encoder_source`` describes, from random initialisation (its weights are
    applied by :meth:`PretrainedEncoderMethod.warm_start`), and that method's name.

    The method is built from its config with ``source["num_classes"]`` classes and a 1-epoch run (the length
    of a run does not change an architecture); nothing is read from disk.

    Raises:
        ConfigError: one line starting ``method.encoder_source:``: an unknown method or a config it rejects.
        NotImplementedError: that method has no transferable encoder.
    """
    from pointtune.errors import ConfigError

    name = source["method"]["name"]
    try:
        method_cls = get_method(name)
    except KeyError as err:
        raise ConfigError(f"method.encoder_source: {err.args[0]}") from None
    try:
        cfg = method_cls.Config.model_validate(source["method"])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"method.encoder_source: the {name} config is not valid here ({where}: "
                          f"{first['msg']})") from None
    return method_cls(cfg, source["num_classes"], 1).encoder(), name


class PretrainedEncoderMethod(Method):
    """Base of the methods that fine-tune an encoder (``self.backbone``) pretrained by another run
    (``finetune``, ``seg``; config: a :class:`PretrainedConfig`).

    :meth:`build_encoder` builds the encoder's architecture: ``method.encoder_source``'s when
    ``method.pretrained`` is set, else the registered backbone ``method.backbone`` (random initialisation).
    :meth:`weight_sources` names ``method.pretrained``; :meth:`warm_start` loads its encoder's weights.

    Attributes (after :meth:`build_encoder`):
        backbone: the encoder.
        source_method: the pretraining method's name, or ``None`` without ``pretrained``.
    """

    from_key = "method.pretrained"
    sources = {"method.pretrained": "method.encoder_source"}

    def build_encoder(self, cfg: PretrainedConfig) -> None:
        """Set :attr:`backbone` and :attr:`source_method` from ``cfg`` (architecture only, random weights) and
        check that ``cfg.backbone.inputs`` has the width the encoder takes.

        Raises:
            ConfigError: ``pretrained`` without ``encoder_source`` (a config no run has resolved), or a bad
                ``encoder_source`` (:func:`source_encoder`).
            ValueError: ``method.backbone.inputs`` of another width than the encoder's ``in_features``.
            NotImplementedError: the pretraining method has no transferable encoder.
        """
        from pointtune.backbones import build_backbone

        if cfg.pretrained:
            if cfg.encoder_source is None:
                from pointtune.errors import ConfigError

                raise ConfigError("method.encoder_source: the architecture of method.pretrained is not set; a run "
                                  "fills it from the checkpoint when it starts (pointtune.train.sources."
                                  "resolve_sources)")
            self.backbone, self.source_method = source_encoder(cfg.encoder_source)
        else:
            self.backbone, self.source_method = build_backbone(cfg.backbone.name, **cfg.backbone.kwargs()), None
        widths = sum(POINT_INPUTS[name] for name in cfg.backbone.inputs)
        built = getattr(self.backbone, "in_features", widths)
        if built != widths:
            where = f"the pretrained {self.source_method} encoder" if cfg.pretrained else "the encoder"
            raise ValueError(f"method.backbone.inputs: {where} takes {built} per-point input channels beside xyz, "
                             f"{cfg.backbone.inputs} give {widths} (set the inputs it was trained with)")

    def weight_sources(self) -> dict[str, str]:
        """``{"method.pretrained": path}`` when it is set, else none (random initialisation)."""
        return {"method.pretrained": self.cfg.pretrained} if self.cfg.pretrained else {}

    def warm_start(self, sources: dict[str, Method]) -> None:
        """Load the encoder weights (and BatchNorm statistics) of ``sources["method.pretrained"]``'s
        ``encoder()`` into :attr:`backbone`; nothing without ``pretrained``.

        Raises:
            ConfigError: its encoder does not fit the one built from ``method.encoder_source`` (one line starting
                ``method.pretrained:``).
        """
        if not self.cfg.pretrained:
            return
        source = sources["method.pretrained"]
        try:
            self.backbone.load_state_dict(source.encoder().state_dict())
        except RuntimeError as err:  # NotImplementedError (no encoder) included
            from pointtune.errors import ConfigError

            reason = " ".join(str(err).split())[:300]
            raise ConfigError(f"method.pretrained: {self.cfg.pretrained}: its {source.cfg.name} encoder does not "
                              f"fit the one method.encoder_source builds ({type(err).__name__}: {reason})") from None


class FinetuneConfig(PretrainedConfig):
    """``pretrained``, ``encoder_source``: see :class:`PretrainedConfig` (``None``: random init; then
    ``backbone`` is built). ``freeze_encoder``: train the head only (a linear-probe-like protocol with an MLP
    head)."""

    name: Literal["finetune"] = "finetune"
    freeze_encoder: bool = Field(
        False, description="train the head only (a linear-probe-like protocol with an MLP head)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy (0: none)")
    head_dropout: float = Field(0.5, ge=0, lt=1, description="dropout of the classification head")


@register_method("finetune")
class Finetune(PretrainedEncoderMethod):
    """Encoder (pretrained or random) + classification head, trained with cross-entropy.

    ``forward`` returns ``loss``, ``ce`` and ``acc`` (training accuracy of the batch, detached). The encoder is
    built by :meth:`~PretrainedEncoderMethod.build_encoder` (``method.encoder_source``'s architecture when
    ``method.pretrained`` is set) and takes the pretrained weights in
    :meth:`~PretrainedEncoderMethod.warm_start`, on a fresh start only.

    Data parallelism (:meth:`ddp_options`): every trainable parameter gets a gradient at every step; with
    ``freeze_encoder`` the encoder's parameters do not require gradients, so DDP leaves them out
    (``find_unused_parameters=False`` holds), and its BatchNorm statistics are frozen too (eval mode). The
    only buffers are BatchNorm running statistics; as in CEDR and ConClu, ``forward_sync_buffers=False`` and
    :meth:`after_step` averages the statistics of the layers in training mode over the workers after every
    step, so every worker evaluates the same model (DDP's broadcast at the start of each forward would leave
    each worker with its own last batch's update at evaluation time).
    """

    task = Task.CLASSIFICATION
    Config = FinetuneConfig
    recipe = {"optim": {"name": "sgd", "lr": {"start": 0.1, "end": 1e-3, "shape": "cosine"}, "momentum": 0.9,
                        "weight_decay": 1e-4}}

    def __init__(self, cfg: FinetuneConfig, num_classes: int, total_epochs: int):
        super().__init__(cfg, num_classes, total_epochs)
        from pointtune.backbones import ClassificationHead

        self.build_encoder(cfg)
        if cfg.freeze_encoder:
            self.backbone.requires_grad_(False)
        self.cls_head = ClassificationHead(int(self.backbone.out_dim), num_classes, dropout=cfg.head_dropout)

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        """Cross-entropy (Eq. 1 of CEDR, label smoothing ``cfg.label_smoothing``) of the head's logits
        ``(B, K)`` against ``batch["label"]`` ``(B,)``.

        Returns:
            ``loss`` (differentiable), ``ce`` (the same, detached) and ``acc`` (fraction of the batch whose
            argmax is the label, detached); scalars.
        """
        if self.cfg.freeze_encoder:
            self.backbone.eval()  # frozen BatchNorm statistics too
        logits = self.cls_head(self.backbone(batch["points"], point_inputs(batch, self.cfg.backbone)))
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.cfg.label_smoothing)
        acc = (logits.detach().argmax(dim=1) == batch["label"]).float().mean()
        return {"loss": loss, "ce": loss.detach(), "acc": acc}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(B, K)``."""
        return self.cls_head(self.backbone(batch["points"], point_inputs(batch, self.cfg.backbone)))

    def after_step(self, step: int, total_steps: int) -> None:
        """Average the BatchNorm running statistics of the layers in training mode over the data-parallel
        workers (see the class docstring); a no-op in a single process."""
        average_batchnorm_stats(self)

    def ddp_options(self) -> dict[str, bool]:
        """``find_unused_parameters=False`` and ``forward_sync_buffers=False`` (see the class docstring)."""
        return {"find_unused_parameters": False, "forward_sync_buffers": False}

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Encoder global features ``(B, D)`` of ``batch["points"]`` ``(B, N, 3)`` (and the per-point inputs of
        ``method.backbone.inputs``)."""
        return self.backbone(batch["points"], point_inputs(batch, self.cfg.backbone))

    def encoder(self) -> torch.nn.Module:
        """The (fine-tuned) encoder."""
        return self.backbone
