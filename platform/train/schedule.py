"""The optimizer's per-iteration schedules: the loop sets every parameter group's learning rate and weight
decay from ``optim.lr`` and ``optim.weight_decay`` (:class:`pointtune.schedules.Schedule`) on every step.

They depend on the global step alone, so a resumed run continues them exactly (no scheduler state to save).
"""

from __future__ import annotations

from pointtune.config import OptimConfig


def apply_schedules(optimizer, cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Set every parameter group's ``lr`` and, for groups with ``decay`` (see
    :meth:`pointtune.method.Method.param_groups`), ``weight_decay`` for 0-based global ``step``; returns
    the learning rate."""
    epoch = step / steps_per_epoch
    lr = cfg.lr.at(epoch, epochs)
    wd = cfg.weight_decay.at(epoch, epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("decay", True):
            group["weight_decay"] = wd
    return lr
