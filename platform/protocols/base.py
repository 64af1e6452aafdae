"""The protocol contract, the registry of protocols by name, and what protocols share: sharded inference over
a split, exact merging across data-parallel workers, and handing rank 0's figures to every rank.

A protocol is judged on labelled *datasets* (anything with ``__len__`` and ``__getitem__`` returning item
dicts: a :class:`~pointtune.data.PointCloudDataset`, a ``Subset``, a list of items), never on loaders: it
builds its own loaders so that each data-parallel worker reads only its shard ``indices[rank::world]`` (no
padding, unlike ``DistributedSampler``, which would count clouds twice) and the merged metrics equal the
single-process ones exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from pointtune import distributed as dist
from pointtune.data import DataConfig
from pointtune.errors import ConfigError
from pointtune.method import Method, Task
from pointtune.registry import Registry

if TYPE_CHECKING:
    from pointtune.config import ExperimentConfig

__all__ = [
    "ProtocolConfig",
    "seed_field",
    "Protocol",
    "Result",
    "register_protocol",
    "protocol_names",
    "get_protocol",
    "chosen_protocol",
    "protocol_config_class",
    "protocols_with_key",
    "default_protocol_name",
    "default_protocols",
    "resolve_protocol",
    "protocol_name",
    "selected_protocol",
    "default_objective",
    "protocol_metrics",
    "to_device",
    "shard_indices",
    "as_dataset",
    "shard_loader",
    "extract_features",
    "share_from_rank0",
    "l2_normalize",
]

# (metrics without split prefix, confusion matrix (K, K) or None, named arrays: e.g. {"spectrum": (D,)})
Result = tuple[dict[str, float], "np.ndarray | None", dict[str, np.ndarray]]


class ProtocolConfig(BaseModel):
    """The keys of the ``protocol.*`` section that every protocol has: which protocol judges the run and on
    which data. Each protocol's settings class (:attr:`Protocol.Config`) subclasses it with its own fields; the
    experiment's ``protocol`` section is validated by the class of the protocol it names
    (:func:`protocol_config_class`), so it holds ``name``, ``data`` and that protocol's keys only.

    Fields:
        name: a registered protocol (``classification``, ``linear_svm``, ``few_shot``, ``part_seg``,
            ``scene_seg``; :func:`protocol_names`); ``None`` is the default of the method's task kind
            (classification -> ``classification``, pretrain -> ``linear_svm``, segmentation -> ``scene_seg``).
        data: a dataset of the protocol's own (a :class:`~pointtune.data.DataConfig`), e.g. pretrain on
            ShapeNetPart, judge on ModelNet40. When set, the protocol fits on its training split, scores its
            validation split every evaluated epoch and its test split at the end; ``None`` uses ``data``.
    """

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(
        None, description="evaluation protocol: classification, linear_svm, few_shot, part_seg, scene_seg (null: "
        "the task's default); its keys below change with it")
    data: DataConfig | None = Field(
        None, description="the protocol's own dataset, e.g. judge on ModelNet40 what pretrained on ShapeNet; keys "
        "as data.* (null: data)")

    @field_validator("name")
    @classmethod
    def _known_protocol(cls, value: str | None) -> str | None:
        if value is not None and value not in protocol_names():
            raise ValueError(f"unknown protocol {value!r}; known protocols: {', '.join(protocol_names())} "
                             "(null: the default of the method's task)")
        return value


def seed_field(draws: str) -> Any:
    """The ``protocol.seed`` field (an integer >= 0, default 0) of a protocol whose figures depend on random
    draws; ``draws`` says which, for its description (``"the episodes"``)."""
    return Field(0, ge=0, description=f"seed of {draws}")


class Protocol:
    """An evaluation protocol: how a trained method is scored on labelled splits.

    Subclasses are registered by name with :func:`register_protocol` and set the class attributes below.
    Instances are stateless (the settings come in an instance of :attr:`Config` per call).

    Attributes:
        Config: the class of its settings, a :class:`ProtocolConfig` subclass with the protocol's own fields
            (the base itself for a protocol without settings); the ``protocol`` section of an experiment that
            this protocol judges is an instance of it.
        name: the registry key (``protocol.name``), set by :func:`register_protocol`.
        tasks: the task kinds it can judge (a feature protocol needs only ``Method.embed``, so it judges
            classification methods' encoders as well as pretrained ones).
        splits: the keys it reads from the ``splits`` mapping: ``eval`` (scored) and ``fit`` (the training
            split a classifier is fitted on), for example.
        mode: whether its metrics are better high (``max``) or low (``min``).
        per_class: its confusion matrix gives ``acc/<class name>`` for every class present.
        own_data: whether ``protocol.data`` (a dataset of its own, other classes) makes sense for it; the
            classification protocol scores the method's own classifier, so it does not.
        fast: settings (keys of :attr:`Config`) that ``pointtune train --fast-dev-run`` puts over the run's,
            so that the protocol runs its code paths in seconds (e.g. fewer head epochs).
    """

    Config: ClassVar[type[ProtocolConfig]] = ProtocolConfig
    name: ClassVar[str] = ""
    tasks: ClassVar[frozenset[Task]] = frozenset()
    splits: ClassVar[tuple[str, ...]] = ("eval",)
    mode: ClassVar[str] = "max"
    per_class: ClassVar[bool] = True
    own_data: ClassVar[bool] = True
    fast: ClassVar[dict[str, Any]] = {}

    def settings(self, cfg: ProtocolConfig | None = None) -> ProtocolConfig:
        """``cfg`` checked to be this protocol's settings (an instance of :attr:`Config`), or the default
        settings ``Config()`` when None.

        Raises:
            TypeError: ``cfg`` is another protocol's settings (e.g. a ``FewShotConfig`` for ``linear_svm``).
        """
        if cfg is None:
            return self.Config()
        if not isinstance(cfg, self.Config):
            raise TypeError(f"the {self.name} protocol reads a {self.Config.__name__}, got a {type(cfg).__name__}")
        return cfg

    def metrics(self, cfg: ProtocolConfig) -> tuple[str, ...]:
        """Every metric name :meth:`run` may return under ``cfg`` (without split prefix, without the
        ``acc/<class>`` that :func:`pointtune.protocols.evaluate` adds); the first is the default objective."""
        raise NotImplementedError

    def objective(self, cfg: ProtocolConfig) -> tuple[str, str]:
        """The default objective of runs judged by this protocol: ``("val/<first metric>", mode)``."""
        return f"val/{self.metrics(cfg)[0]}", self.mode

    def reported(self, cfg: ProtocolConfig, fit_labels: np.ndarray | None, eval_labels: np.ndarray,
                 num_classes: int) -> tuple[tuple[str, ...], list[str]]:
        """The metric names :meth:`run` returns on splits with these labels, and a line for each part of the
        protocol the data cannot fill (e.g. a few-shot setting with more ways than classes); by default all
        of :meth:`metrics` and nothing skipped.

        Args:
            fit_labels: ``(M_fit,)`` labels of the ``fit`` split (None if the protocol reads none).
            eval_labels: ``(M_eval,)`` labels of the scored split.
            num_classes: ``K``.
        """
        return self.metrics(cfg), []

    def check_output(self, method: Method, batch: dict[str, torch.Tensor], num_classes: int) -> None:
        """Preflight: call the method hook this protocol relies on, in eval mode, on a 1-cloud ``batch``.

        Raises:
            ValueError: the output has the wrong shape (the message names the hook and the shapes).
        """
        raise NotImplementedError

    def run(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
            cfg: ProtocolConfig, batch_size: int = 64, num_workers: int = 0) -> Result:
        """Score ``method`` (unwrapped, any mode; left in eval mode) on ``splits``.

        Every data-parallel worker calls it (collectives inside); every worker gets the same result.

        Returns:
            ``(metrics, confusion, arrays)``: metric names without split prefix, the ``(K, K)`` int64 confusion
            matrix behind them (None for protocols without one), and other evaluation arrays by name, saved
            beside the confusion matrix in a checkpoint as ``<name>.npy`` (e.g. ``spectrum``, the ``(D,)``
            normalised feature spectrum of :mod:`pointtune.protocols.spectrum`; ``{}`` for none).
        """
        raise NotImplementedError

    def run_split(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
                  cfg: ProtocolConfig, batch_size: int = 64, num_workers: int = 0, split: str | None = None) -> Result:
        """:meth:`run` on a named split: ``split`` is ``"val"`` (scored at evaluated epochs), ``"test"`` (after
        the last one) or None (unnamed). By default the name changes nothing; a protocol that scores validation
        more cheaply than test (``scene_seg``: whole-scene testing) overrides this. Same returns as :meth:`run`."""
        return self.run(method, splits, device, class_names, cfg, batch_size, num_workers)


_PROTOCOLS: Registry[Protocol] = Registry("protocol", KeyError, key="protocol.name")
_DEFAULT: dict[Task, str] = {}


def default_protocols() -> dict[Task, str]:
    """Task kind -> the name of its default protocol (a copy)."""
    return dict(_DEFAULT)


def register_protocol(name: str, default_for: Sequence[Task] = ()):
    """Class decorator: register an instance of a :class:`Protocol` subclass as ``name``; it becomes the
    default protocol of each task kind in ``default_for`` (``protocol.name: null``).

    Raises:
        ValueError: ``name`` is already registered, or a task kind in ``default_for`` already has a default.
        TypeError: the class's ``Config`` is not a :class:`ProtocolConfig` subclass.
    """

    def wrap(cls: type[Protocol]) -> type[Protocol]:
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, ProtocolConfig)):
            raise TypeError(f"protocol {name!r}: Config must be a ProtocolConfig subclass, got {cls.Config!r}")
        cls.name = name
        _PROTOCOLS.register(name)(cls())
        for task in default_for:
            if task in _DEFAULT:
                raise ValueError(f"task {task.value!r} already defaults to protocol {_DEFAULT[task]!r}")
            if task not in cls.tasks:
                raise ValueError(f"protocol {name!r} cannot be the default of task {task.value!r} it does not judge")
            _DEFAULT[task] = name
        return cls

    return wrap


def protocol_names() -> list[str]:
    """Registered protocol names, sorted."""
    return _PROTOCOLS.names()


def get_protocol(name: str) -> Protocol:
    """The protocol registered as ``name``.

    Raises:
        KeyError: unknown name; the one-line message names ``protocol.name`` and lists the known ones.
    """
    return _PROTOCOLS.get(name)


def chosen_protocol(task: Task | None, name: Any) -> str | None:
    """The protocol a ``protocol`` section ``{name: name}`` of a ``task`` method names: ``name`` when it is a
    registered protocol, the task's default when ``name`` is None; None when neither (an unknown name, one
    that is not a string, a task without a default protocol, ``task`` None)."""
    if name is None:
        return _DEFAULT.get(task)
    return name if isinstance(name, str) and name in protocol_names() else None


def protocol_config_class(task: Task | None, name: Any) -> type[ProtocolConfig]:
    """The class that validates the ``protocol`` section ``{name: name, ...}`` of a ``task`` method: the
    :attr:`Protocol.Config` of :func:`chosen_protocol`, or the base :class:`ProtocolConfig` when it names none
    (validation then reports an unknown ``protocol.name`` at that key, and :func:`resolve_protocol` a task
    without a protocol)."""
    chosen = chosen_protocol(task, name)
    return get_protocol(chosen).Config if chosen is not None else ProtocolConfig


def protocols_with_key(key: str) -> list[str]:
    """The registered protocols whose settings (:attr:`Protocol.Config`) have the field ``key``, sorted
    (``"ways"`` -> ``["few_shot"]``; ``"name"`` -> all)."""
    return [name for name in protocol_names() if key in get_protocol(name).Config.model_fields]


def default_protocol_name(task: Task) -> str:
    """The protocol that judges ``task`` methods when ``protocol.name`` is null.

    Raises:
        ConfigError: no protocol is the default of ``task`` (e.g. segmentation, until one is registered).
    """
    if task not in _DEFAULT:
        raise ConfigError(f"protocol.name: no evaluation protocol for task {task.value!r} yet; "
                          f"registered: {', '.join(f'{n} ({_tasks(n)})' for n in protocol_names())}")
    return _DEFAULT[task]


def _tasks(name: str) -> str:
    return "/".join(sorted(t.value for t in get_protocol(name).tasks))


def resolve_protocol(task: Task, name: str | None = None, own_data: bool = False) -> Protocol:
    """The protocol ``name`` (None: the task's default), checked to be able to judge a ``task`` method.

    Args:
        task: the method's task kind.
        name: ``protocol.name``.
        own_data: ``protocol.data`` is set.

    Raises:
        ConfigError: unknown name, a protocol that cannot judge ``task`` (e.g. ``classification`` for a
            pretrain method, which has no classifier), ``protocol.data`` with a protocol that scores the
            method's own classifier, or no protocol for ``task``; one line naming the key.
    """
    name = name or default_protocol_name(task)
    try:
        protocol = get_protocol(name)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    if task not in protocol.tasks:
        fits = [n for n in protocol_names() if task in get_protocol(n).tasks]
        raise ConfigError(f"protocol.name: the {name} protocol judges {_tasks(name)} methods, not {task.value} "
                          f"ones; use {' or '.join(fits) or 'none yet'}")
    if own_data and not protocol.own_data:
        raise ConfigError(f"protocol.data: the {name} protocol scores the method's own classifier on the training "
                          "data's classes; a dataset of its own needs a feature protocol (linear_svm, few_shot)")
    return protocol


def selected_protocol(exp: ExperimentConfig) -> Protocol:
    """The protocol judging ``exp``: ``protocol.name`` or the default of the method's task.

    Raises:
        ConfigError: see :func:`resolve_protocol`.
    """
    return resolve_protocol(exp.method_cls.task, exp.protocol.name, exp.protocol.data is not None)


def protocol_name(exp: ExperimentConfig) -> str:
    """The name of the protocol judging ``exp`` (what a sweep's parent run records as ``protocol``).

    Raises:
        ConfigError: see :func:`resolve_protocol`.
    """
    return selected_protocol(exp).name


def default_objective(exp: ExperimentConfig) -> tuple[str, str]:
    """``(metric, mode)`` that selects models of ``exp`` unless a search space names another, e.g.
    ``("val/svm_acc", "max")`` for linear SVM, ``("val/fewshot/5way10shot", "max")`` for few-shot.

    Raises:
        ConfigError: see :func:`resolve_protocol`.
    """
    return selected_protocol(exp).objective(exp.protocol)


def protocol_metrics(task: Task, cfg: ProtocolConfig | None = None) -> tuple[str, ...]:
    """Metric names (without split prefix, besides ``acc/<class>``) the protocol selected by ``cfg`` (None: the
    task's default protocol with its default settings) for a ``task`` method may report.

    Raises:
        ConfigError: see :func:`resolve_protocol`.
        TypeError: ``cfg`` is not the selected protocol's settings (:meth:`Protocol.settings`).
    """
    protocol = resolve_protocol(task, cfg.name if cfg is not None else None)
    return protocol.metrics(protocol.settings(cfg))


# ---- sharded inference -------------------------------------------------------------------------------------

def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to ``device`` (non-blocking); other values are kept."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def shard_indices(n: int, rank: int, world: int) -> range:
    """Indices of a split of ``n`` items that worker ``rank`` of ``world`` evaluates: ``rank, rank + world,
    ...`` (every item exactly once over the workers, no padding; shards differ in size by at most one)."""
    return range(rank, n, world)


def _unshard_order(n: int, world: int) -> np.ndarray:
    """Dataset index of each row of the rank-order concatenation of the shards of :func:`shard_indices`."""
    return np.concatenate([np.arange(r, n, world) for r in range(world)]) if n else np.zeros(0, dtype=np.int64)


def as_dataset(split: Dataset | DataLoader) -> Dataset:
    """The dataset behind ``split``: a ``DataLoader``'s ``dataset`` (its batching is not used; protocols shard
    and batch themselves), anything else as it is."""
    return split.dataset if isinstance(split, DataLoader) else split


def shard_loader(dataset: Dataset, batch_size: int = 64, num_workers: int = 0) -> DataLoader:
    """A loader over this worker's shard of ``dataset`` (:func:`shard_indices`; the whole of it in a single
    process), in index order, no shuffling, no padding, the last batch possibly smaller."""
    dataset = as_dataset(dataset)
    n = len(dataset)
    indices = shard_indices(n, dist.rank(), dist.world_size())
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
                      collate_fn=default_collate)


@torch.no_grad()
def extract_features(
    method: Method, dataset: Dataset, device: torch.device, batch_size: int = 64, num_workers: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen global features of a whole split, each worker embedding only its shard.

    ``method.embed(batch)`` (eval mode; the caller's mode is restored) on this worker's shard, then the
    shards are gathered from every worker (:func:`pointtune.distributed.all_gather_rows`) and put back in
    dataset order, so every worker holds the same arrays as a single process would.

    Args:
        method: the unwrapped method; ``embed`` returns ``(B, D)`` for a batch dict.
        dataset: labelled items (``label`` 0-d int64).

    Returns:
        ``(features (M, D) float32, labels (M,) int64)``, ``M = len(dataset)``.

    Raises:
        ValueError: ``embed`` returned something other than ``(B, D)``.
    """
    dataset = as_dataset(dataset)
    was_training = method.training
    method.eval()
    try:
        feats, labels = [], []
        for batch in shard_loader(dataset, batch_size, num_workers):
            batch = to_device(batch, device)
            emb = method.embed(batch)
            if emb.dim() != 2 or emb.shape[0] != batch["label"].shape[0]:
                raise ValueError(f"embed returned shape {tuple(emb.shape)} for a batch of "
                                 f"{batch['label'].shape[0]} clouds; expected (B, D)")
            feats.append(emb.float())
            labels.append(batch["label"].to(device=emb.device, dtype=torch.int64))
        if not feats:  # this worker's shard is empty (fewer clouds than workers): D from one probe cloud
            if len(dataset) == 0:
                return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
            probe = method.embed(to_device(default_collate([dataset[0]]), device)).float()
            feats, labels = [probe[:0]], [torch.zeros(0, dtype=torch.int64, device=probe.device)]
        x, y = torch.cat(feats), torch.cat(labels)
    finally:
        method.train(was_training)
    world = dist.world_size()
    if world > 1:
        x, _ = dist.all_gather_rows(x.contiguous())
        y, _ = dist.all_gather_rows(y.contiguous())
        order = torch.from_numpy(_unshard_order(len(dataset), world))
        x_sorted, y_sorted = torch.empty_like(x.cpu()), torch.empty_like(y.cpu())
        x_sorted[order], y_sorted[order] = x.cpu(), y.cpu()
        x, y = x_sorted, y_sorted
    return x.cpu().numpy(), y.cpu().numpy()


def share_from_rank0(values: np.ndarray | None, size: int, device: torch.device) -> np.ndarray:
    """Rank 0's ``values`` on every worker: the float64 sum over workers of a vector that is ``values`` on
    rank 0 and zeros elsewhere (:func:`pointtune.distributed.all_reduce_sum`; ``x + 0`` is exact, NaN stays
    NaN). In a single process, ``values`` itself.

    Args:
        values: ``(size,)`` on rank 0 (ignored elsewhere; may be None there).
        size: the vector's length, known to every worker.
        device: where the collective runs (the CUDA device under NCCL).

    Returns:
        ``(size,)`` float64.
    """
    if dist.rank() == 0:
        vec = torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(size))
    else:
        vec = torch.zeros(size, dtype=torch.float64)
    if dist.world_size() == 1:
        return vec.numpy()
    return dist.all_reduce_sum(vec.to(device)).cpu().numpy()


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` ``(M, D)`` scaled to unit L2 norm (zero rows stay zero), float64 copy."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
