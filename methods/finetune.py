"""Supervised fine-tuning of a pretrained encoder: the downstream protocol of every self-supervised method.

The encoder comes from a pointtune checkpoint of any method (``method.pretrained``: a checkpoint directory
holding ``state.pt``; ``pointtune train finetune --from SWEEP_DIR|RUN_DIR|CHECKPOINT`` resolves one): the
pretraining method is rebuilt from the experiment config saved in the checkpoint, its weights are loaded,
and its ``encoder()`` is kept. A classification head (DGCNN-style MLP) on the encoder's global feature is
trained with cross-entropy (Eq. 1 of CEDR, optionally label-smoothed). Without ``pretrained`` the same
model starts from random initialisation: the "from scratch" baseline of the transfer tables (ConClu Table 2,
OcCo, Point-MAE).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from pointtune.method import Method, MethodConfig, Task, get_method, register_method


class FinetuneConfig(MethodConfig):
    """``pretrained``: checkpoint directory (``None``: random init; then ``backbone`` is built).
    When ``pretrained`` is set, the encoder's architecture is the checkpoint's and ``backbone`` is ignored.
    ``freeze_encoder``: train the head only (a linear-probe-like protocol with an MLP head)."""

    name: Literal["finetune"] = "finetune"
    pretrained: str | None = None
    freeze_encoder: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    head_dropout: float = Field(0.5, ge=0, lt=1)


def read_checkpoint(checkpoint_dir: str | Path) -> dict:
    """The training state saved in ``checkpoint_dir/state.pt``, checked to be a pointtune checkpoint: a
    ``torch.save`` file holding a dict with ``model`` (a state dict), ``experiment`` (with ``method.name``)
    and ``class_names``.

    Raises:
        FileNotFoundError: no ``state.pt`` in the directory; the message names it.
        ConfigError: a file torch cannot load (a text or random file, a truncated file), or a dict without
            those entries; one line naming the file (``method.pretrained``).
    """
    import pickle
    import zipfile

    from pointtune.config import ConfigError
    from pointtune.train.checkpoint import STATE_FILE, load_state

    path = Path(checkpoint_dir) / STATE_FILE
    where = f"method.pretrained: {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such file (a checkpoint directory holds {STATE_FILE})")
    try:
        state = load_state(checkpoint_dir)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, OSError, KeyError,
            AttributeError, ImportError, TypeError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(f"{where}: not a pointtune checkpoint (torch cannot load it: {reason})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{where}: not a pointtune checkpoint (holds a {type(state).__name__}, not a dict)")
    experiment = state.get("experiment")
    method = experiment.get("method") if isinstance(experiment, dict) else None
    missing = [k for k in ("model", "class_names") if k not in state]
    if not isinstance(method, dict) or "name" not in method or missing:
        what = missing[0] if missing else "experiment.method.name"
        raise ConfigError(f"{where}: not a pointtune checkpoint (no {what!r} entry)")
    return state


def load_pretrained_encoder(checkpoint_dir: str) -> tuple[torch.nn.Module, str]:
    """Rebuild the method saved in ``checkpoint_dir`` and return ``(its encoder, its method name)``.

    Raises:
        FileNotFoundError: no ``state.pt`` in the directory.
        ConfigError: ``checkpoint_dir`` holds no loadable pointtune checkpoint (:func:`read_checkpoint`), or
            its saved method cannot be rebuilt (unknown method, invalid saved config, weights that do not
            match the rebuilt model); one line naming the file.
        NotImplementedError: the saved method has no transferable encoder.
    """
    from pydantic import ValidationError

    from pointtune.config import ConfigError

    state = read_checkpoint(checkpoint_dir)
    saved = state["experiment"]["method"]
    where = f"method.pretrained: {Path(checkpoint_dir) / 'state.pt'}"
    try:
        source_cls = get_method(saved["name"])
        source = source_cls(source_cls.Config.model_validate(saved), len(state["class_names"]), 1)
        source.load_state_dict(state["model"])
    except (KeyError, ValidationError, RuntimeError, ValueError, TypeError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        reason = " ".join(str(msg).split())[:300]
        raise ConfigError(f"{where}: cannot rebuild its {saved['name']!r} model ({type(err).__name__}: {reason})") \
            from None
    return source.encoder(), saved["name"]


@register_method("finetune")
class Finetune(Method):
    """Encoder (pretrained or random) + classification head, trained with cross-entropy."""

    task = Task.CLASSIFICATION
    Config = FinetuneConfig
    recipe = {"optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
                        "schedule": "cosine", "min_lr": 1e-3}}

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
        """Cross-entropy of the head's logits ``(B, K)`` against ``batch["label"]`` ``(B,)``."""
        if self.cfg.freeze_encoder:
            self.backbone.eval()  # frozen BatchNorm statistics too
        logits = self.cls_head(self.backbone(batch["points"]))
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss, "ce": loss.detach(), "logits": logits.detach()}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(B, K)``."""
        return self.cls_head(self.backbone(batch["points"]))

    @torch.no_grad()
    def embed(self, points: torch.Tensor) -> torch.Tensor:
        """Encoder global features ``(B, D)``."""
        return self.backbone(points)

    def encoder(self) -> torch.nn.Module:
        """The (fine-tuned) encoder."""
        return self.backbone
