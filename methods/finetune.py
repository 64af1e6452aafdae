"""Supervised fine-tuning of a pretrained encoder: the downstream protocol of every self-supervised method.

The encoder comes from a pointtune checkpoint of any method (``method.pretrained``, or
``pointtune train finetune --from``: a checkpoint directory, a run directory, local or multi-worker, or a
sweep directory; :func:`pointtune.train.load.load_method` resolves and reads it): the pretraining
method is rebuilt from the experiment config saved in the checkpoint, its weights are loaded, and its
``encoder()`` is kept. A classification head (DGCNN-style MLP) on the encoder's global feature is
trained with cross-entropy (Eq. 1 of CEDR, optionally label-smoothed). Without ``pretrained`` the same
model starts from random initialisation: the "from scratch" baseline of the transfer tables (ConClu Table 2,
OcCo, Point-MAE).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from pointtune.distributed import average_batchnorm_stats
from pointtune.method import Method, MethodConfig, Task, point_inputs, register_method


class FinetuneConfig(MethodConfig):
    """``pretrained``: a checkpoint, run or sweep directory (``None``: random init; then ``backbone`` is built).
    When ``pretrained`` is set, the encoder's architecture is the checkpoint's and ``backbone`` is ignored.
    ``freeze_encoder``: train the head only (a linear-probe-like protocol with an MLP head)."""

    name: Literal["finetune"] = "finetune"
    pretrained: str | None = Field(
        None, description="checkpoint, run or sweep directory of the pretrained encoder (null: random initialisation)")
    freeze_encoder: bool = Field(
        False, description="train the head only (a linear-probe-like protocol with an MLP head)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy (0: none)")
    head_dropout: float = Field(0.5, ge=0, lt=1, description="dropout of the classification head")


def load_pretrained_encoder(checkpoint_dir: str) -> tuple[torch.nn.Module, str]:
    """Rebuild the method saved in the checkpoint ``checkpoint_dir`` designates and return ``(its encoder, its
    method name)``.

    ``checkpoint_dir`` is anything :func:`pointtune.train.load.load_method` accepts (a checkpoint
    directory or its ``state.pt``, a run directory, local or multi-worker, a sweep directory, a storage URI).

    Raises:
        ConfigError: one line starting ``method.pretrained:`` and naming the file: no loadable pointtune
            checkpoint there, or its saved method cannot be rebuilt (unknown method, invalid saved config,
            weights that do not match the rebuilt model). When nothing exists at ``checkpoint_dir`` it is a
            :class:`~pointtune.train.checkpoint.CheckpointNotFoundError`, also a ``FileNotFoundError``.
        NotImplementedError: the saved method has no transferable encoder.
    """
    from pointtune.config import ConfigError
    from pointtune.train.load import load_method

    try:
        loaded = load_method(checkpoint_dir)
    except ConfigError as err:
        raise type(err)(f"method.pretrained: {err}") from None
    return loaded.method.encoder(), loaded.experiment.method.name


@register_method("finetune")
class Finetune(Method):
    """Encoder (pretrained or random) + classification head, trained with cross-entropy.

    ``forward`` returns ``loss``, ``ce`` and ``acc`` (training accuracy of the batch, detached).

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
    from_key = "method.pretrained"
    recipe = {"optim": {"name": "sgd", "lr": {"start": 0.1, "end": 1e-3, "shape": "cosine"}, "momentum": 0.9,
                        "weight_decay": 1e-4}}

    def __init__(self, cfg: FinetuneConfig, num_classes: int, total_epochs: int):
        super().__init__(cfg, num_classes, total_epochs)
        from pointtune.backbones import ClassificationHead, build_backbone

        if cfg.pretrained:
            self.backbone, self.source_method = load_pretrained_encoder(cfg.pretrained)
        else:
            self.backbone, self.source_method = build_backbone(cfg.backbone.name, **cfg.backbone.kwargs()), None
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
