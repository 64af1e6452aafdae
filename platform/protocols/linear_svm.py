"""The ``linear_svm`` protocol: a linear SVM on frozen global features, the standard judge of self-supervised
point-cloud encoders (Sauder & Sievers' Jigsaw3D, OcCo, ConClu §3.3, SCL §4.4, DCGLR §4.4, Point-MAE).

Following the specs' recommendations (scl.md §4.4, dcglr.md §4.4, conclu.md A16): features are L2-normalised,
``sklearn.svm.LinearSVC`` is fitted on the training split only, and its C is chosen by stratified
cross-validation on the training features when ``protocol.c`` lists several values (:class:`LinearSVMConfig`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from torch.utils.data import Dataset

from pointtune import distributed as dist
from pointtune.method import Method, Task
from pointtune.metrics import classification_metrics, confusion_matrix
from pointtune.protocols.base import (
    Protocol,
    ProtocolConfig,
    Result,
    extract_features,
    l2_normalize,
    register_protocol,
    seed_field,
    share_from_rank0,
)
from pointtune.protocols.spectrum import shared_feature_spectrum

__all__ = ["LinearSVM", "LinearSVMConfig", "SvmFit", "fit_linear_svm", "cv_splits", "pool_size", "max_iter_field"]


def max_iter_field(fits: str) -> Any:
    """The ``protocol.max_iter`` field (an integer >= 100, default 5000): LinearSVC's ``max_iter`` of ``fits``,
    for its description (``"every episode's fit"``)."""
    return Field(5000, ge=100, description=f"LinearSVC max_iter of {fits}")


class LinearSVMConfig(ProtocolConfig):
    """Settings of the ``linear_svm`` protocol (``protocol.*`` with ``protocol.name: linear_svm``, the default of
    pretrain methods), besides ``name`` and ``data`` (:class:`~pointtune.protocols.base.ProtocolConfig`).

    Fields:
        c: LinearSVC's C, one value, or a list chosen from by stratified ``folds``-fold cross-validation on the
            (L2-normalised) training features (SCL / DCGLR specs' recommendation).
        folds: folds of that cross-validation (fewer when the training split has fewer clouds per class).
        max_iter: LinearSVC's ``max_iter``; whether the final fit converged is reported (``svm_converged``).
        seed: seed of the cross-validation folds.
    """

    c: float | list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0],
        description="LinearSVC's C, or a list chosen from by cross-validation on the training features")
    folds: int = Field(5, ge=2, description="folds of the cross-validation that chooses C")
    max_iter: int = max_iter_field("the SVM fits (whether the final one converged is reported as svm_converged)")
    seed: int = seed_field("the cross-validation folds that choose C")

    @field_validator("c")
    @classmethod
    def _positive_cs(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("give one C or a non-empty list of Cs, e.g. [0.01, 0.1, 1, 10]")
        if any(not c > 0 for c in values):
            raise ValueError("every C must be > 0")
        if isinstance(value, list) and len(set(values)) < len(values):
            raise ValueError("a C is listed more than once")
        return value


@dataclass
class SvmFit:
    """A fitted linear SVM and how it was chosen.

    Attributes:
        model: the ``LinearSVC`` fitted on all the training features with ``C``.
        C: the C it was fitted with (the cross-validated choice, or the single ``protocol.c``).
        converged: False when that final fit raised sklearn's ``ConvergenceWarning`` (``max_iter`` reached).
        cv_scores: mean cross-validation accuracy per candidate C (empty when no cross-validation ran).
    """

    model: object
    C: float
    converged: bool
    cv_scores: dict[float, float] = field(default_factory=dict)


def pool_size(tasks: int) -> int:
    """Threads for ``tasks`` independent sklearn fits: at most the torch threads this worker was given
    (``cpus_per_worker``; liblinear releases the GIL while it solves), at least 1."""
    return max(1, min(tasks, torch.get_num_threads()))


def cv_splits(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, shuffled (``seed``) ``k``-fold splits of labels ``y`` ``(M,)`` for choosing C, with
    ``k = min(folds, clouds of the largest class)``; classes smaller than ``k`` spread over fewer folds.
    Empty when ``k < 2`` or a training fold would hold a single class (nothing to cross-validate)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    counts = np.bincount(y) if y.size else np.zeros(0, dtype=np.int64)
    k = int(min(folds, counts.max(initial=0)))
    if k < 2 or (counts > 0).sum() < 2:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only n members"
        splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))
    if any(len(np.unique(y[train])) < 2 for train, _ in splits):
        return []
    return splits


def _svc(c: float, max_iter: int):
    from sklearn.svm import LinearSVC

    return LinearSVC(C=c, max_iter=max_iter, random_state=0)


def fit_linear_svm(x: np.ndarray, y: np.ndarray, cs: float | Sequence[float], folds: int = 5,
                   max_iter: int = 5000, seed: int = 0) -> SvmFit:
    """Fit ``LinearSVC`` on ``x`` ``(M, D)`` / ``y`` ``(M,)``, C chosen by cross-validation when ``cs`` lists
    several values.

    Cross-validation (:func:`cv_splits`) scores every C on every fold, in a thread pool
    (:func:`pool_size`); the C with the best mean accuracy wins, the smallest C among ties (the strongest
    regularisation). When the data admits no cross-validation (a class per fold is impossible), the
    candidate closest to 1 (LinearSVC's default, in log scale) is used. ``ConvergenceWarning`` of the
    cross-validation fits is ignored; that of the final fit sets ``converged`` False.

    Raises:
        ValueError: fewer than 2 classes in ``y`` (sklearn's message).
    """
    from sklearn.exceptions import ConvergenceWarning

    grid = sorted({float(c) for c in cs}) if isinstance(cs, Sequence) else [float(cs)]
    scores: dict[float, float] = {}
    if len(grid) > 1:
        splits = cv_splits(y, folds, seed)
        if splits:
            jobs = [(c, tr, te) for c in grid for tr, te in splits]

            def score(job):
                c, tr, te = job
                return float((_svc(c, max_iter).fit(x[tr], y[tr]).predict(x[te]) == y[te]).mean())

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                with ThreadPoolExecutor(pool_size(len(jobs))) as pool:
                    accs = list(pool.map(score, jobs))
            per_c = np.asarray(accs).reshape(len(grid), len(splits)).mean(1)
            scores = dict(zip(grid, per_c.tolist()))
            chosen = grid[int(np.argmax(per_c))]
        else:
            chosen = min(grid, key=lambda c: (abs(math.log(c)), c))
    else:
        chosen = grid[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = _svc(chosen, max_iter).fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return SvmFit(model, chosen, converged, scores)


@register_protocol("linear_svm", default_for=[Task.PRETRAIN])
class LinearSVM(Protocol):
    """Linear SVM on frozen, L2-normalised global features (``Method.embed``).

    Every worker embeds its shard of the ``fit`` (training, no augmentation) and ``eval`` splits; the
    features are gathered; rank 0 alone fits :func:`fit_linear_svm` and predicts ``eval``; the confusion
    matrix, the chosen C and the convergence flag reach every worker through
    :func:`~pointtune.protocols.base.share_from_rank0`. Reports ``svm_acc`` (OA), ``svm_mAcc``, ``svm_F1``,
    ``svm_C`` (the C used) and ``svm_converged`` (1 or 0), ``feature_rank`` (the effective rank of the raw
    ``fit`` features, :func:`~pointtune.protocols.spectrum.shared_feature_spectrum`: the feature-collapse
    diagnostic of DCGLR Fig. 5b, whose normalised spectrum is returned as the array ``spectrum``), and
    ``acc/<class>``. Settings: :class:`LinearSVMConfig`.
    """

    Config = LinearSVMConfig
    tasks = frozenset({Task.PRETRAIN, Task.CLASSIFICATION})
    splits = ("fit", "eval")

    def metrics(self, cfg: LinearSVMConfig) -> tuple[str, ...]:
        """``("svm_acc", "svm_mAcc", "svm_F1", "svm_C", "svm_converged", "feature_rank")``."""
        return ("svm_acc", "svm_mAcc", "svm_F1", "svm_C", "svm_converged", "feature_rank")

    def check_output(self, method: Method, batch: dict[str, torch.Tensor], num_classes: int) -> None:
        """``embed`` must return ``(1, D)`` features for a 1-cloud batch.

        Raises:
            ValueError: another shape.
        """
        emb = method.embed(batch)
        if emb.dim() != 2 or emb.shape[0] != 1:
            raise ValueError(f"embed returned shape {tuple(emb.shape)}, expected (1, D)")

    def run(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
            cfg: LinearSVMConfig, batch_size: int = 64, num_workers: int = 0) -> Result:
        """Fit on ``splits["fit"]``, score ``splits["eval"]``; see the class docstring.

        Raises:
            ValueError: the ``fit`` split holds fewer than 2 classes.
        """
        k = len(class_names)
        x_fit, y_fit = extract_features(method, splits["fit"], device, batch_size, num_workers)
        x_eval, y_eval = extract_features(method, splits["eval"], device, batch_size, num_workers)
        if len(np.unique(y_fit)) < 2:
            raise ValueError(f"linear_svm: the fit split holds {len(np.unique(y_fit))} class(es); an SVM needs 2")
        size = k * k + 2
        values = None
        if dist.rank() == 0:
            fit = fit_linear_svm(l2_normalize(x_fit), y_fit, cfg.c, cfg.folds, cfg.max_iter, cfg.seed)
            cm = confusion_matrix(y_eval, fit.model.predict(l2_normalize(x_eval)), k)
            values = np.concatenate([cm.ravel().astype(np.float64), [fit.C, float(fit.converged)]])
        shared = share_from_rank0(values, size, device)
        cm = shared[: k * k].reshape(k, k).round().astype(np.int64)
        scores = {("svm_acc" if name == "OA" else f"svm_{name}"): v for name, v in classification_metrics(cm).items()}
        scores.update(svm_C=float(shared[-2]), svm_converged=float(shared[-1]))
        scores["feature_rank"], spectrum = shared_feature_spectrum(x_fit, device)
        return scores, cm, {"spectrum": spectrum}
