"""The method contract: the small interface between a method and the platform.

A method is plain PyTorch. It never imports Ray, MLflow or the CLI; the platform never looks inside it.
One ``Method`` subclass per method lives in ``methods/`` and is registered with :func:`register_method`.

The contract serves three task kinds (:class:`Task`):

* ``classification``: supervised; ``predict`` returns class logits ``(B, K)``; judged by OA / mAcc.
* ``pretrain``: self-supervised; ``embed`` returns frozen global features ``(B, D)``; judged by a downstream
  protocol (linear SVM on a labelled set) that the platform runs.
* ``segmentation``: per-point; ``predict`` returns logits ``(B, N, K)``; judged by mIoU.

Any method with an encoder also has ``embed_points`` (per-point features ``(B, N, C)``, by default from
``encoder().forward_features``), which the ``part_seg`` protocol trains a segmentation head on.

A method that starts from another run's weights (a pretrained encoder, SCL's stage-1 network) builds only its
architecture in its constructor, from its config; it names those runs in :meth:`Method.weight_sources` and takes
their weights in :meth:`Method.warm_start`, which the loop calls on a fresh start only. Its checkpoints thus
rebuild from their own contents.

The whole method (encoder, heads, prototypes, memory buffers) is one ``nn.Module`` so that one
``prepare_model`` (DDP) call, one optimizer and one checkpoint cover all of it. Training goes through
``forward`` (so DDP synchronises gradients); evaluation calls ``predict`` / ``embed`` on the unwrapped module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
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

    ``name`` is a registry key (``pointnet``, ``dgcnn``, ``gbnet``, ``pointnet2_ssg``); ``inputs`` names the per-point
    features fed to it beside the coordinates, in this order (``normals``, ``color``, ``height``: keys of
    the batch, e.g. ``normals`` with ``data.use_normals=true``), which sets its ``in_features``; every other
    key is passed to the backbone's constructor, e.g. ``{name: dgcnn, k: 20, emb_dims: 1024}``.
    """

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        "dgcnn",
        description="backbone registry key: pointnet, dgcnn, gbnet, pointnet2_ssg, vit3d, pct (its arguments are "
                    "listed below it)")
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
    #: Whether the method builds the registered backbone ``backbone.name`` (False: it builds its own encoders
    #: and reads only ``backbone.inputs``, as SCL; ``pointtune config`` then lists no backbone arguments).
    builds_backbone: ClassVar[bool] = True
    name: str
    backbone: BackboneConfig = BackboneConfig()
    recipe: str | None = Field(None, description="a named recipe of the method (Method.recipes) over its default one")

    @model_validator(mode="before")
    @classmethod
    def _backbone_defaults(cls, data: Any) -> Any:
        # `--set method.backbone.dim=256` gives a backbone mapping without a name, which would otherwise get
        # BackboneConfig's own default (dgcnn) instead of this method's; a mapping for the method's default
        # backbone keeps its default inputs too.
        if not (isinstance(data, dict) and isinstance(data.get("backbone"), dict)):
            return data
        default = cls.model_fields["backbone"].get_default(call_default_factory=True)
        given = data["backbone"]
        if given.get("name", default.name) != default.name:
            return data
        return {**data, "backbone": {"name": default.name, "inputs": list(default.inputs), **given}}


@dataclass(frozen=True)
class Prerequisite:
    """A run that a method's run needs first, trained from the same config (SCL's stage 2 needs its stage-1
    similarity network): :meth:`Method.prerequisite` declares it; ``pointtune train`` trains it in
    ``<run dir>/<name>`` and a sweep once in ``<sweep dir>/<name>`` (:func:`pointtune.config.plan_prerequisite`).

    Attributes:
        name: the prerequisite's directory under the run's, e.g. ``stage1``.
        overrides: dotted keys that turn the run's config into the prerequisite's (``method.stage: 1``, its
            epochs and learning rate).
        key: the dotted key of the run's config that takes the prerequisite run's directory.
        stand_in: dotted keys under which the run's config builds without the prerequisite, so that its data,
            model and one forward pass are checked before the prerequisite exists.
        own_keys: keys (or sections) only the prerequisite reads: a sweep, which trains one prerequisite run
            for all its trials, refuses to search them.
    """

    name: str
    overrides: dict[str, Any]
    key: str
    stand_in: dict[str, Any] = field(default_factory=dict)
    own_keys: tuple[str, ...] = ()


class Method(nn.Module):
    """A trainable method: model, loss and evaluation hooks behind one interface.

    Subclasses set the class attributes ``task`` and ``Config`` and implement ``forward`` plus
    ``predict`` (classification, segmentation) or ``embed`` (pretrain, and every method with an encoder);
    ``embed_points`` (per-point features) works without more code when ``encoder()`` is a registered backbone.

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
    #: The config key that ``pointtune train METHOD --from RUN`` sets to RUN's checkpoint (None: no --from).
    from_key: ClassVar[str | None] = None
    #: The config keys that may name a run whose weights this method starts from (``method.pretrained``), each
    #: with the key that takes that run's architecture (None: the method's own config builds it). When a run
    #: starts, :func:`pointtune.train.sources.resolve_sources` copies each named checkpoint into the run
    #: directory, points the key at the copy and fills the architecture key, so that the run's config and
    #: checkpoints never depend on the original run.
    sources: ClassVar[dict[str, str | None]] = {}
    #: The method's default settings beside its hyperparameters (optimizer, schedule, data), a nested config
    #: under every run's own config.
    recipe: ClassVar[dict[str, Any]] = {}
    #: Other settings selectable by name with ``method.recipe`` (e.g. a paper's second dataset), each merged over
    #: :attr:`recipe` (and under the run's own config).
    recipes: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def prerequisite(cls, cfg: MethodConfig) -> Prerequisite | None:
        """The run this method's run with ``cfg`` needs first, or None (the default: none, or already given)."""
        return None

    def __init__(self, cfg: MethodConfig, num_classes: int, total_epochs: int):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.total_epochs = total_epochs

    def weight_sources(self) -> dict[str, str]:
        """The runs whose weights this method starts from: config key (one of :attr:`sources`) -> checkpoint
        path (anything :func:`pointtune.train.load.load_method` reads). Default: none.

        The constructor builds the architecture only; on a fresh start (never on a resume, nor when a checkpoint
        is loaded) the loop rebuilds each source's method from its checkpoint and hands them to
        :meth:`warm_start`.
        """
        return {}

    def warm_start(self, sources: dict[str, Method]) -> None:
        """Take the initial weights from ``sources`` (:meth:`weight_sources`' keys -> each source run's method,
        rebuilt with its saved weights, in eval mode, on the CPU) and check that they fit. Default: nothing.

        Raises:
            ConfigError: a source this method cannot start from (another kind of run, other inputs, an
                architecture that does not match); one line starting with the source's key.
        """

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

    @torch.no_grad()
    def embed_points(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-point features ``(B, N, C)`` of the encoder for every input point of ``batch["points"]``
        ``(B, N, 3)``, for the part-segmentation protocol (``part_seg``); the caller puts the module in eval
        mode.

        Default: :func:`encoder_point_features` of ``self.encoder()`` (the same computation with gradients):
        ``forward_features(points, inputs)`` (a registered backbone; ``inputs``: the per-point features of
        ``method.backbone.inputs``), whose ``point_features`` ``(B, M, C)`` at
        ``point_xyz`` ``(B, M, 3)`` are returned as they are when they lie at the input points (PointNet,
        DGCNN: ``M = N``) and otherwise (3D-ViT patch centres, PointNet++'s last level) interpolated to the
        input points by :func:`interpolate_point_features` (inverse squared distance weights of the 3 nearest,
        PointNet++ feature propagation). A method whose per-point features come from elsewhere overrides it.

        Raises:
            NotImplementedError: the method has no encoder, or its encoder has no ``forward_features``.
            KeyError: a per-point input of ``method.backbone.inputs`` is missing from the batch.
        """
        encoder = self.encoder()
        forward_features = getattr(encoder, "forward_features", None)
        if forward_features is None:
            raise NotImplementedError(f"{type(self).__name__}.encoder() is a {type(encoder).__name__} without "
                                      "forward_features: no per-point features (override embed_points)")
        backbone_cfg = getattr(self.cfg, "backbone", None)
        inputs = point_inputs(batch, backbone_cfg) if isinstance(backbone_cfg, BackboneConfig) else None
        return encoder_point_features(encoder, batch["points"], inputs)

    def encoder(self) -> nn.Module:
        """The backbone whose weights transfer to downstream fine-tuning."""
        raise NotImplementedError(f"{type(self).__name__} has no transferable encoder")


def encoder_point_features(encoder: nn.Module, points: torch.Tensor,
                           inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-point features of ``encoder`` at every point of ``points``, differentiable: what
    :meth:`Method.embed_points` returns (under ``no_grad``), for methods that train through them (``seg``).

    ``encoder.forward_features(points, inputs)`` gives ``point_features`` ``(B, M, C)`` at ``point_xyz``
    ``(B, M, 3)``; they are returned as they are when they lie at the input points (PointNet, DGCNN, PointNeXt's
    decoder: ``M = N``) and otherwise (3D-ViT patch centres, PointNet++'s last level) interpolated to them by
    :func:`interpolate_point_features`.

    Args:
        encoder: a registered backbone (anything with ``forward_features`` returning a
            :class:`~pointtune.backbones.BackboneOutput`).
        points: ``(B, N, 3)`` coordinates, in the units the encoder expects.
        inputs: ``(B, N, in_features)`` per-point input channels beside the coordinates, or ``None``.

    Returns:
        ``(B, N, C)``, ``C`` the encoder's ``point_dim``.

    Raises:
        NotImplementedError: the encoder has no ``forward_features``.
        ValueError: from the encoder (inputs that do not fit it) or the interpolation.
    """
    forward_features = getattr(encoder, "forward_features", None)
    if forward_features is None:
        raise NotImplementedError(f"a {type(encoder).__name__} has no forward_features: no per-point features")
    out = forward_features(points, inputs)
    return interpolate_point_features(points, out.point_xyz, out.point_features)


def interpolate_point_features(xyz: torch.Tensor, ref_xyz: torch.Tensor, ref_features: torch.Tensor,
                               k: int = 3) -> torch.Tensor:
    """Features of the points ``xyz`` from features known at ``ref_xyz``: the feature propagation of
    PointNet++ (Qi et al. 2017, Eq. 2 with p = 2): the weighted mean of the ``k`` nearest reference features
    with weights ``1 / (d^2 + 1e-8)`` (``d``: Euclidean distance), normalised to sum 1.

    A point that coincides with a reference point (``d = 0`` exactly) gets that point's feature exactly (the
    mean of them where several reference points coincide with it): the 3D-ViT's patch centres are input
    points, so they keep their token. When ``ref_xyz`` is ``xyz`` (the same
    tensor, or equal values), ``ref_features`` is returned as it is.

    Args:
        xyz: ``(B, N, 3)`` where features are wanted.
        ref_xyz: ``(B, M, 3)`` where they are known, ``M >= 1``.
        ref_features: ``(B, M, C)``.
        k: neighbours (PointNet++: 3); ``min(k, M)`` are used.

    Returns:
        ``(B, N, C)``, the dtype of ``ref_features``.

    Raises:
        ValueError: shapes that do not match (batch size, ``M``, 3-D coordinates), or ``k < 1``.
    """
    from pointtune.ops import knn

    if ref_xyz is xyz or (ref_xyz.shape == xyz.shape and torch.equal(ref_xyz, xyz)):
        return ref_features
    if ref_features.dim() != 3 or ref_features.shape[:2] != ref_xyz.shape[:2]:
        raise ValueError(f"ref_features {tuple(ref_features.shape)} must be (B, M, C) for ref_xyz "
                         f"{tuple(ref_xyz.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, ref_xyz.shape[1])
    idx = knn(xyz, ref_xyz, k)  # (B, N, k), validates the coordinates
    batch = torch.arange(xyz.shape[0], device=xyz.device)[:, None, None]
    d2 = (xyz[:, :, None, :] - ref_xyz[batch, idx]).pow(2).sum(-1)  # (B, N, k), exact 0 at coincident points
    zero = d2 == 0
    weights = torch.where(zero.any(-1, keepdim=True), zero.to(d2.dtype), 1.0 / (d2 + 1e-8))
    weights = weights / weights.sum(-1, keepdim=True)
    return (weights.unsqueeze(-1).to(ref_features.dtype) * ref_features[batch, idx]).sum(2)


#: Methods register themselves (:func:`register_method`); the modules declared as entry points of the group
#: ``pointtune.methods`` (pointtune's own in its pyproject.toml, and any installed package's) are imported the
#: first time a name is looked up or listed.
_METHODS: Registry[type[Method]] = Registry("method", plugins="pointtune.methods")


def register_method(name: str):
    """Class decorator that makes a ``Method`` subclass buildable by ``name`` (e.g. ``"cedr"``).

    Raises:
        ValueError: ``name`` is already registered.
    """
    return _METHODS.register(name)


def method_names() -> list[str]:
    """Names of every method: registered, or declared as an entry point of ``pointtune.methods``; sorted."""
    return _METHODS.names()


def get_method(name: str) -> type[Method]:
    """The ``Method`` class registered as ``name`` (its entry point imported if needed).

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    return _METHODS.get(name)
