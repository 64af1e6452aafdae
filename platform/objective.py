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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass
class BestEpoch:
    """The best epoch so far of one run by its objective: the loop's model selection.

    Attributes:
        metric: the objective, e.g. ``val/OA``.
        mode: ``max`` or ``min``.
        value: its best value so far (``None``: no epoch reported it yet).
        epoch: the 1-based epoch that reached it (``None`` likewise).
    """

    metric: str
    mode: str
    value: float | None = None
    epoch: int | None = None

    def update(self, metrics: dict[str, Any], epoch: int) -> bool:
        """Consider epoch ``epoch`` (1-based) with its ``metrics``; returns whether it is the new best."""
        value = metrics.get(self.metric)
        if not is_better(value, self.value, self.mode):
            return False
        self.value, self.epoch = float(value), epoch
        return True

    def as_metrics(self) -> dict[str, float]:
        """``{best/<metric>: value, best/epoch: epoch}`` as the loop reports them (NaN and 0 before any)."""
        return {f"best/{self.metric}": self.value if self.value is not None else float("nan"),
                "best/epoch": self.epoch if self.epoch is not None else 0}


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
