"""Schedules: a hyperparameter that changes over a run, as one searchable config object.

A :class:`Schedule` is a value of the run's progress: an optional linear warm-up from ``warmup_start`` to
``start`` over ``warmup_epochs``, then ``start`` held (``constant``), moved to ``end`` over the rest of the run
(``linear``, ``cosine``: half a cosine, DINO's ``cosine_scheduler``), multiplied by ``gamma`` every
``step_epochs`` epochs (``step``) or at each of its ``milestones`` (``multistep``), or, after holding ``start``
for the warm-up, moved by ``delta`` every ``step_epochs`` epochs until it reaches ``end`` (``stairs``: SCL's
annealed hard-negative bounds). With ``unit: fraction`` the warm-up, the step period and the milestones are
fractions of the run, so a schedule written for a
512-epoch paper run keeps its proportions in a 10-epoch proxy run. Every part is a config key, so a sweep
searches a schedule's shape as well as its values: ``optim.lr.start``, ``optim.lr.warmup_epochs``,
``method.teacher_momentum.start``, ``method.lambda_con.shape``, ``method.b_l.step_epochs``.

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


_EPS = 1e-9  # tolerance of the step arithmetic: a step lands on its epoch despite float rounding


class Schedule(BaseModel):
    """A value over the run (see the module docstring).

    Fields:
        start: value after warm-up (the peak of a learning rate).
        end: value at the last step for ``linear`` and ``cosine``; the value ``stairs`` stops at; ``None``:
            ``start`` for ``linear`` / ``cosine`` (no change), no limit for ``stairs``. Ignored by
            ``constant`` and ``step``.
        shape: ``constant``, ``linear``, ``cosine``, ``step``, ``multistep`` or ``stairs``.
        warmup_epochs: warm-up length (may be fractional): a linear ramp from ``warmup_start`` to ``start``;
            ``stairs`` holds ``start`` instead (no ramp, ``warmup_start`` unused).
        warmup_start: value at step 0 when ``warmup_epochs > 0`` (not ``stairs``).
        step_epochs: ``step``: multiply by ``gamma`` every ``step_epochs`` epochs (counted from 0);
            ``stairs``: add ``delta`` every ``step_epochs`` epochs after the warm-up (the first step at
            ``warmup_epochs + step_epochs``).
        gamma: the factor of ``step`` and ``multistep``.
        milestones: ``multistep``: the epochs (in ``unit``, ascending) at which the value is multiplied by
            ``gamma`` (PyTorch's ``MultiStepLR``).
        delta: the increment of ``stairs`` (negative: down).
        unit: ``epochs``, or ``fraction``: ``warmup_epochs`` and ``step_epochs`` are fractions of the run.

    Raises (at validation, as pydantic ``ValidationError``): ``unit: fraction`` with a warm-up, or the period
    of ``step`` / ``stairs``, above 1; ``stairs`` whose ``delta`` moves away from its ``end``.
    """

    model_config = ConfigDict(extra="forbid")
    start: float = Field(description="value after warm-up (a learning rate's peak)")
    end: float | None = Field(
        None, description="linear/cosine: value at the end of the run (null: start); stairs: the value it stops at")
    shape: Literal["constant", "linear", "cosine", "step", "multistep", "stairs"] = Field(
        "constant", description="constant | linear | cosine (start -> end after warm-up) | step (x gamma) | "
                                "multistep (x gamma at each milestone) | "
                                "stairs (+ delta every step_epochs after holding start for the warm-up)")
    warmup_epochs: float = Field(
        0.0, ge=0, description="warm-up: linear ramp from warmup_start to start (stairs: start held), in unit")
    warmup_start: float = Field(0.0, description="value at step 0 when warmup_epochs > 0 (not stairs)")
    step_epochs: float = Field(
        20, gt=0, description="step: epochs between multiplications by gamma; stairs: between steps of delta (in unit)")
    gamma: float = Field(0.7, gt=0, description="step / multistep: factor applied every step_epochs / at each milestone")
    milestones: list[float] = Field(
        default_factory=list, description="multistep: epochs (in unit, ascending) at which to multiply by gamma")
    delta: float = Field(0.0, description="stairs shape: added every step_epochs after the warm-up (negative: down)")
    unit: Literal["epochs", "fraction"] = Field(
        "epochs", description="unit of warmup_epochs and step_epochs: epochs | fraction of the run")

    @model_validator(mode="after")
    def _consistent(self) -> "Schedule":
        if self.unit == "fraction":  # step_epochs matters to the shapes that step only
            for part in ("warmup_epochs", *(("step_epochs",) if self.shape in ("step", "stairs") else ())):
                if getattr(self, part) > 1:
                    raise ValueError(f"{part} ({getattr(self, part)}) must be <= 1 with unit=fraction (a fraction "
                                     f"of the run; unit=epochs counts epochs)")
        if self.milestones != sorted(self.milestones) or any(m < 0 for m in self.milestones) or (
                self.unit == "fraction" and any(m > 1 for m in self.milestones)):
            raise ValueError(f"milestones {self.milestones} must ascend from 0"
                             f"{' and be <= 1 with unit=fraction' if self.unit == 'fraction' else ''}")
        if self.shape == "stairs" and self.end is not None and self.delta * (self.end - self.start) < 0:
            raise ValueError(f"stairs: delta {self.delta} moves away from end {self.end} (start {self.start})")
        return self

    def _epochs(self, epochs: int) -> tuple[float, float]:
        """``(warm-up, step period)`` in epochs for a run of ``epochs``."""
        if self.unit == "fraction":
            return self.warmup_epochs * epochs, self.step_epochs * epochs
        return self.warmup_epochs, self.step_epochs

    def at(self, epoch: float, epochs: int) -> float:
        """The value after ``epoch`` epochs of training (fractional: step / steps per epoch) of a run of
        ``epochs`` epochs; ``epoch`` past the end holds the last value."""
        warmup, period = self._epochs(epochs)
        if self.shape == "stairs":
            if epoch < warmup or period <= 0:
                return self.start
            value = self.start + self.delta * math.floor((epoch - warmup) / period + _EPS)
            if self.end is not None:
                value = min(value, self.end) if self.delta > 0 else max(value, self.end)
            return value
        if epoch < warmup:
            return self.warmup_start + (self.start - self.warmup_start) * epoch / warmup
        if self.shape == "constant":
            return self.start
        if self.shape == "step":
            return self.start * self.gamma ** (math.floor((epoch + _EPS) / period) if period > 0 else 0)
        if self.shape == "multistep":
            scale = epochs if self.unit == "fraction" else 1
            return self.start * self.gamma ** sum(epoch + _EPS >= m * scale for m in self.milestones)
        end = self.start if self.end is None else self.end
        span = epochs - warmup
        ratio = 1.0 if span <= 0 else min(1.0, (epoch - warmup) / span)
        if self.shape == "linear":
            return self.start + (end - self.start) * ratio
        return end + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (self.start - end)

    def value_range(self) -> tuple[float, float]:
        """``(lowest, highest)`` value the schedule can take in a run of any length (the warm-up included;
        ``-inf`` / ``inf`` where it is unbounded, as ``stairs`` without ``end``; ``step`` with ``gamma < 1``
        tends to 0, which is returned as the bound)."""
        values = [self.start]
        if self.warmup_epochs > 0 and self.shape != "stairs":
            values.append(self.warmup_start)
        if self.shape in ("linear", "cosine") and self.end is not None:
            values.append(self.end)
        elif self.shape == "stairs" and self.delta != 0:
            values.append(self.end if self.end is not None else math.copysign(math.inf, self.delta))
        elif self.shape == "step" and self.gamma != 1 and self.start != 0:
            values.append(0.0 if self.gamma < 1 else math.copysign(math.inf, self.start))
        elif self.shape == "multistep":
            values.append(self.start * self.gamma ** len(self.milestones))
        return min(values), max(values)


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
