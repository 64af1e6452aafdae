"""Per-iteration schedules of the optimizer: learning rate (linear warm-up, then cosine, step or constant)
and weight decay (constant, or cosine from ``weight_decay`` to ``weight_decay_end``, as DINO / DCGLR do).

The loop sets both on every optimizer step from the global step alone, so a resumed run continues the
schedule exactly (no scheduler state to save).
"""

from __future__ import annotations

import math

from pointtune.config import OptimConfig


def warmup_cosine(step: int, total_steps: int, peak: float, final: float, warmup_steps: int = 0,
                  start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup_steps``, then half a cosine from ``peak``
    down to ``final`` at ``total_steps`` (nanoGPT's ``get_lr(it)``; DINO's ``cosine_scheduler``).

    Args:
        step: 0-based global step (clamped to ``total_steps``).
        total_steps: steps of the whole run.
        peak, final, start: values at the end of warm-up, at the last step, at step 0.
        warmup_steps: steps of linear warm-up (0: none).
    """
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    span = total_steps - warmup_steps
    if span <= 0:
        return peak
    ratio = min(1.0, (step - warmup_steps) / span)
    return final + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (peak - final)


def lr_at(cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate at 0-based global ``step``: linear warm-up from 0 over ``cfg.warmup_epochs`` (may be
    fractional), then ``cosine`` (per iteration to ``min_lr``), ``step`` (times ``gamma`` every
    ``step_size`` epochs) or ``constant``."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return warmup_cosine(step, epochs * steps_per_epoch, cfg.lr, min(cfg.min_lr, cfg.lr), warmup)
    base = cfg.lr * cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size) if cfg.schedule == "step" else cfg.lr
    return base * step / warmup if step < warmup else base


def weight_decay_at(cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Weight decay at 0-based global ``step``: ``weight_decay``, or with ``weight_decay_end`` set, a cosine
    from ``weight_decay`` to ``weight_decay_end`` over the run."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    return warmup_cosine(step, epochs * steps_per_epoch, cfg.weight_decay, cfg.weight_decay_end)


def apply_schedules(optimizer, cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Set every parameter group's ``lr`` and, for groups with ``decay`` (see
    :meth:`pointtune.method.Method.param_groups`), ``weight_decay`` for ``step``; returns the lr."""
    lr = lr_at(cfg, step, steps_per_epoch, epochs)
    wd = weight_decay_at(cfg, step, steps_per_epoch, epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group.get("decay", True):
            group["weight_decay"] = wd
    return lr
