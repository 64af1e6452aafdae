"""Evaluation protocols, chosen by the method's task kind; no protocol knows a method's internals.

Each protocol takes the unwrapped ``Method``, a dict of labelled data loaders (``eval``: the split being
scored; ``fit``: the training split, for protocols that fit a classifier on features), a device and the
number of classes, and returns
``(metrics, confusion)``: metric names without split prefix (``OA``, ``mAcc``, ...) and the ``(K, K)``
confusion matrix that produced them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable

import numpy as np
import torch

from pointtune.method import Method, Task
from pointtune.metrics import classification_metrics, confusion_matrix, per_class_accuracy

Protocol = Callable[..., tuple[dict[str, float], np.ndarray]]
_PROTOCOLS: dict[Task, Protocol] = {}

# The metric each task kind is selected by, unless a search space names another: (name, mode).
DEFAULT_OBJECTIVE: dict[Task, tuple[str, str]] = {}
# The protocol's name, recorded on every sweep's parent run (which protocol judged the trials).
PROTOCOL_NAME: dict[Task, str] = {}
# The metric names each task's protocol returns (without split prefix). :func:`evaluate` adds
# ``acc/<class name>`` for every class present; the training loop logs them as ``val/<name>`` (and
# ``test/<name>`` after the last epoch). Search spaces' objectives are checked against these.
PROTOCOL_METRICS: dict[Task, tuple[str, ...]] = {}


def register_protocol(task: Task, name: str, objective: tuple[str, str], metrics: tuple[str, ...]):
    """Decorator: ``fn`` (called ``name``) evaluates every method of ``task``; ``objective`` is that task's
    default metric (``(name with split prefix, mode)``); ``metrics`` are the names ``fn`` returns (without
    prefix, besides the ``acc/<class>`` that :func:`evaluate` adds)."""

    def wrap(fn: Protocol) -> Protocol:
        _PROTOCOLS[task] = fn
        DEFAULT_OBJECTIVE[task] = objective
        PROTOCOL_NAME[task] = name
        PROTOCOL_METRICS[task] = tuple(metrics)
        return fn

    return wrap


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Move every tensor of a batch dict to ``device`` (non-blocking)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@register_protocol(Task.CLASSIFICATION, "classification", ("val/OA", "max"), metrics=("OA", "mAcc", "F1"))
def evaluate_classification(
    method: Method, loaders: dict[str, Iterable], device: torch.device, num_classes: int, **_: object
) -> tuple[dict[str, float], np.ndarray]:
    """OA, mAcc and macro F1 of ``method.predict`` (argmax of ``(B, K)`` logits) on ``loaders["eval"]``."""
    was_training = method.training
    method.eval()
    labels, preds = [], []
    with torch.no_grad():
        for batch in loaders["eval"]:
            batch = to_device(batch, device)
            preds.append(method.predict(batch).argmax(-1).cpu())
            labels.append(batch["label"].cpu())
    method.train(was_training)
    cm = confusion_matrix(torch.cat(labels).numpy(), torch.cat(preds).numpy(), num_classes)
    return classification_metrics(cm), cm


def extract_features(method: Method, loader: Iterable, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Frozen global features ``(M, D)`` float32 from ``method.embed`` and labels ``(M,)`` of a loader."""
    was_training = method.training
    method.eval()
    feats, labels = [], []
    with torch.no_grad():
        for batch in loader:
            feats.append(method.embed(batch["points"].to(device)).float().cpu())
            labels.append(batch["label"])
    method.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


@register_protocol(Task.PRETRAIN, "linear_svm", ("val/svm_acc", "max"), metrics=("svm_acc", "svm_mAcc", "svm_F1"))
def evaluate_linear_svm(
    method: Method, loaders: dict[str, Iterable], device: torch.device, num_classes: int,
    svm_c: float = 1.0, svm_max_iter: int = 5000, **_: object,
) -> tuple[dict[str, float], np.ndarray]:
    """Linear-SVM protocol for self-supervised encoders (OcCo / Point-MAE; ConClu §3.3).

    Fits ``sklearn.svm.LinearSVC(C=svm_c)`` on frozen features of ``loaders["fit"]`` (the training split,
    no augmentation) and scores ``loaders["eval"]`` (the validation split inside a sweep, the test split in
    the final report). Returns ``svm_acc`` (OA), ``svm_mAcc`` and ``svm_F1`` with the confusion matrix.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    x_fit, y_fit = extract_features(method, loaders["fit"], device)
    x_eval, y_eval = extract_features(method, loaders["eval"], device)
    svm = LinearSVC(C=svm_c, max_iter=svm_max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm.fit(x_fit, y_fit)
    cm = confusion_matrix(y_eval, svm.predict(x_eval), num_classes)
    return {f"svm_{k}" if k != "OA" else "svm_acc": v for k, v in classification_metrics(cm).items()}, cm


def evaluate(
    method: Method, loaders: dict[str, Iterable], device: torch.device, class_names: list[str], **options: object
) -> tuple[dict[str, float], np.ndarray]:
    """Run the protocol registered for ``method.task``; ``options`` are protocol settings (e.g. SVM ``C``).

    Returns the protocol's metrics plus the accuracy of every class present, as ``acc/<class name>``, and
    the confusion matrix.

    Raises:
        NotImplementedError: no protocol is registered for the task kind.
    """
    if method.task not in _PROTOCOLS:
        raise NotImplementedError(f"no evaluation protocol for task {method.task.value!r}")
    scores, cm = _PROTOCOLS[method.task](method, loaders, device, len(class_names), **options)
    per_class = per_class_accuracy(cm)
    scores.update({f"acc/{name}": float(acc) for name, acc in zip(class_names, per_class) if not np.isnan(acc)})
    return scores, cm
