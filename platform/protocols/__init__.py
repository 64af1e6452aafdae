"""``pointtune.protocols``: evaluation protocols, named and shared; no protocol knows a method's internals.

A protocol is chosen by ``protocol.name`` (null: the default of the method's task kind) and may read a
dataset of its own (``protocol.data``). Registered here:

============== ======================== ================================================ ==========================
name           judges                   reports (``val/<name>``, ``test/<name>``)        default of
============== ======================== ================================================ ==========================
classification classification methods   ``OA``, ``mAcc``, ``F1``, ``acc/<class>``        classification
linear_svm     any method with ``embed`` ``svm_acc``, ``svm_mAcc``, ``svm_F1``, ``svm_C``, pretrain
                                        ``svm_converged``, ``feature_rank``, ``acc/<class>``
few_shot       any method with ``embed`` ``fewshot/<N>way<K>shot`` and ``..._std``,
                                        ``feature_rank``
part_seg       any method with          ``ins_miou``, ``cls_miou``, ``iou/<category>``,
               ``embed_points``         ``seg_fit_shapes``, ``seg_head_loss``
               (ShapeNetPart)
scene_seg      segmentation methods     ``mIoU``, ``OA``, ``mAcc``, ``iou/<class>``      segmentation
               (indoor scenes)
============== ======================== ================================================ ==========================

``part_seg`` trains a 1fc / 5fc head on frozen per-point features (:mod:`pointtune.protocols.part_seg`) and
scores PointNet's mIoU; it needs data with per-point part labels (``seg``: ShapeNetPart), the run's own or
``protocol.data``.

``scene_seg`` (:mod:`pointtune.protocols.scene_seg`) scores a segmentation method's ``predict`` on indoor scenes
(:class:`~pointtune.data.scene_dataset.SceneDataset`): a confusion matrix over labelled points summed over the
workers; the test split on every original point (votes over covering crops, ``protocol.whole``), the
validation split more cheaply (``protocol.val``); and the points behind the best checkpoint's renders
(:func:`~pointtune.protocols.scene_seg.render_scene`).

Each protocol declares its settings, a :class:`ProtocolConfig` subclass (``Protocol.Config``:
:class:`LinearSVMConfig`, :class:`FewShotConfig`, :class:`PartSegConfig`, :class:`SceneSegConfig`; the base for
``classification``). The experiment's ``protocol`` section is ``name``, ``data`` and the named protocol's own
keys (``name: null``: the task's default protocol), validated by that class (:func:`protocol_config_class`): a
union tagged by ``name`` that stays open to protocols registered later.

Other protocols plug in the same way: a :class:`Protocol` subclass, with its ``Config``, registered with
:func:`register_protocol`; the training loop only calls :func:`evaluate` on the splits of
:func:`build_eval_splits`.

Public API::

    evaluate(method, splits, device, class_names, cfg, batch_size=, num_workers=, return_arrays=, split=)
    build_eval_splits(exp, data=None) -> EvalSplits(fit, val, test, class_names, source)
    protocol_name(exp), default_objective(exp), selected_protocol(exp)             per experiment
    protocol_metrics(task, cfg), resolve_protocol(task, name), get_protocol(name), protocol_names()
    default_protocol_name(task), default_protocols()
    Protocol, register_protocol                                                     the contract
    ProtocolConfig, seed_field, protocol_config_class(task, name), chosen_protocol, protocols_with_key
    LinearSVMConfig, FewShotConfig, PartSegConfig, SceneSegConfig                  each protocol's settings
    extract_features, shard_indices, shard_loader, share_from_rank0, to_device, l2_normalize
    fit_linear_svm, SvmFit, cv_splits; plan_settings, draw_episodes, Episode, setting_name
    PartSegHead, draw_label_fraction, extract_point_features, train_seg_head          part segmentation
    feature_spectrum, effective_rank, log_spectrum, plot_spectrum                   feature collapse (DCGLR 5b)
    SceneSegmentation, render_scene, render_checkpoint_scenes, class_colors         scene segmentation

:mod:`pointtune.protocols.robustness` (imported on demand, ``pointtune robustness``) runs a run's protocol on
clean, jittered and subsampled clouds (SCL Figs. 3-4, 8): ``robustness_table``, ``write_csv``, ``plot_robustness``.

``feature_rank`` (feature protocols) is the effective rank of the raw training-split features; their normalised
eigenvalue spectrum is the ``spectrum`` array (``evaluate(..., return_arrays=True)``), which the training loop
saves beside ``confusion.npy`` as ``spectrum.npy`` in each checkpoint (:mod:`pointtune.protocols.spectrum`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from pointtune.method import Method
from pointtune.metrics import per_class_accuracy
from pointtune.protocols.base import (
    Protocol,
    ProtocolConfig,
    Result,
    as_dataset,
    chosen_protocol,
    default_objective,
    default_protocol_name,
    default_protocols,
    extract_features,
    get_protocol,
    l2_normalize,
    protocol_config_class,
    protocol_metrics,
    protocol_name,
    protocol_names,
    protocols_with_key,
    register_protocol,
    resolve_protocol,
    seed_field,
    selected_protocol,
    shard_indices,
    shard_loader,
    share_from_rank0,
    to_device,
)
from pointtune.protocols.classification import Classification
from pointtune.protocols.linear_svm import LinearSVM, LinearSVMConfig, SvmFit, cv_splits, fit_linear_svm
from pointtune.protocols.few_shot import Episode, FewShot, FewShotConfig, draw_episodes, plan_settings, setting_name
from pointtune.protocols.part_seg import (
    PartSegConfig,
    PartSegHead,
    PartSegmentation,
    draw_label_fraction,
    extract_point_features,
    train_seg_head,
)
from pointtune.protocols.scene_seg import (
    SceneSegConfig,
    SceneSegmentation,
    class_colors,
    render_checkpoint_scenes,
    render_scene,
)
from pointtune.protocols.spectrum import effective_rank, feature_spectrum, log_spectrum, plot_spectrum

if TYPE_CHECKING:
    from pointtune.config import ExperimentConfig
    from pointtune.data import DatasetBundle

__all__ = [
    "evaluate", "build_eval_splits", "EvalSplits",
    "Protocol", "Result", "register_protocol", "protocol_names", "get_protocol", "resolve_protocol",
    "selected_protocol", "protocol_name", "default_objective", "protocol_metrics", "default_protocol_name",
    "default_protocols",
    "ProtocolConfig", "seed_field", "protocol_config_class", "chosen_protocol", "protocols_with_key",
    "LinearSVMConfig", "FewShotConfig", "PartSegConfig", "SceneSegConfig",
    "extract_features", "shard_indices", "shard_loader", "share_from_rank0", "to_device", "l2_normalize",
    "as_dataset",
    "Classification", "LinearSVM", "FewShot", "PartSegmentation",
    "PartSegHead", "draw_label_fraction", "extract_point_features", "train_seg_head",
    "fit_linear_svm", "SvmFit", "cv_splits", "plan_settings", "draw_episodes", "Episode", "setting_name",
    "feature_spectrum", "effective_rank", "log_spectrum", "plot_spectrum",
    "SceneSegmentation", "render_scene", "render_checkpoint_scenes", "class_colors",
]


@dataclass
class EvalSplits:
    """The labelled splits a run is judged on.

    Attributes:
        fit: the training clouds with evaluation transforms (what feature protocols fit a classifier on).
        val: the validation split, scored at evaluated epochs (model selection; never the test split).
        test: the official test split, scored after the last epoch (None if the dataset has none).
        class_names: label order of all three.
        source: ``"data"`` (the training dataset's splits) or ``"protocol.data"`` (the protocol's own).
    """

    fit: Dataset
    val: Dataset
    test: Dataset | None
    class_names: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        """``len(class_names)``."""
        return len(self.class_names)

    def limited(self, count: int) -> EvalSplits:
        """Each split cut to ``count`` items spread over the classes (``limited`` of the point-cloud and scene
        datasets; ``train.limit_batches``).

        Raises:
            ValueError: ``count < 1``.
        """
        return EvalSplits(self.fit.limited(count), self.val.limited(count),
                          None if self.test is None else self.test.limited(count), self.class_names, self.source)


def build_eval_splits(exp: ExperimentConfig, data: DatasetBundle | None = None) -> EvalSplits:
    """The splits ``exp`` is judged on: those of ``protocol.data`` when set (fit = its training split, val =
    its validation split, test = its test split), else those of ``data`` (``data`` given, or built from
    ``exp.data``).

    Raises:
        DatasetError: ``protocol.data`` cannot be built; the one-line message names ``protocol.data.<key>``
            (see :func:`pointtune.data.build_datasets`).
    """
    from pointtune.data import DatasetError, build_datasets

    if exp.protocol.data is None:
        data = data if data is not None else build_datasets(exp.data)
        return EvalSplits(data.train_eval, data.val, data.test, list(data.class_names), "data")
    try:
        own = build_datasets(exp.protocol.data)
    except DatasetError as err:
        msg = str(err)
        raise DatasetError(f"protocol.{msg}" if msg.startswith("data") else f"protocol.data: {msg}") from None
    return EvalSplits(own.train_eval, own.val, own.test, list(own.class_names), "protocol.data")


def evaluate(
    method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
    cfg: ProtocolConfig | None = None, *, batch_size: int = 64, num_workers: int = 0, return_arrays: bool = False,
    split: str | None = None,
) -> tuple[dict[str, float], np.ndarray | None] | tuple[dict[str, float], np.ndarray | None, dict[str, np.ndarray]]:
    """Score ``method`` with the protocol ``cfg.name`` (None: the default of ``method.task``).

    Every data-parallel worker must call it (each evaluates only its shard; the merged result is exact and
    the same on every worker). The method's training mode is restored afterwards.

    Args:
        method: the unwrapped method (not its DDP wrapper).
        splits: ``eval`` (the split scored) and, for feature protocols, ``fit`` (the training split, no
            augmentation): datasets of item dicts (``points`` ``(N, 3)``, ``label`` 0-d int64, ...), or
            loaders over them (their datasets are used).
        device: where the method runs.
        class_names: names in label order; ``K = len(class_names)``.
        cfg: the ``protocol`` section, the selected protocol's settings (an instance of its ``Config``); None:
            the task's default protocol with its default settings.
        batch_size, num_workers: of the evaluation loaders.
        return_arrays: also return the protocol's other arrays (a third element).
        split: which split ``splits["eval"]`` is: ``"val"``, ``"test"`` or None (unnamed), for protocols that
            score them differently (:meth:`Protocol.run_split`; ``scene_seg`` scores validation more cheaply).

    Returns:
        ``(metrics, confusion)``: the protocol's metrics without split prefix, plus ``acc/<class name>`` for
        every class present when the protocol has a confusion matrix; the ``(K, K)`` confusion matrix or None.
        With ``return_arrays``, ``(metrics, confusion, arrays)``: ``arrays`` maps names to the protocol's other
        arrays, e.g. ``spectrum`` ``(D,)`` for the feature protocols (see :meth:`Protocol.run`), else ``{}``.

    Raises:
        ConfigError: the protocol is unknown or cannot judge ``method.task`` (:func:`resolve_protocol`).
        TypeError: ``cfg`` is another protocol's settings (:meth:`Protocol.settings`).
        KeyError: a split the protocol reads is missing from ``splits``.
        ValueError: the ``eval`` split is empty.
    """
    protocol = resolve_protocol(method.task, cfg.name if cfg is not None else None,
                                own_data=cfg is not None and cfg.data is not None)
    cfg = protocol.settings(cfg)
    missing = [s for s in protocol.splits if s not in splits]
    if missing:
        raise KeyError(f"the {protocol.name} protocol reads split(s) {', '.join(missing)}; got {', '.join(splits)}")
    datasets = {key: as_dataset(split) for key, split in splits.items()}
    if len(datasets["eval"]) == 0:
        raise ValueError(f"the {protocol.name} protocol was given an empty eval split")
    was_training = method.training
    try:
        scores, cm, arrays = protocol.run_split(method, datasets, device, list(class_names), cfg, batch_size,
                                                num_workers, split)
    finally:
        method.train(was_training)
    if cm is not None and protocol.per_class:
        per_class = per_class_accuracy(cm)
        scores.update({f"acc/{name}": float(acc) for name, acc in zip(class_names, per_class) if not np.isnan(acc)})
    return (scores, cm, arrays) if return_arrays else (scores, cm)
