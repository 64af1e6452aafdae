"""``pointtune config METHOD``: every configuration key of a method with its type, default and meaning.

The rows come from the pydantic models themselves (:mod:`pointtune.config`, the method's ``Config``), so
the listing cannot drift from what :func:`pointtune.config.build_config` accepts: the default shown is the
value a run gets (platform default < the method's recipe < ``--config`` < ``--set``), the meaning is the
field's ``description``. A :class:`~pointtune.schedules.Schedule` is one row; its parts are listed once at
the end. The backbone's constructor arguments are listed with their defaults. The ``protocol.*`` rows are those
of the protocol the config names (``--set protocol.name=few_shot``; null: the task's default protocol).
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pointtune.config import ExperimentConfig
from pointtune.schedules import Schedule

__all__ = ["ConfigRow", "config_rows", "schedule_rows", "format_rows", "type_name"]


@dataclass(frozen=True)
class ConfigRow:
    """One key of the listing: dotted ``key``, ``type`` (with bounds), ``default`` (as YAML would write
    it) and its one-line ``meaning``."""

    key: str
    type: str
    default: str
    meaning: str


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"), (annotated_types.MinLen, "min_length", "len >="))


def type_name(annotation: Any) -> str:
    """A short name of a field's type: ``float``, ``sgd|adamw``, ``list[str] | null``, ``schedule``."""
    origin = get_origin(annotation)
    if annotation is Schedule:
        return "schedule"
    if origin is Literal:
        return "|".join(str(a).lower() if isinstance(a, bool) else str(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(annotation) if a is not type(None)]
        text = " | ".join(type_name(a) for a in parts)
        return text + " | null" if len(parts) < len(get_args(annotation)) else text
    if origin is list:
        return f"list[{', '.join(type_name(a) for a in get_args(annotation))}]"
    if origin is typing.Annotated:
        return type_name(get_args(annotation)[0])
    return getattr(annotation, "__name__", str(annotation))


def _bounds(info: FieldInfo) -> str:
    found = []
    for meta in info.metadata:
        for kind, attr, sign in _BOUNDS:
            if isinstance(meta, kind):
                found.append(f"{sign} {getattr(meta, attr)}")
    return f" ({', '.join(found)})" if found else ""


def _value(value: Any) -> str:
    if isinstance(value, Schedule):  # the parts its shape uses
        stairs = value.shape == "stairs"
        names = ["start", *(["end"] if value.shape in ("linear", "cosine", "stairs") else []), "shape",
                 *(["warmup_epochs"] if value.warmup_epochs else []),
                 *(["warmup_start"] if value.warmup_epochs and not stairs else []),
                 *(["step_epochs", "gamma"] if value.shape == "step" else []),
                 *(["step_epochs", "delta"] if stairs else []),
                 *(["unit"] if value.unit != "epochs" else [])]
        return "{" + ", ".join(f"{name}: {_value(getattr(value, name))}" for name in names) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, BaseModel):
        return "{...}"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value)


def _model_rows(model: BaseModel, prefix: str) -> list[ConfigRow]:
    """The fields of ``model`` (its ``name`` discriminator left out under ``method``), then each sub-section."""
    rows, sections = [], []
    for name, info in type(model).model_fields.items():
        key, value = prefix + name, getattr(model, name)
        if key == "method.name":
            continue
        if isinstance(value, BaseModel) and not isinstance(value, Schedule):
            sections.append(ConfigRow(key, "section", "", info.description or ""))
            sections += _model_rows(value, key + ".")
            if name == "backbone" and hasattr(value, "kwargs") and getattr(model, "builds_backbone", True):
                sections += _backbone_rows(value, key + ".")
            continue
        rows.append(ConfigRow(key, type_name(info.annotation) + _bounds(info), _value(value), info.description or ""))
    return rows + sections


def _arg_docs(obj: Any) -> dict[str, str]:
    """``{argument: its text}`` from the ``Args:`` section of ``obj``'s (Google-style) docstring, joined on
    one line."""
    docs, current, inside = {}, None, False
    for line in inspect.getdoc(obj).splitlines() if inspect.getdoc(obj) else []:
        if line.strip() in ("Args:", "Arguments:"):
            inside = True
            continue
        if inside and line and not line.startswith(" "):
            break
        found = re.match(r"^    (\w+)(?: \(.*?\))?: (.*)$", line) if inside else None
        if found:
            current = found.group(1)
            docs[current] = found.group(2).strip()
        elif inside and current and line.startswith("        "):
            docs[current] += " " + line.strip()
    return docs


def _backbone_rows(backbone: BaseModel, prefix: str) -> list[ConfigRow]:
    """The constructor arguments of the configured backbone, with the config's values where it sets them."""
    from pointtune.backbones import backbone_factory

    given, factory = backbone.kwargs(), backbone_factory(backbone.name)
    docs = _arg_docs(factory)
    rows = []
    for name, param in inspect.signature(factory).parameters.items():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) or name == "in_features":
            continue
        default = given.get(name, param.default)
        kind = type_name(param.annotation) if param.annotation is not inspect.Parameter.empty else ""
        rows.append(ConfigRow(prefix + name, kind, _value(default),
                              docs.get(name, f"argument of backbone {backbone.name!r}")))
    return rows


def config_rows(exp: ExperimentConfig) -> list[ConfigRow]:
    """Every key of a validated experiment config, in schema order: sections, fields, the backbone's
    constructor arguments (for the backbone ``exp`` names)."""
    return _model_rows(exp, "")


def schedule_rows() -> list[ConfigRow]:
    """The parts every schedule key takes (``<schedule>.start``, ...)."""
    return [ConfigRow("<schedule>." + name, type_name(info.annotation) + _bounds(info),
                      _value(info.default) if not info.is_required() else "", info.description or "")
            for name, info in Schedule.model_fields.items()]


def format_rows(rows: list[ConfigRow]) -> str:
    """The rows as an aligned text table, sections as headings."""
    keys = max(len(r.key) for r in rows)
    kinds = max(len(r.type) for r in rows)
    defaults = min(28, max(len(r.default) for r in rows))
    lines = []
    for row in rows:
        if row.type == "section":
            lines.append(f"\n{row.key}:" + (f"  {row.meaning}" if row.meaning else ""))
            continue
        lines.append(f"  {row.key:<{keys}}  {row.type:<{kinds}}  {row.default:<{defaults}}  {row.meaning}".rstrip())
    return "\n".join(lines).lstrip("\n")
