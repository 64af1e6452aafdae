"""Which epoch is best: the one rule of model selection, for the loop and everything that reads its records.

The loop (:mod:`pointtune.train.loop`) is the only place that *decides* the best epoch, with :class:`BestEpoch`;
it reports the decision every epoch as ``best/<metric>`` and ``best/epoch``, and every later reader (the run's
``summary.json``, the checkpoint lookup, a sweep's summary, records and ``best_config.yaml``, ``pointtune
best``) reads those two values instead of deriving them again.

The rule is the one Ray's checkpoint managers apply when they keep the best checkpoint by a score
(``ray.train._internal.checkpoint_manager._insert_into_sorted_list``: equal scores sort by report order, the
later last, i.e. best): a finite value that equals the best so far wins over it, so of two epochs with the
same objective the later one is best. The checkpoint Ray keeps is then the one the loop scored the test split
on. NaN and infinite values never win.

A sweep may have several objectives (accuracy and a cost): the first one selects the epoch, and the others
are read at that epoch (:attr:`BestEpoch.secondary`), so a trial has one value per objective, all from the
same weights. Which trials are best by all of them at once is :func:`pareto_front`'s to say.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MODES = ("max", "min")


def is_better(value: Any, best: float | None, mode: str) -> bool:
    """Whether ``value`` becomes the new best over ``best`` (``None``: nothing yet) for ``mode``.

    Ties go to ``value`` (the later epoch), as in Ray's checkpoint managers; a value that is not a finite
    number never wins.

    Raises:
        ValueError: ``mode`` is not ``max`` or ``min``.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be max or min, got {mode!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return best is None or (value >= best if mode == "max" else value <= best)


@dataclass(frozen=True)
class Objective:
    """One objective of a search: a metric the runs report and whether it is maximised or minimised."""

    metric: str
    mode: str


@dataclass
class BestEpoch:
    """The best epoch so far of one run by its objective: the loop's model selection.

    Attributes:
        metric: the objective, e.g. ``val/OA``.
        mode: ``max`` or ``min``.
        value: its best value so far (``None``: no epoch reported it yet).
        epoch: the 1-based epoch that reached it (``None`` likewise).
        secondary: the metrics of a multi-objective search's other objectives (e.g. ``cost/epoch_s``); they
            select nothing and are read at the selected epoch.
        secondary_values: their values at the selected epoch (NaN where that epoch did not report one).
    """

    metric: str
    mode: str
    value: float | None = None
    epoch: int | None = None
    secondary: tuple[str, ...] = ()
    secondary_values: dict[str, float] = field(default_factory=dict)

    def update(self, metrics: dict[str, Any], epoch: int) -> bool:
        """Consider epoch ``epoch`` (1-based) with its ``metrics``; returns whether it is the new best (whose
        :attr:`secondary` values are then those of ``metrics``)."""
        value = metrics.get(self.metric)
        if not is_better(value, self.value, self.mode):
            return False
        self.value, self.epoch = float(value), epoch
        self.secondary_values = {m: _finite(metrics.get(m)) for m in self.secondary}
        return True

    def as_metrics(self) -> dict[str, float]:
        """``{best/<metric>: value, best/epoch: epoch}`` as the loop reports them (NaN and 0 before any), and
        ``best/<m>`` for each :attr:`secondary` metric ``m`` (its value at that epoch, NaN before any)."""
        return {f"best/{self.metric}": self.value if self.value is not None else float("nan"),
                "best/epoch": self.epoch if self.epoch is not None else 0,
                **{f"best/{m}": self.secondary_values.get(m, float("nan")) for m in self.secondary}}


def _finite(value: Any) -> float:
    """``value`` as a float, NaN when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return float("nan")
    return float(value)


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether point ``a`` Pareto-dominates point ``b``: at least as good in every objective and better in one
    (Deb et al. 2002, NSGA-II, Definition 1), ``modes[i]`` saying whether objective ``i`` is maximised.

    Raises:
        ValueError: a mode is not ``max`` or ``min``, or the lengths differ.
    """
    if not len(a) == len(b) == len(modes):
        raise ValueError(f"points and modes differ in length: {len(a)}, {len(b)}, {len(modes)}")
    if any(m not in MODES for m in modes):
        raise ValueError(f"modes must be max or min, got {list(modes)}")
    signs = [1.0 if m == "max" else -1.0 for m in modes]
    better_somewhere = False
    for x, y, sign in zip(a, b, signs):
        if sign * x < sign * y:
            return False
        better_somewhere |= sign * x > sign * y
    return better_somewhere


def pareto_front(points: Sequence[Sequence[float] | None], modes: Sequence[str]) -> list[bool]:
    """For each of ``points`` (one value per objective, in the order of ``modes``), whether it is on the
    Pareto front: no other point dominates it (:func:`dominates`). Equal points are all on it, or none.
    A point that is ``None`` or holds a value that is not a finite number is never on the front and is not
    compared with the others. O(n^2 k) for n points of k objectives.

    Raises:
        ValueError: as :func:`dominates`.
    """
    valid = [p is not None and all(_finite(v) == v for v in p) for p in points]
    kept = [[float(v) for v in p] for p, ok in zip(points, valid) if ok]
    front = iter([not any(dominates(q, p, modes) for q in kept) for p in kept])
    return [next(front) if ok else False for ok in valid]


def select_best(records: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The best of ``records`` (dicts with ``epoch`` and ``metric``) by :func:`is_better` taken in epoch order:
    for a reader whose records carry no ``best/epoch`` (e.g. the kept checkpoints of a PBT trial, whose loop's
    best epoch may have been deleted). ``None`` when no record has a finite ``metric``."""
    best = BestEpoch(metric, mode)
    chosen = None
    for record in sorted(records, key=lambda r: r.get("epoch", 0)):
        if best.update(record, int(record.get("epoch", 0))):
            chosen = record
    return chosen
