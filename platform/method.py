"""The method contract: the small interface between a method and the platform.

A method is plain PyTorch. It never imports Ray, MLflow or the CLI; the platform never looks inside it.
One ``Method`` subclass per method lives in ``methods/`` and is registered with :func:`register_method`.

The contract serves three task kinds (:class:`Task`):

* ``classification``: supervised; ``predict`` returns class logits ``(B, K)``; judged by OA / mAcc.
* ``pretrain``: self-supervised; ``embed`` returns frozen global features ``(B, D)``; judged by a downstream
  protocol (linear SVM on a labelled set) that the platform runs.
* ``segmentation``: per-point; ``predict`` returns logits ``(B, N, K)``; judged by mIoU.

The whole method (encoder, heads, prototypes, memory buffers) is one ``nn.Module`` so that one
``prepare_model`` (DDP) call, one optimizer and one checkpoint cover all of it. Training goes through
``forward`` (so DDP synchronises gradients); evaluation calls ``predict`` / ``embed`` on the unwrapped module.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from pointtune.registry import Registry
from pointtune.schedules import WithSchedules


class Task(str, enum.Enum):
    """What a method learns, which decides how the platform evaluates it."""

    CLASSIFICATION = "classification"
    PRETRAIN = "pretrain"
    SEGMENTATION = "segmentation"


# Per-point input features a batch may carry beside ``points``, and their widths.
POINT_INPUTS = {"normals": 3, "color": 3, "height": 1}


class BackboneConfig(BaseModel):
    """Which backbone to build from the registry (``pointtune.backbones``) and its keyword arguments.

    ``name`` is a registry key (``pointnet``, ``dgcnn``, ``pointnet2_ssg``); ``inputs`` names the per-point
    features fed to it beside the coordinates, in this order (``normals``, ``color``, ``height``: keys of
    the batch, e.g. ``normals`` with ``data.use_normals=true``), which sets its ``in_features``; every other
    key is passed to the backbone's constructor, e.g. ``{name: dgcnn, k: 20, emb_dims: 1024}``.
    """

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        "dgcnn",
        description="backbone registry key: pointnet, dgcnn, pointnet2_ssg, vit3d (its arguments are listed below it)")
    inputs: list[Literal["normals", "color", "height"]] = Field(
        [], description="per-point features fed beside the coordinates, in order: normals, color, height")

    def kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments: every key except ``name`` and ``inputs``, plus ``in_features``
        when ``inputs`` is not empty."""
        extra = dict(self.model_extra or {})
        if self.inputs:
            extra["in_features"] = sum(POINT_INPUTS[name] for name in self.inputs)
        return extra


def point_inputs(batch: dict[str, torch.Tensor], cfg: BackboneConfig) -> torch.Tensor | None:
    """The per-point features ``cfg.inputs`` of a batch, concatenated: ``(B, N, in_features)``, or ``None``.

    Raises:
        KeyError: the batch lacks one of them (e.g. ``normals`` without ``data.use_normals=true``); the
            message names the config key.
    """
    if not cfg.inputs:
        return None
    missing = [name for name in cfg.inputs if name not in batch]
    if missing:
        raise KeyError(f"method.backbone.inputs: the batch has no {missing[0]!r} (for normals set "
                       f"data.use_normals=true; the dataset must provide it)")
    return torch.cat([batch[name] for name in cfg.inputs], dim=-1)


class MethodConfig(WithSchedules):
    """Base of every method's hyperparameters. Subclasses add the paper's symbols as fields.

    Unknown keys are rejected so that a typo in a config or a search space fails before any compute.
    Hyperparameters that change over the run are :class:`~pointtune.schedules.Schedule` fields.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    backbone: BackboneConfig = BackboneConfig()


class Method(nn.Module):
    """A trainable method: model, loss and evaluation hooks behind one interface.

    Subclasses set the class attributes ``task`` and ``Config`` and implement ``forward`` plus
    ``predict`` (classification, segmentation) or ``embed`` (pretrain, and every method with an encoder).

    The loop calls, per optimizer step: ``forward`` (through DDP when there are several workers), the
    backward pass and the step, then :meth:`after_step` on the unwrapped method (EMA teachers, centre
    updates, momentum schedules). It builds the optimizer from :meth:`param_groups` and wraps the method in
    DDP with :meth:`ddp_options`. Evaluation calls ``predict`` / ``embed`` on the unwrapped method.

    Args:
        cfg: the method's validated hyperparameters (an instance of ``Config``).
        num_classes: classes of the labelled dataset (0 for label-free pretraining).
        total_epochs: length of the run, for schedules that depend on it.
    """

    task: ClassVar[Task]
    Config: ClassVar[type[MethodConfig]]

    def __init__(self, cfg: MethodConfig, num_classes: int, total_epochs: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.total_epochs = total_epochs

    def forward(self, batch: dict[str, torch.Tensor], epoch: int, progress: float) -> dict[str, torch.Tensor]:
        """Compute the training losses of one mini-batch.

        Args:
            batch: ``points`` float32 ``(B, N, 3)``, ``label`` int64 ``(B,)``, and where the dataset has them
                per-point features beside the points: ``normals`` ``(B, N, 3)``, ``color`` ``(B, N, 3)``,
                ``height`` ``(B, N, 1)``, and per-point labels ``seg`` int64 ``(B, N)``; already on the
                model's device.
            epoch: 0-based epoch index.
            progress: fraction of the whole run completed, in ``[0, 1]`` (for per-iteration schedules).

        Returns:
            A dict of scalar tensors. ``loss`` is what is back-propagated; every other entry (loss terms,
            and diagnostics such as the training accuracy ``acc`` or the fraction of outliers) is logged as
            ``train/<key>``, averaged over the epoch.
        """
        raise NotImplementedError

    def after_step(self, step: int, total_steps: int) -> None:
        """Called on the unwrapped method after every optimizer step (``step`` counts from 1 to
        ``total_steps`` over the whole run): the place for EMA teachers, centre updates and momentum
        schedules. Every worker calls it, so state it updates stays identical across workers."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups: weight decay on weight matrices and kernels; none on biases, norm
        scales and the names in :meth:`no_weight_decay` (tokens, positional embeddings), as in timm / DINO.

        Each group carries ``weight_decay`` and ``decay`` (whether a weight-decay schedule applies to it).
        """
        exempt = self.no_weight_decay()
        decay, plain = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (plain if param.ndim <= 1 or name in exempt else decay).append(param)
        groups = [{"params": decay, "weight_decay": weight_decay, "decay": True}]
        return groups + ([{"params": plain, "weight_decay": 0.0, "decay": False}] if plain else [])

    def no_weight_decay(self) -> set[str]:
        """Names of parameters kept free of weight decay besides 1-D ones: by default every parameter whose
        name contains ``token`` or ``pos_embed`` (e.g. a ViT's ``cls_token``)."""
        return {n for n, _ in self.named_parameters() if "token" in n or "pos_embed" in n}

    def ddp_options(self) -> dict[str, bool]:
        """What data parallelism needs, for ``DistributedDataParallel``: ``find_unused_parameters`` (some
        parameters get no gradient in a step, e.g. a head used only after a start epoch) and
        ``forward_sync_buffers`` (False when buffers are kept identical by the method itself, e.g. statistics
        all-reduced across workers, so rank 0's copy must not overwrite them)."""
        return {"find_unused_parameters": False, "forward_sync_buffers": True}

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits for evaluation: ``(B, K)`` for classification, ``(B, N, K)`` for segmentation."""
        raise NotImplementedError(f"{type(self).__name__} ({self.task.value}) does not predict labels")

    @torch.no_grad()
    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Global features ``(B, D)`` of a batch (``points`` ``(B, N, 3)`` and any per-point features) from
        the encoder, for the linear-SVM and few-shot protocols."""
        raise NotImplementedError(f"{type(self).__name__} does not expose an encoder embedding")

    def encoder(self) -> nn.Module:
        """The backbone whose weights transfer to downstream fine-tuning."""
        raise NotImplementedError(f"{type(self).__name__} has no transferable encoder")


_METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    """Class decorator that makes a ``Method`` subclass buildable by ``name`` (e.g. ``"cedr"``)."""
    return _METHODS.register(name)


def method_names() -> list[str]:
    """Names of every registered method, sorted."""
    import pointtune.methods  # noqa: F401  (registers the methods)

    return _METHODS.names()


def get_method(name: str) -> type[Method]:
    """The ``Method`` class registered as ``name``.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    method_names()
    return _METHODS.get(name)
