"""Schedules: a hyperparameter that changes over a run, as one searchable config object.

A :class:`Schedule` is a value of the run's progress: an optional linear warm-up from ``warmup_start`` to
``start`` over ``warmup_epochs``, then ``start`` held (``constant``), moved to ``end`` over the rest of the run
(``linear``, ``cosine``: half a cosine, DINO's ``cosine_scheduler``), or multiplied by ``gamma`` every
``step_epochs`` epochs (``step``). Every part is a config key, so a sweep searches a schedule's shape as
well as its values: ``optim.lr.start``, ``optim.lr.warmup_epochs``, ``method.teacher_momentum.start``,
``method.lambda_con.shape``.

A schedule in a config may be given whole (a mapping), in part (the rest comes from the field's default)
or as a number, which sets ``start`` alone: ``--set optim.lr=0.05`` keeps the cosine decay of the default.

Schedules are evaluated from the (fractional) epoch alone, so a resumed or PBT-mutated run continues them
with no state to save. The loop records every schedule's value per epoch as ``sched/<key>``.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

__all__ = ["Schedule", "bounded", "WithSchedules", "schedule_fields", "schedule_values"]


class Schedule(BaseModel):
    """A value over the run (see the module docstring).

    Fields:
        start: value after warm-up (the peak of a learning rate).
        end: value at the last step for ``linear`` and ``cosine``; ``None``: ``start`` (no change).
            Ignored by ``constant`` and ``step``.
        shape: ``constant``, ``linear``, ``cosine`` or ``step``.
        warmup_epochs: epochs (may be fractional) of linear warm-up from ``warmup_start`` to ``start``.
        warmup_start: value at step 0 when ``warmup_epochs > 0``.
        step_epochs, gamma: ``step``: multiply by ``gamma`` every ``step_epochs`` epochs (counted from 0).
    """

    model_config = ConfigDict(extra="forbid")
    start: float = Field(description="value after warm-up (a learning rate's peak)")
    end: float | None = Field(None, description="value at the end of the run for linear/cosine; null: start")
    shape: Literal["constant", "linear", "cosine", "step"] = Field(
        "constant", description="constant | linear | cosine (start -> end after warm-up) | step (x gamma)")
    warmup_epochs: float = Field(0.0, ge=0, description="epochs of linear warm-up from warmup_start to start")
    warmup_start: float = Field(0.0, description="value at step 0 when warmup_epochs > 0")
    step_epochs: int = Field(20, ge=1, description="step shape: epochs between multiplications by gamma")
    gamma: float = Field(0.7, gt=0, description="step shape: factor applied every step_epochs epochs")

    def at(self, epoch: float, epochs: int) -> float:
        """The value after ``epoch`` epochs of training (fractional: step / steps per epoch) of a run of
        ``epochs`` epochs; ``epoch`` past the end holds the last value."""
        if epoch < self.warmup_epochs:
            return self.warmup_start + (self.start - self.warmup_start) * epoch / self.warmup_epochs
        if self.shape == "constant":
            return self.start
        if self.shape == "step":
            return self.start * self.gamma ** (int(epoch + 1e-9) // self.step_epochs)
        end = self.start if self.end is None else self.end
        span = epochs - self.warmup_epochs
        ratio = 1.0 if span <= 0 else min(1.0, (epoch - self.warmup_epochs) / span)
        if self.shape == "linear":
            return self.start + (end - self.start) * ratio
        return end + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.start - end)


def bounded(ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> AfterValidator:
    """A validator that holds a schedule's ``start`` and ``end`` (the values it takes after warm-up) within
    bounds, for ``Annotated[Schedule, bounded(gt=0)]``. Raises ``ValueError`` naming the part at fault."""

    limits = [(ge, operator.ge, ">="), (gt, operator.gt, ">"), (le, operator.le, "<="), (lt, operator.lt, "<")]

    def check(schedule: Schedule) -> Schedule:
        for part in ("start", "end"):
            value = getattr(schedule, part)
            for limit, holds, sign in limits:
                if value is not None and limit is not None and not holds(value, limit):
                    raise ValueError(f"{part} must be {sign} {limit} (got {value!r})")
        return schedule

    return AfterValidator(check)


def _is_schedule(annotation: Any) -> bool:
    if annotation is Schedule:
        return True
    return any(_is_schedule(arg) for arg in get_args(annotation))


class WithSchedules(BaseModel):
    """Base of config sections with :class:`Schedule` fields: a number given for one sets its ``start``
    and a partial mapping is completed from the field's default, before validation."""

    @model_validator(mode="before")
    @classmethod
    def _complete_schedules(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            value = out.get(name)
            if not _is_schedule(info.annotation) or value is None or isinstance(value, (Schedule, bool)):
                continue
            if isinstance(value, (int, float)):
                value = {"start": value}
            if isinstance(value, dict):
                default = info.get_default(call_default_factory=True)
                out[name] = {**(default.model_dump() if isinstance(default, Schedule) else {}), **value}
        return out


def schedule_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of every :class:`Schedule` field of ``model`` and its sub-models (``optim.lr``)."""
    keys = []
    for name, info in model.model_fields.items():
        if _is_schedule(info.annotation):
            keys.append(prefix + name)
            continue
        for arg in (info.annotation, *get_args(info.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                keys += schedule_fields(arg, f"{prefix}{name}.")
    return keys


def schedule_values(config: BaseModel, epoch: float, epochs: int, prefix: str = "") -> dict[str, float]:
    """``{"optim.lr": value, ...}``: every schedule of a validated ``config`` evaluated at ``epoch``."""
    values = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, Schedule):
            values[prefix + name] = value.at(epoch, epochs)
        elif isinstance(value, BaseModel):
            values.update(schedule_values(value, epoch, epochs, f"{prefix}{name}."))
    return values
