"""The ``part_seg`` protocol: part segmentation on ShapeNetPart with a head trained on frozen per-point features.

The setting is the SCL paper's (Wang et al., §4.2, Tables 2-3; SCL spec §4.5, A12-A14), after MAP-VAE and
GraphTER: the encoder is frozen; its per-point features (:meth:`pointtune.method.Method.embed_points`) feed a
head trained by the protocol with the negative log-likelihood of the part labels, either one fully connected
layer (``protocol.head: 1fc``) or five (``5fc``: ``C -> 512 -> 256 -> 256 -> 128 -> 50`` with BN +
LeakyReLU(0.2) + dropout on the hidden layers, spec A12 [REC]). As in PointNet, the shape category's one-hot
is concatenated to every point's feature (``protocol.category_onehot``) and a point's prediction is the
argmax over the part ids of its shape's category. Scores are PointNet's mIoU
(:func:`pointtune.metrics.shape_part_ious`, :func:`pointtune.metrics.part_seg_metrics`).

The head's optimisation is the spec's [REC] (§4.5): Adam, lr 1e-3, 100 epochs, batches of 32 shapes, the lr
halved every 20 epochs (:class:`PartSegConfig`). ``protocol.label_fraction`` trains the head on a seeded,
category-stratified fraction of the training shapes (the semi-supervised Table 3; spec A14 [REC]).
Fine-tuning the encoder with the head (Table 3 "w/ fine-tune") is not implemented.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import Dataset, Subset, default_collate

from pointtune import distributed as dist
from pointtune.data.shapenetpart import SHAPENETPART_CLASSES, SHAPENETPART_SEG_CLASSES
from pointtune.errors import ConfigError
from pointtune.method import Method, Task
from pointtune.metrics import part_seg_metrics, shape_part_ious
from pointtune.protocols.base import (
    Protocol,
    ProtocolConfig,
    Result,
    as_dataset,
    register_protocol,
    seed_field,
    shard_indices,
    shard_loader,
    share_from_rank0,
    to_device,
)

__all__ = [
    "PartSegmentation", "PartSegConfig", "PartSegHead", "PointFeatures", "NUM_PARTS", "NUM_CATEGORIES",
    "category_ids", "draw_label_fraction", "fit_point_indices", "extract_point_features", "train_seg_head",
]

# ShapeNetPart: 50 global part ids over 16 categories (SHAPENETPART_SEG_CLASSES).
NUM_PARTS = sum(len(ids) for ids in SHAPENETPART_SEG_CLASSES.values())
NUM_CATEGORIES = len(SHAPENETPART_CLASSES)
# Hidden widths of the 5fc head (SCL spec A12 [REC]: C -> 512 -> 256 -> 256 -> 128 -> 50).
FIVE_FC_WIDTHS = (512, 256, 256, 128)
# Salts of the protocol's random streams (each seeded with protocol.seed).
_FRACTION_STREAM, _POINTS_STREAM, _ORDER_STREAM = 1, 2, 3


class PartSegConfig(ProtocolConfig):
    """Settings of the ``part_seg`` protocol (``protocol.*`` with ``protocol.name: part_seg``), besides ``name``
    and ``data`` (:class:`~pointtune.protocols.base.ProtocolConfig`).

    Fields:
        head, category_onehot, dropout: the head trained on frozen per-point features, ``1fc`` (one Linear to the
            50 parts) or ``5fc`` (C -> 512 -> 256 -> 256 -> 128 -> 50, BN + LeakyReLU(0.2) + dropout on the
            hidden layers): the SCL paper's two settings (SCL spec §4.5, A12 [REC]); the category one-hot
            concatenated to every point's feature (PointNet).
        epochs, lr, lr_step, lr_gamma, weight_decay, batch_size: the head's Adam and StepLR schedule (SCL spec
            §4.5 [REC]: 100 epochs, lr 1e-3 halved every 20 epochs, batch 32 shapes).
        label_fraction: train the head on this seeded, category-stratified fraction of the training shapes (at
            least one per category): the semi-supervised setting (SCL Table 3: 0.01, 0.05).
        fit_points: points of every training shape the head is trained on (a fixed seeded subset; the head is
            point-wise); ``None``: all of them.
        finetune: fine-tuning the encoder with the head (SCL Table 3 "w/ fine-tune") is not implemented; only
            ``false`` is accepted.
        seed: seed of the head (its weights, batch order, dropout), the label fraction and the point subsets.
    """

    head: Literal["1fc", "5fc"] = Field(
        "1fc", description="head on the frozen per-point features: 1fc (Linear to the parts) or 5fc "
        "(C-512-256-256-128-50, BN, LeakyReLU, dropout), the SCL paper's two settings")
    category_onehot: bool = Field(
        True, description="concatenate the shape category's one-hot to every point's feature (PointNet)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the hidden layers of the 5fc head")
    epochs: int = Field(100, ge=1, description="epochs of head training per evaluation")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the head")
    lr_step: int = Field(
        20, ge=1, description="the head's learning rate is multiplied by lr_gamma every this many epochs")
    lr_gamma: float = Field(0.5, gt=0, le=1, description="that factor (StepLR)")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay of the head")
    batch_size: int = Field(32, ge=1, description="shapes per head training batch")
    label_fraction: float = Field(
        1.0, gt=0, le=1, description="train the head on this seeded, category-stratified fraction of the training "
        "shapes, at least one per category (semi-supervised: 0.01, 0.05)")
    fit_points: int | None = Field(
        512, ge=1, description="points per training shape the head trains on (fixed seeded subset; null: all); "
        "bounds the memory of the stored features")
    finetune: bool = Field(
        False, description="fine-tune the encoder with the head; not implemented (only false)")
    seed: int = seed_field("the head (weights, batch order, dropout), the label fraction and the point subsets")

    @field_validator("finetune")
    @classmethod
    def _no_finetune(cls, value: bool) -> bool:
        if value:
            raise ValueError("fine-tuning the encoder in the part_seg protocol is not implemented: it judges frozen "
                             "per-point features (the paper's 'w/o fine-tune'); set it false")
        return value


class PartSegHead(nn.Module):
    """The segmentation head on frozen per-point features: the SCL paper's "1 FC" or "5 FCs" (spec A12 [REC]).

    ``1fc``: ``Linear(in_dim [+ 16] -> 50)``, point-wise. ``5fc``: ``Linear`` layers ``in_dim [+ 16] -> 512 ->
    256 -> 256 -> 128 -> 50``, BatchNorm + LeakyReLU(0.2) + dropout after each hidden one, point-wise (BN over
    all points of the batch). With ``onehot``, the 16-way category one-hot is concatenated to every point's
    feature (PointNet's segmentation network).

    Args:
        in_dim: ``C``, width of the per-point features.
        kind: ``"1fc"`` or ``"5fc"``.
        onehot: concatenate the category one-hot.
        dropout: dropout rate of the 5fc head's hidden layers.
        num_parts: outputs (ShapeNetPart: 50).

    Raises:
        ValueError: unknown ``kind`` or ``in_dim < 1``.
    """

    def __init__(self, in_dim: int, kind: str = "1fc", onehot: bool = True, dropout: float = 0.5,
                 num_parts: int = NUM_PARTS):
        super().__init__()
        if kind not in ("1fc", "5fc"):
            raise ValueError(f"part_seg head must be '1fc' or '5fc', got {kind!r}")
        if in_dim < 1:
            raise ValueError(f"part_seg head: in_dim must be >= 1, got {in_dim}")
        self.onehot = onehot
        width = in_dim + (NUM_CATEGORIES if onehot else 0)
        layers: list[nn.Module] = []
        if kind == "5fc":
            for hidden in FIVE_FC_WIDTHS:
                layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
                width = hidden
        layers.append(nn.Linear(width, num_parts))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """Part logits ``(B, N, num_parts)`` of per-point ``features`` ``(B, N, C)`` of shapes of global
        ShapeNetPart ``categories`` ``(B,)`` int64 (used when ``onehot``)."""
        b, n, _ = features.shape
        x = features
        if self.onehot:
            hot = F.one_hot(categories, NUM_CATEGORIES).to(features.dtype)
            x = torch.cat([x, hot[:, None, :].expand(b, n, NUM_CATEGORIES)], dim=-1)
        return self.net(x.reshape(b * n, -1)).reshape(b, n, -1)


def category_ids(class_names: Sequence[str]) -> np.ndarray:
    """``(K,)`` int64: the ShapeNetPart category (index into ``SHAPENETPART_CLASSES``) of every class name, so
    that a filtered dataset (``data.classes``) keeps the global part ids and one-hot positions.

    Raises:
        ValueError: a class name that is not a ShapeNetPart category (the protocol's part table is ShapeNetPart's).
    """
    unknown = [name for name in class_names if name not in SHAPENETPART_CLASSES]
    if unknown:
        raise ValueError(f"part_seg: classes {', '.join(map(repr, unknown[:5]))} are not ShapeNetPart categories; "
                         "the protocol judges ShapeNetPart (shapenetpart, shapenetpart_h5)")
    return np.asarray([SHAPENETPART_CLASSES.index(name) for name in class_names], dtype=np.int64)


def draw_label_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The training shapes the head learns from: a seeded, category-stratified fraction (SCL spec A14 [REC]).

    Per category with ``n`` shapes, ``min(n, max(1, round(fraction * n)))`` (half up) shapes, so every
    category present keeps at least one; which ones is a permutation from ``default_rng([seed, label, 1])``,
    independent of the other categories. ``fraction = 1`` keeps every shape.

    Args:
        labels: ``(M,)`` category labels of the training split.
        fraction: in ``(0, 1]``.
        seed: ``protocol.seed``.

    Returns:
        ``(S,)`` int64 sorted indices into ``labels``.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    if fraction == 1.0:
        return np.arange(len(labels), dtype=np.int64)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep = min(members.size, max(1, int(math.floor(fraction * members.size + 0.5))))
        chosen.append(np.random.default_rng([seed, int(label), _FRACTION_STREAM]).permutation(members)[:keep])
    return np.sort(np.concatenate(chosen)).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def fit_point_indices(num_points: int, keep: int | None, seed: int, shape_index: int) -> np.ndarray:
    """``(P,)`` sorted rows of training shape ``shape_index`` (an index into the training split) the head is
    trained on: all ``num_points`` when ``keep`` is None or not smaller, else ``keep`` rows drawn without
    replacement by ``default_rng([seed, shape_index, 2])`` (the same on every worker and world size)."""
    if keep is None or keep >= num_points:
        return np.arange(num_points, dtype=np.int64)
    rng = np.random.default_rng([seed, int(shape_index), _POINTS_STREAM])
    return np.sort(rng.choice(num_points, size=keep, replace=False)).astype(np.int64)


@dataclass
class PointFeatures:
    """Per-point features of training shapes, in the order of the requested indices (rank 0 only; the
    other workers hold zero rows of the same trailing shapes).

    Attributes:
        x: ``(S, P, C)`` float32 features of the ``P`` kept points of each shape.
        seg: ``(S, P)`` int64 part ids of those points.
        labels: ``(S,)`` int64 category labels (dataset label order).
    """

    x: np.ndarray
    seg: np.ndarray
    labels: np.ndarray


def _embed_points(method: Method, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``method.embed_points(batch)`` as float32, checked to be ``(B, N, C)`` for the batch's ``(B, N)``
    ``seg``; ValueError naming the shapes otherwise, or when the batch has no ``seg``."""
    if "seg" not in batch:
        raise ValueError("part_seg: the judged items have no per-point part labels 'seg'; judge ShapeNetPart "
                         "(shapenetpart, shapenetpart_h5)")
    feats = method.embed_points(batch)
    if feats.dim() != 3 or tuple(feats.shape[:2]) != tuple(batch["seg"].shape):
        raise ValueError(f"embed_points returned shape {tuple(feats.shape)} for clouds of shape "
                         f"{tuple(batch['points'].shape)}; expected (B, N, C)")
    return feats.float()


@torch.no_grad()
def extract_point_features(method: Method, dataset: Dataset, indices: np.ndarray, device: torch.device,
                           keep: int | None, seed: int, batch_size: int = 64, num_workers: int = 0) -> PointFeatures:
    """Frozen per-point features of the training shapes ``indices`` of ``dataset``, each worker embedding only
    its shard, collected on rank 0.

    Worker ``r`` embeds the shapes ``indices[r::world]`` (``method.embed_points``, eval mode; the caller's mode
    is restored) and keeps, of each, the rows :func:`fit_point_indices` (``keep``, ``seed``, the shape's index
    in ``dataset``). The workers' batches are gathered round by round (:func:`pointtune.distributed.
    all_gather_rows`, a batch per worker and round); rank 0 keeps them, the others drop each round at once,
    so only rank 0 holds them all. The result is in the order of ``indices``, the same as a single process's.

    Args:
        method: the unwrapped method.
        dataset: items with ``points`` ``(N, 3)``, ``seg`` ``(N,)`` and ``label``.
        indices: ``(S,)`` indices into ``dataset``, ``S >= 1``.
        keep: points per shape (``protocol.fit_points``; None: all).
        seed: ``protocol.seed``.

    Returns:
        :class:`PointFeatures` (rank 0: ``S`` rows; other workers: 0 rows).

    Raises:
        ValueError: no index, items without ``seg``, or ``embed_points`` output that is not ``(B, N, C)``.
    """
    dataset = as_dataset(dataset)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError("part_seg: no training shape to train the head on")
    rank, world = dist.rank(), dist.world_size()
    subset = Subset(dataset, indices.tolist())
    mine = np.asarray(shard_indices(len(indices), rank, world), dtype=np.int64)
    rounds = math.ceil(len(shard_indices(len(indices), 0, world)) / batch_size)  # rank 0 has the largest shard
    loader = iter(shard_loader(subset, batch_size, num_workers))
    was_training = method.training
    method.eval()
    xs, segs, labels, trailing = [], [], [], None
    try:
        for step in range(rounds):
            batch = next(loader, None)
            if batch is not None:
                batch = to_device(batch, device)
                feats = _embed_points(method, batch)
                rows = mine[step * batch_size: step * batch_size + feats.shape[0]]
                pick = torch.as_tensor(np.stack([fit_point_indices(feats.shape[1], keep, seed, int(indices[i]))
                                                 for i in rows]), device=feats.device)
                x = torch.gather(feats, 1, pick[..., None].expand(-1, -1, feats.shape[2]))
                seg = torch.gather(batch["seg"].to(torch.int64), 1, pick)
                label = batch["label"].to(device=feats.device, dtype=torch.int64).reshape(-1)
                trailing = (x.shape[1], x.shape[2])
            else:  # this worker's shard is used up: an empty contribution of the right width
                if trailing is None:
                    probe = _embed_points(method, to_device(default_collate([subset[0]]), device))
                    trailing = (len(fit_point_indices(probe.shape[1], keep, seed, 0)), probe.shape[2])
                x = torch.zeros((0, *trailing), device=device)
                seg = torch.zeros((0, trailing[0]), dtype=torch.int64, device=device)
                label = torch.zeros(0, dtype=torch.int64, device=device)
            if world > 1:
                x, _ = dist.all_gather_rows(x.contiguous())
                seg, _ = dist.all_gather_rows(seg.contiguous())
                label, _ = dist.all_gather_rows(label.contiguous())
            if rank == 0:
                xs.append(x.cpu())
                segs.append(seg.cpu())
                labels.append(label.cpu())
            else:
                trailing = (x.shape[1], x.shape[2])
    finally:
        method.train(was_training)
    if rank != 0:
        return PointFeatures(np.zeros((0, *trailing), np.float32), np.zeros((0, trailing[0]), np.int64),
                             np.zeros(0, np.int64))
    x, seg, label = torch.cat(xs).numpy(), torch.cat(segs).numpy(), torch.cat(labels).numpy()
    # Round s holds, in rank order, the rows s * batch_size ... of every worker's shard: back to index order.
    shards = [np.asarray(shard_indices(len(indices), r, world), dtype=np.int64) for r in range(world)]
    order = np.concatenate([shards[r][s * batch_size:(s + 1) * batch_size]
                            for s in range(rounds) for r in range(world)])
    out = PointFeatures(np.empty_like(x), np.empty_like(seg), np.empty_like(label))
    out.x[order], out.seg[order], out.labels[order] = x, seg, label
    return out


def train_seg_head(feats: PointFeatures, categories: np.ndarray, cfg: PartSegConfig,
                   device: torch.device) -> tuple[PartSegHead, float]:
    """Train the head :class:`PartSegHead` (``cfg.head``) on ``feats`` with cross-entropy over the 50
    parts (log-softmax + NLL, SCL §4.2), Adam (``cfg.lr``, ``cfg.weight_decay``), StepLR (``cfg.lr_step``,
    ``cfg.lr_gamma``) for ``cfg.epochs`` epochs of batches of ``cfg.batch_size`` shapes in a seeded order.
    Weights and dropout draw from ``torch.manual_seed(cfg.seed)`` inside a forked RNG (the caller's RNG state
    is kept), the shape order from ``default_rng([seed, 3])``: the same head for the same features.

    Args:
        feats: the training shapes' features (:func:`extract_point_features`), ``S >= 1`` rows.
        categories: ``(S,)`` global ShapeNetPart category of every shape.
        device: where it trains.

    Returns:
        ``(head in eval mode, mean training loss of the last epoch)``.
    """
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed)
        head = _new_head(feats.x.shape[2], cfg).to(device)
        head.train()
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        order_rng = np.random.default_rng([cfg.seed, _ORDER_STREAM])
        cats = torch.as_tensor(np.asarray(categories, dtype=np.int64))
        last = float("nan")
        with torch.enable_grad():
            for _ in range(cfg.epochs):
                order = order_rng.permutation(len(feats.x))
                total, points = 0.0, 0
                for start in range(0, len(order), cfg.batch_size):
                    idx = order[start:start + cfg.batch_size]
                    x = torch.from_numpy(feats.x[idx]).to(device)
                    y = torch.from_numpy(feats.seg[idx]).to(device)
                    logits = head(x, cats[torch.from_numpy(idx)].to(device))
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * y.numel()
                    points += y.numel()
                sched.step()
                last = total / max(points, 1)
    return head.eval(), last


def _new_head(in_dim: int, cfg: PartSegConfig) -> PartSegHead:
    return PartSegHead(in_dim, cfg.head, cfg.category_onehot, cfg.dropout)


def _share_head(head: PartSegHead | None, in_dim: int, cfg: PartSegConfig, loss: float,
                device: torch.device) -> tuple[PartSegHead, float]:
    """Rank 0's trained head and loss on every worker (its state as one float64 vector through
    :func:`~pointtune.protocols.base.share_from_rank0`: exact for float32 weights and integer counters)."""
    if dist.world_size() == 1:
        return head, loss
    if head is None:
        with torch.random.fork_rng(devices=[]):  # its initial weights are overwritten; keep the RNG as it was
            head = _new_head(in_dim, cfg).to(device)
    state = head.state_dict()
    size = sum(t.numel() for t in state.values()) + 1
    values = None
    if dist.rank() == 0:
        values = np.concatenate([t.detach().cpu().double().numpy().ravel() for t in state.values()] + [[loss]])
    shared = share_from_rank0(values, size, device)
    offset, new = 0, {}
    for name, tensor in state.items():
        n = tensor.numel()
        new[name] = torch.from_numpy(shared[offset:offset + n]).reshape(tensor.shape).to(tensor.dtype)
        offset += n
    head.load_state_dict(new)
    return head.eval(), float(shared[-1])


@torch.no_grad()
def _score(method: Method, head: PartSegHead, dataset: Dataset, cat_of_label: np.ndarray, device: torch.device,
           batch_size: int, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-shape IoU ``(M,)`` and global category ``(M,)`` of every shape of ``dataset``: each worker predicts
    its shard (argmax over its category's parts), the vectors (zeros outside the shard) are summed over the
    workers, exactly."""
    dataset = as_dataset(dataset)
    n = len(dataset)
    mine = np.asarray(shard_indices(n, dist.rank(), dist.world_size()), dtype=np.int64)
    ious, cats = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
    allowed = torch.zeros((NUM_CATEGORIES, NUM_PARTS), dtype=torch.bool)
    for c, name in enumerate(SHAPENETPART_CLASSES):
        allowed[c, SHAPENETPART_SEG_CLASSES[name]] = True
    allowed = allowed.to(device)
    lookup = torch.as_tensor(cat_of_label, device=device)
    method.eval()
    done = 0
    for batch in shard_loader(dataset, batch_size, num_workers):
        batch = to_device(batch, device)
        feats = _embed_points(method, batch)
        category = lookup[batch["label"].to(device=device, dtype=torch.int64).reshape(-1)]
        logits = head(feats, category).masked_fill(~allowed[category][:, None, :], float("-inf"))
        preds, truth, category = logits.argmax(-1).cpu().numpy(), batch["seg"].cpu().numpy(), category.cpu().numpy()
        for j in range(len(preds)):
            parts = SHAPENETPART_SEG_CLASSES[SHAPENETPART_CLASSES[category[j]]]
            ious[mine[done + j]] = shape_part_ious(preds[j], truth[j], parts)[0]
            cats[mine[done + j]] = category[j]
        done += len(preds)
    if dist.world_size() > 1:
        both = dist.all_reduce_sum(torch.from_numpy(np.concatenate([ious, cats])).to(device)).cpu().numpy()
        ious, cats = both[:n], both[n:]
    return ious, cats.round().astype(np.int64)


def _labels(dataset: Dataset) -> np.ndarray:
    """``(M,)`` category labels of a split: its ``labels`` where it has them, else read item by item."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.int64)
    if isinstance(dataset, Subset):
        return _labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


@register_protocol("part_seg")
class PartSegmentation(Protocol):
    """Part segmentation (ShapeNetPart) by a head trained on frozen per-point features (``Method.embed_points``).

    Each evaluation: every worker embeds its shard of the training shapes the head learns from (the ``fit``
    split, or its ``label_fraction``: :func:`draw_label_fraction`), keeping ``fit_points`` points of
    each (:func:`extract_point_features`); rank 0 trains the head (:func:`train_seg_head`) and hands it to every
    worker; every worker predicts its shard of the ``eval`` split, restricted to each shape's category's parts;
    the per-shape IoUs are summed over the workers, so the figures equal a single process's.

    Reports (PointNet's definitions, :func:`pointtune.metrics.part_seg_metrics`): ``ins_miou`` (mean shape IoU,
    the default objective), ``cls_miou`` (mean over the categories present), ``iou/<category>`` for each
    category present in the scored split, ``seg_fit_shapes`` (training shapes the head learnt from) and
    ``seg_head_loss`` (the head's mean training loss in its last epoch). The array ``shape_iou`` ``(M,)`` holds
    every scored shape's IoU (saved as ``shape_iou.npy`` in checkpoints). Settings: :class:`PartSegConfig`.
    """

    Config = PartSegConfig
    tasks = frozenset({Task.PRETRAIN, Task.CLASSIFICATION})
    splits = ("fit", "eval")
    per_class = False
    fast = {"epochs": 2}  # --fast-dev-run: two head epochs

    def metrics(self, cfg: PartSegConfig) -> tuple[str, ...]:
        """``("ins_miou", "cls_miou", "seg_fit_shapes", "seg_head_loss")`` (``iou/<category>`` besides)."""
        return ("ins_miou", "cls_miou", "seg_fit_shapes", "seg_head_loss")

    def check_output(self, method: Method, batch: dict[str, torch.Tensor], num_classes: int) -> None:
        """The judged items must carry ``seg`` and ``embed_points`` must return ``(1, N, C)``.

        Raises:
            ConfigError: the judged data has no per-point part labels, or the method no per-point features.
            ValueError: ``embed_points`` returned another shape.
        """
        if "seg" not in batch:
            raise ConfigError("protocol.name: the part_seg protocol needs per-point part labels ('seg') and the "
                              "judged data has none; judge ShapeNetPart (data.name or protocol.data.name: "
                              "shapenetpart, shapenetpart_h5; data.variant=split without the official lists)")
        try:
            _embed_points(method, batch)
        except NotImplementedError as err:
            raise ConfigError(f"protocol.name: the part_seg protocol needs per-point features "
                              f"(Method.embed_points): {' '.join(str(err).split())}") from None

    def run(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
            cfg: PartSegConfig, batch_size: int = 64, num_workers: int = 0) -> Result:
        """Train the head on ``splits["fit"]``, score ``splits["eval"]``; see the class docstring.

        Raises:
            ValueError: class names that are not ShapeNetPart categories, items without ``seg``, an empty
                ``fit`` split, or ``embed_points`` output that is not ``(B, N, C)``.
        """
        cat_of_label = category_ids(class_names)
        fit = as_dataset(splits["fit"])
        chosen = draw_label_fraction(_labels(fit), cfg.label_fraction, cfg.seed)
        feats = extract_point_features(method, fit, chosen, device, cfg.fit_points, cfg.seed, batch_size,
                                       num_workers)
        head, loss = None, float("nan")
        if dist.rank() == 0:
            head, loss = train_seg_head(feats, cat_of_label[feats.labels], cfg, device)
        head, loss = _share_head(head, feats.x.shape[2], cfg, loss, device)
        ious, cats = _score(method, head, splits["eval"], cat_of_label, device, batch_size, num_workers)
        scores = part_seg_metrics(ious, cats, SHAPENETPART_CLASSES)
        scores.update(seg_fit_shapes=float(len(chosen)), seg_head_loss=loss)
        return scores, None, {"shape_iou": ious}
