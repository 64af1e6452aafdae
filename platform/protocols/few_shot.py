"""The ``few_shot`` protocol: N-way K-shot classification episodes on frozen features.

The episode design is Point-MAE's (Pang et al. 2022, §4.2, after Point-BERT / Sharma & Kaul 2020): for each
N in ``protocol.ways`` and K in ``protocol.shots``, ``protocol.folds`` episodes, each drawing N classes, K
support clouds per class from the training (``fit``) split and ``protocol.queries`` (20) query clouds per
class from the scored split; accuracy is reported as mean and standard deviation over the episodes. As in
the frozen-feature variant of CrossPoint (Afham et al. 2022), every episode fits a linear SVM
(``LinearSVC(C=protocol.c)``) on the L2-normalised support features instead of fine-tuning. Settings:
:class:`FewShotConfig`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator
from torch.utils.data import Dataset

from pointtune import distributed as dist
from pointtune.method import Method
from pointtune.protocols.base import (
    Protocol,
    ProtocolConfig,
    Result,
    extract_features,
    l2_normalize,
    register_protocol,
    seed_field,
)
from pointtune.protocols.linear_svm import LinearSVM, max_iter_field, pool_size
from pointtune.protocols.spectrum import shared_feature_spectrum

__all__ = ["FewShot", "FewShotConfig", "Episode", "setting_name", "plan_settings", "draw_episodes",
           "episode_accuracy"]


class FewShotConfig(ProtocolConfig):
    """Settings of the ``few_shot`` protocol (``protocol.*`` with ``protocol.name: few_shot``), besides ``name``
    and ``data`` (:class:`~pointtune.protocols.base.ProtocolConfig`).

    Fields:
        ways, shots: every ``N``-way ``K``-shot setting of these lists is run (Point-MAE: 5/10-way, 10/20-shot);
            a setting the data cannot fill is skipped with a printed line.
        folds: episodes (folds) per setting; accuracy is reported as mean and std over them.
        queries: query clouds per class and episode, drawn from the scored split (Point-MAE: 20).
        c: C of the LinearSVC fitted per episode on the support features.
        max_iter: that LinearSVC's ``max_iter``.
        seed: seed of the episodes.
    """

    ways: list[int] = Field(
        default_factory=lambda: [5, 10], min_length=1, description="the N of every N-way setting run")
    shots: list[int] = Field(
        default_factory=lambda: [10, 20], min_length=1, description="the K of every K-shot setting run")
    folds: int = Field(10, ge=1, description="episodes per setting (accuracy: mean and std over them)")
    queries: int = Field(20, ge=1, description="query clouds per class and episode")
    c: float = Field(1.0, gt=0, description="C of the LinearSVC fitted per episode")
    max_iter: int = max_iter_field("every episode's fit")
    seed: int = seed_field("the episodes (their classes, support and query clouds)")

    @field_validator("ways", "shots")
    @classmethod
    def _counts(cls, value: list[int], info: ValidationInfo) -> list[int]:
        low = 2 if info.field_name == "ways" else 1
        if any(v < low for v in value):
            raise ValueError(f"every entry must be an integer >= {low}")
        if len(set(value)) < len(value):
            raise ValueError("an entry is listed more than once")
        return value


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode (a "fold").

    Attributes:
        way, shot, fold: its setting and its number within the setting.
        classes: ``(way,)`` the dataset labels drawn, ascending; episode label ``j`` is ``classes[j]``.
        support: ``(way * shot,)`` indices into the ``fit`` split; ``support_labels`` their episode labels.
        query: ``(way * queries,)`` indices into the scored split; ``query_labels`` their episode labels.
    """

    way: int
    shot: int
    fold: int
    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def setting_name(way: int, shot: int) -> str:
    """Metric name of a setting: ``fewshot/5way10shot`` (its std: ``fewshot/5way10shot_std``)."""
    return f"fewshot/{way}way{shot}shot"


def plan_settings(cfg: FewShotConfig, fit_labels: np.ndarray, eval_labels: np.ndarray
                  ) -> tuple[list[tuple[int, int, list[int]]], list[str]]:
    """Which ``(way, shot)`` settings of ``cfg`` the data can fill.

    A class can take part in a K-shot episode when the ``fit`` split has at least K clouds of it and the
    scored split at least ``cfg.queries``; an N-way setting needs N such classes.

    Returns:
        ``(runnable, skipped)``: ``[(way, shot, eligible class labels)]`` in ``cfg`` order, and a
        description of each skipped setting (``"10way10shot (3 classes have >= 10 training and >= 20
        scored clouds)"``).
    """
    fit_counts = np.bincount(np.asarray(fit_labels, dtype=np.int64))
    eval_counts = np.bincount(np.asarray(eval_labels, dtype=np.int64))
    runnable, skipped = [], []
    for way in cfg.ways:
        for shot in cfg.shots:
            eligible = [c for c in range(min(len(fit_counts), len(eval_counts)))
                        if fit_counts[c] >= shot and eval_counts[c] >= cfg.queries]
            if len(eligible) >= way:
                runnable.append((way, shot, eligible))
            else:
                skipped.append(f"{way}way{shot}shot ({len(eligible)} classes have >= {shot} training and "
                               f">= {cfg.queries} scored clouds)")
    return runnable, skipped


def draw_episodes(cfg: FewShotConfig, fit_labels: np.ndarray, eval_labels: np.ndarray) -> list[Episode]:
    """Every episode of the runnable settings (:func:`plan_settings`), ``cfg.folds`` per setting.

    Episode ``(way, shot, fold)`` is drawn from its own generator ``default_rng([seed, way, shot, queries,
    fold])``: the same episodes on every worker, every epoch and every run with the same ``protocol.seed``,
    whatever other settings are configured. Classes, support and queries are drawn without replacement.
    """
    fit_labels, eval_labels = np.asarray(fit_labels), np.asarray(eval_labels)
    runnable, _ = plan_settings(cfg, fit_labels, eval_labels)
    fit_of = {c: np.flatnonzero(fit_labels == c) for c in np.unique(fit_labels)}
    eval_of = {c: np.flatnonzero(eval_labels == c) for c in np.unique(eval_labels)}
    episodes = []
    for way, shot, eligible in runnable:
        for fold in range(cfg.folds):
            rng = np.random.default_rng([cfg.seed, way, shot, cfg.queries, fold])
            classes = np.sort(rng.choice(np.asarray(eligible), size=way, replace=False))
            support = [rng.choice(fit_of[c], size=shot, replace=False) for c in classes]
            query = [rng.choice(eval_of[c], size=cfg.queries, replace=False) for c in classes]
            episodes.append(Episode(
                way, shot, fold, classes,
                np.concatenate(support), np.repeat(np.arange(way), shot),
                np.concatenate(query), np.repeat(np.arange(way), cfg.queries),
            ))
    return episodes


def episode_accuracy(x_fit: np.ndarray, x_eval: np.ndarray, episode: Episode, c: float, max_iter: int) -> float:
    """Query accuracy of a ``LinearSVC(C=c)`` fitted on the episode's support rows of ``x_fit`` ``(M_fit, D)``
    (rows of ``x_eval`` ``(M_eval, D)`` are its queries); features are used as given (normalise first)."""
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=c, max_iter=max_iter, random_state=0).fit(x_fit[episode.support], episode.support_labels)
    return float((svm.predict(x_eval[episode.query]) == episode.query_labels).mean())


_ANNOUNCED: set[str] = set()


@register_protocol("few_shot")
class FewShot(Protocol):
    """Few-shot episodes with a linear SVM per episode on frozen, L2-normalised ``Method.embed`` features.

    Every worker embeds its shard of ``fit`` and ``eval`` and receives all the features
    (:func:`~pointtune.protocols.base.extract_features`); all draw the same episodes; worker ``r`` solves
    episodes ``r, r + world, ...`` in a thread pool (:func:`~pointtune.protocols.linear_svm.pool_size`) and
    the accuracies are summed over workers (zeros elsewhere), so the figures equal a single process's.
    Reports ``fewshot/<N>way<K>shot`` (mean query accuracy over the folds, in [0, 1]) and ``..._std``
    (population std) per runnable setting; settings the data cannot fill are left out, announced once per
    process in one line. ``ConvergenceWarning`` of the episode fits is ignored. When any setting runs, it also
    reports ``feature_rank``, the effective rank of the raw ``fit`` features, with their normalised spectrum as
    the array ``spectrum`` (:func:`~pointtune.protocols.spectrum.shared_feature_spectrum`, DCGLR Fig. 5b).
    Settings: :class:`FewShotConfig`.
    """

    Config = FewShotConfig
    tasks = LinearSVM.tasks
    splits = ("fit", "eval")
    per_class = False

    def metrics(self, cfg: FewShotConfig) -> tuple[str, ...]:
        """Mean and std of every configured setting, in ``ways`` x ``shots`` order, then ``feature_rank``."""
        settings = (n for w in cfg.ways for s in cfg.shots for n in (setting_name(w, s), setting_name(w, s) + "_std"))
        return (*settings, "feature_rank")

    def reported(self, cfg: FewShotConfig, fit_labels: np.ndarray | None, eval_labels: np.ndarray,
                 num_classes: int) -> tuple[tuple[str, ...], list[str]]:
        """The runnable settings' names (then ``feature_rank``; nothing when no setting runs) and the skipped
        settings (:func:`plan_settings`)."""
        runnable, skipped = plan_settings(cfg, fit_labels, eval_labels)
        names = tuple(n for w, s, _ in runnable for n in (setting_name(w, s), setting_name(w, s) + "_std"))
        return (*names, "feature_rank") if names else (), skipped

    check_output = LinearSVM.check_output

    def run(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
            cfg: FewShotConfig, batch_size: int = 64, num_workers: int = 0) -> Result:
        """Mean and std accuracy per runnable setting; see the class docstring."""
        from sklearn.exceptions import ConvergenceWarning

        x_fit, y_fit = extract_features(method, splits["fit"], device, batch_size, num_workers)
        x_eval, y_eval = extract_features(method, splits["eval"], device, batch_size, num_workers)
        _, skipped = plan_settings(cfg, y_fit, y_eval)
        if skipped and dist.rank() == 0:
            line = f"[pointtune] few_shot: skipped {', '.join(skipped)}"
            if line not in _ANNOUNCED:
                _ANNOUNCED.add(line)
                print(line, flush=True)
        episodes = draw_episodes(cfg, y_fit, y_eval)
        if not episodes:
            return {}, None, {}
        feature_rank, spectrum = shared_feature_spectrum(x_fit, device)  # raw features, before normalising
        x_fit, x_eval = l2_normalize(x_fit), l2_normalize(x_eval)
        mine = list(range(dist.rank(), len(episodes), dist.world_size()))
        accs = np.zeros(len(episodes), dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            with ThreadPoolExecutor(pool_size(len(mine))) as pool:
                done = pool.map(lambda i: episode_accuracy(x_fit, x_eval, episodes[i], cfg.c, cfg.max_iter), mine)
                for i, acc in zip(mine, done):
                    accs[i] = acc
        if dist.world_size() > 1:
            accs = dist.all_reduce_sum(torch.from_numpy(accs).to(device)).cpu().numpy()
        scores: dict[str, float] = {}
        for way in cfg.ways:
            for shot in cfg.shots:
                got = np.asarray([a for e, a in zip(episodes, accs) if (e.way, e.shot) == (way, shot)])
                if got.size:
                    scores[setting_name(way, shot)] = float(got.mean())
                    scores[setting_name(way, shot) + "_std"] = float(got.std())
        scores["feature_rank"] = feature_rank
        return scores, None, {"spectrum": spectrum}
