"""Experiment configuration: one validated object from defaults, a YAML file and ``key=value`` overrides.

Precedence, lowest first: the platform defaults below < the method's ``recipe`` (its paper's training
setup) < ``--config FILE`` < ``--set key=value`` < values sampled by a sweep < explicit CLI flags
(``--epochs``, ``--dataset``, ``--data-root``).

Keys are dotted paths into the nested config, e.g. ``optim.lr``, ``method.lambda_con``,
``method.backbone.k``, ``data.classes``. Every error names the key (and the file) at fault.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
import difflib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, ValidationInfo, field_validator

from pointtune.data import DataConfig
from pointtune.errors import ConfigError
from pointtune.method import Method, MethodConfig, get_method
from pointtune.protocols.base import ProtocolConfig, chosen_protocol, protocol_config_class, protocols_with_key
from pointtune.schedules import Schedule, WithSchedules, bounded, schedule_fields


class OptimConfig(WithSchedules):
    """Optimizer and its per-iteration schedules (:class:`pointtune.schedules.Schedule`).

    ``lr`` and ``weight_decay`` are schedules: a number sets the value (``start``), the rest of the default
    stays; ``optim.lr.shape``, ``.end``, ``.warmup_epochs`` (linear warm-up from ``warmup_start``, default 0)
    and ``.step_epochs`` / ``.gamma`` (``step`` shape) change the curve. The loop sets both on every step.
    Biases, norm scales and tokens get no weight decay (:meth:`pointtune.method.Method.param_groups`).
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["sgd", "adamw"] = Field("sgd", description="optimizer: sgd (with momentum) or adamw")
    lr: Annotated[Schedule, bounded(ge=0)] = Field(
        Schedule(start=0.1, end=1e-3, shape="cosine"), description="learning rate schedule (start: the peak)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (adamw: unused)")
    weight_decay: Annotated[Schedule, bounded(ge=0)] = Field(
        Schedule(start=1e-4), description="weight decay schedule (DINO / DCGLR: cosine 0.04 -> 0.4)")


class TrainConfig(BaseModel):
    """Loop settings shared by every method.

    ``batch_size`` is per worker (Ray Train data parallelism multiplies it by the number of workers).
    ``amp`` takes effect on CUDA only. ``eval_every`` is in epochs; the last epoch is always evaluated.
    ``checkpoint_every`` is in epochs: a checkpoint is also written whenever the objective improves and at
    the last epoch, so the best model and the end of the run are always kept.
    ``epochs: 0`` trains nothing and judges the initial model with the protocol: the random-initialisation
    baseline of self-supervised methods. ``limit_batches`` (``--limit-batches``, ``--fast-dev-run``) cuts
    every epoch and every judged split short, to check a config or a code change in seconds. ``threads``: torch threads of each CPU worker; ``None``: the CPUs a
    Ray worker holds, all cores in local mode. A sweep records the value its trials used in their configs (and so in ``best_config.yaml``), since
    the thread count changes floating-point results.
    """

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(
        10, ge=0, description="epochs of training (0: judge the untrained model, the random-initialisation baseline)")
    batch_size: int = Field(
        32, ge=2, description="clouds per batch and worker (data parallelism multiplies it by the workers)")
    eval_batch_size: int = Field(64, ge=1, description="clouds per batch when evaluating")
    loader_workers: int = Field(0, ge=0, description="DataLoader worker processes per training worker")
    drop_last: bool = Field(True, description="drop the last incomplete training batch")
    amp: bool = Field(True, description="mixed precision (CUDA only)")
    seed: int = Field(0, description="seed of the weights, the batch order and the random views")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this value (null: off)")
    eval_every: int = Field(1, ge=1, description="evaluate every this many epochs (the last epoch always)")
    checkpoint_every: int = Field(
        1, ge=1, description="keep a checkpoint every this many epochs (besides the best and the last)")
    threads: int | None = Field(
        None, ge=1,
        description="torch threads per CPU worker (null: the worker's CPUs, all cores locally; recorded by sweeps)")
    limit_batches: int | None = Field(
        None, ge=1,
        description="debugging: train on the first N batches of every epoch and judge on N x batch_size items of "
                    "each split, spread over the classes (scenes: N x batch_size scenes) (null: all)")


class ExperimentConfig(BaseModel):
    """Everything one training run needs. ``method`` is validated by the method's own ``Config``; ``protocol``
    by the ``Config`` of the protocol it names (:mod:`pointtune.protocols`): ``name`` (null: the default protocol
    of the method's task), ``data`` and that protocol's own keys."""

    model_config = ConfigDict(extra="forbid")
    method: SerializeAsAny[MethodConfig]  # serialise the method's own fields, not just the base's
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    # The protocol's own fields are serialised too; the default ({}) is validated into the task's default protocol.
    protocol: SerializeAsAny[ProtocolConfig] = Field(
        default_factory=dict, validate_default=True,
        description="the evaluation protocol and its settings (its keys change with protocol.name)")

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_settings(cls, value: Any, info: ValidationInfo) -> Any:
        """The ``protocol`` section as the settings of the protocol it names: a union tagged by ``name``, open to
        protocols registered later (:func:`pointtune.protocols.protocol_config_class`). An instance of the
        right class is kept; another protocol's instance is re-validated from its fields (so that its keys are
        refused); anything else is left to the field's own validation."""
        method = info.data.get("method")
        if method is None:  # the method failed validation; its error is the one reported
            return value
        if isinstance(value, ProtocolConfig):
            name = value.name
        elif isinstance(value, dict):
            name = value.get("name")
        else:
            return value
        try:
            task = get_method(method.name).task
        except KeyError:
            task = None
        settings = protocol_config_class(task, name)
        if type(value) is settings:
            return value
        return settings.model_validate(value.model_dump() if isinstance(value, ProtocolConfig) else value)

    @property
    def method_cls(self) -> type[Method]:
        """The registered ``Method`` subclass named by ``method.name``."""
        return get_method(self.method.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe) that :func:`build_config` accepts back."""
        return self.model_dump(mode="json")


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"optim.lr=0.01"`` into ``("optim.lr", 0.01)``; the value is parsed as YAML.

    Raises:
        ConfigError: no ``=``, an empty key, or a value that is not valid YAML (e.g. ``[0.1``); names the item.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. optim.lr=0.01")
    if not raw.strip():
        return key.strip(), None
    try:
        return key.strip(), yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"--set {text!r}: the value of {key.strip()} is not valid YAML ({problem}); "
            f"quote it if it is a string, e.g. --set '{key.strip()}=\"...\"'"
        ) from None


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``key = "a.b.c"``, creating intermediate dicts."""
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"key {key!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge: ``update`` wins; nested dicts merge instead of being replaced. Returns a new dict."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-3``, ``1.0e6`` and ``5E+4`` as floats: YAML 1.2 numbers that YAML 1.1
    (PyYAML) reads as strings, a learning rate or a bound written the usual way failing later as a type error."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (numbers in exponent notation, ``1e-3``, are floats).

    Raises:
        ConfigError: missing file, invalid YAML, or a top level that is not a mapping; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``Model``, ``Model | None``, ``SerializeAsAny[Model]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _model_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        keys.append(prefix + name)
        sub = _submodel(info.annotation)
        if sub is not None:
            keys.extend(_model_keys(sub, f"{prefix}{name}."))
    return keys


def config_keys(method: str, protocol: str | None = None) -> list[str]:
    """Every valid dotted key of ``method``'s experiment config judged by the protocol ``protocol`` (its
    ``protocol.name``; None: the default of the method's task), sections included (``optim``, ``optim.lr``,
    ``method.backbone.name``, ``protocol.c``, ...), in schema order. The ``protocol.*`` keys are those of that
    protocol's settings only (:func:`pointtune.protocols.protocol_config_class`; ``name`` and ``data`` when it
    names no registered protocol).

    ``method.backbone`` also accepts the backbone's constructor arguments (``method.backbone.k``), which are
    not listed: they are checked when the backbone is built (see :mod:`pointtune.preflight`).

    Raises:
        ConfigError: unknown method.
    """
    try:
        method_cls = get_method(method)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    own = {"method": method_cls.Config, "protocol": protocol_config_class(method_cls.task, protocol)}
    keys = []
    for key in _model_keys(ExperimentConfig):
        section = key.partition(".")[0]
        if key in own:
            keys += [key, *_model_keys(own[key], f"{key}.")]
        elif section not in own:
            keys.append(key)
    return keys


def closest_keys(key: str, valid: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` entries of ``valid`` closest to the dotted ``key``, by :func:`difflib.get_close_matches`:
    first the keys of the same section whose last part is close (``optim.lrr`` -> ``optim.lr``), else keys
    of any section with a close last part (``lr`` -> ``optim.lr``), else close whole keys; may be empty."""
    section, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in valid if k.rpartition(".")[0] == section}
    found = [siblings[m] for m in difflib.get_close_matches(leaf, list(siblings), n=n, cutoff=0.6)]
    if not found:
        for name in difflib.get_close_matches(leaf, sorted({k.rpartition(".")[2] for k in valid}), n=n, cutoff=0.75):
            found += [k for k in valid if k.rpartition(".")[2] == name]
    if not found:
        found = difflib.get_close_matches(key, valid, n=n, cutoff=0.8)
    return found[:n]


def unknown_key_message(key: str, valid: list[str]) -> str:
    """``"unknown key; closest valid keys: a, b"``, or the valid keys of ``key``'s section when none is close."""
    close = closest_keys(key, valid)
    if close:
        return f"unknown key; closest valid keys: {', '.join(close)}"
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k[len(section):] for k in valid if k.startswith(section) and "." not in k[len(section):]]
    where = f"under {section[:-1]}" if section else "at the top level"
    return f"unknown key; valid keys {where}: {', '.join(siblings)}"


def other_protocol_message(key: str, protocol: str | None) -> str | None:
    """``"not a key of protocol linear_svm (few_shot has it; set protocol.name=few_shot)"`` for a ``protocol.*``
    ``key`` that the settings of ``protocol`` (the protocol the section names) lack and other registered
    protocols have; None for any other key (or when ``protocol`` is None)."""
    section, _, leaf = key.partition(".")
    if section != "protocol" or not leaf or "." in leaf or protocol is None:
        return None
    owners = [name for name in protocols_with_key(leaf) if name != protocol]
    if not owners:
        return None
    have = f"{owners[0]} has it" if len(owners) == 1 else f"{', '.join(owners)} have it"
    return f"not a key of protocol {protocol} ({have}; set protocol.name={' or '.join(owners)})"


def _first_error(
    err: ValidationError, source: str, prefix: tuple[str, ...] = (), valid: list[str] | None = None,
    source_of: Callable[[str], str] | None = None, protocol: str | None = None,
) -> ConfigError:
    """The first error of ``err`` as one line naming its key (``prefix`` + its location) and its source:
    an unknown key with :func:`other_protocol_message` (``protocol``: the protocol whose settings validated
    the ``protocol`` section) or the closest of ``valid`` (:func:`unknown_key_message`); any other error with
    pydantic's message and the value given."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in (*prefix, *first["loc"])) or "<root>"
    if source_of is not None:
        source = source_of(key)
    value = first.get("input")
    more = f" [+{err.error_count() - 1} more]" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden":
        elsewhere = other_protocol_message(key, protocol)
        if elsewhere:
            return ConfigError(f"{source}: {key}: {elsewhere}{more}")
        if valid:
            return ConfigError(f"{source}: {key}: {unknown_key_message(key, valid)}{more}")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return ConfigError(f"{source}: {key}: {first['msg']}{shown}{more}")


def schedule_keys(method_cls: type[Method]) -> list[str]:
    """Dotted keys of every schedule of ``method_cls``'s experiment config (``optim.lr``,
    ``method.teacher_momentum``, ...)."""
    return schedule_fields(ExperimentConfig) + schedule_fields(method_cls.Config, "method.")


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    """``tree[a][b][c]`` for ``key = "a.b.c"``; None where a part is missing or not a section."""
    node: Any = tree
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _schedule_starts(tree: dict[str, Any], schedules: list[str]) -> dict[str, Any]:
    """``tree`` with a number given for a schedule written as ``{start: number}``, so that merging it over
    another layer's schedule keeps that layer's other parts (``--set optim.lr=0.05`` over a recipe's
    warm-up)."""
    out = copy.deepcopy(tree)
    for key in schedules:
        value = _get_dotted(out, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            set_dotted(out, key, {"start": value})
    return out


# The parts of a schedule that make up its shape (what naming `shape` resets); `start` and `end` are its values.
_SHAPE_PARTS = ("warmup_epochs", "warmup_start", "step_epochs", "gamma", "delta", "milestones", "unit")


def _restart_shapes(merged: dict[str, Any], layer: dict[str, Any], schedules: list[str],
                    dotted: bool = False) -> None:
    """Where ``layer`` names a schedule's ``shape``, drop what the layers below gave the schedule's shape
    parts (:data:`_SHAPE_PARTS`: warm-up, step period, factor, unit): they become the :class:`Schedule`
    defaults (no warm-up, epochs) unless ``layer`` names them too; ``start`` and ``end`` are kept. So
    ``{shape: constant, start: 0.3}`` is constant, whatever warm-up a recipe or default had. ``dotted``:
    ``layer`` is ``--set`` overrides (``{"method.b_l.shape": ...}`` or ``{"method.b_l": {...}}``)."""
    for key in schedules:
        named = (f"{key}.shape" in layer or isinstance(layer.get(key), dict) and "shape" in layer[key]) if dotted \
            else isinstance(_get_dotted(layer, key), dict) and "shape" in _get_dotted(layer, key)
        if not named:
            continue
        below = _get_dotted(merged, key)
        values = {k: v for k, v in below.items() if k in ("start", "end")} if isinstance(below, dict) else {}
        defaults = {part: Schedule.model_fields[part].get_default(call_default_factory=True) for part in _SHAPE_PARTS}
        set_dotted(merged, key, {**values, **defaults})


def _recipe(method_cls: type[Method], method: str, tree: dict[str, Any], overrides: dict[str, Any],
            schedules: list[str], source: str) -> dict[str, Any]:
    """The method's recipe, with the named recipe ``method.recipe`` (``overrides`` first, then ``tree``) merged
    over it as a layer (a schedule whose shape it names starts afresh: :func:`_restart_shapes`). Raises
    ConfigError naming ``method.recipe`` and the known names for an unknown one."""
    name = overrides.get("method.recipe", _get_dotted(tree, "method.recipe"))
    if name is None:
        return method_cls.recipe
    if name not in method_cls.recipes:
        known = ", ".join(method_cls.recipes) or "none"
        raise ConfigError(f"{source}: method.recipe: {name!r} is not a recipe of {method} (known: {known})")
    base = copy.deepcopy(method_cls.recipe)
    _restart_shapes(base, method_cls.recipes[name], schedules)
    return deep_merge(base, method_cls.recipes[name])


def build_config(
    method: str,
    tree: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "config",
    override_source: str | None = None,
) -> ExperimentConfig:
    """Validate a nested config for ``method``.

    Args:
        method: registered method name (``cedr``); wins over ``method.name`` in ``tree``.
        tree: nested dict (e.g. from a YAML file), merged over the method's ``recipe``.
        overrides: ``{"dotted.key": value}`` applied last.
        source: what to call the input in error messages (a file name, ``--set``).
        override_source: what to call ``overrides`` in error messages when they differ from ``tree``'s
            source (e.g. ``--set`` after a config file); default ``source``.

    The ``protocol`` section is validated by the settings of the protocol its ``name`` names (null: the
    default of the method's task; :func:`pointtune.protocols.protocol_config_class`).

    Raises:
        ConfigError: unknown method, unknown key (with the closest valid keys, or the protocols that have a
            ``protocol.*`` key the named one lacks) or invalid value, in one line naming the key.
    """
    try:
        method_cls = get_method(method)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    schedules = schedule_keys(method_cls)
    merged = _schedule_starts(_recipe(method_cls, method, tree or {}, overrides or {}, schedules, source), schedules)
    tree = _schedule_starts(tree or {}, schedules)
    _restart_shapes(merged, tree, schedules)
    merged = deep_merge(merged, tree)
    _restart_shapes(merged, overrides or {}, schedules, dotted=True)
    for key, value in (overrides or {}).items():
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key in schedules and isinstance(value, dict):  # parts of a schedule over the layers below, as in a file
            below = _get_dotted(merged, key)
            value = {**(below if isinstance(below, dict) else {}), **value}
        set_dotted(merged, f"{key}.start" if key in schedules and is_number else key, value)
    merged.setdefault("method", {})
    if not isinstance(merged["method"], dict):
        raise ConfigError(f"{source}: method: expected a mapping of the method's hyperparameters")
    merged["method"]["name"] = method

    def source_of(key: str) -> str:
        if override_source and any(key == k or key.startswith(k + ".") or k.startswith(key + ".")
                                   for k in overrides or {}):
            return override_source
        return source

    section = merged.get("protocol")
    named = section.get("name") if isinstance(section, dict) else None
    try:
        method_cfg = method_cls.Config.model_validate(merged["method"])
    except ValidationError as err:
        raise _first_error(err, source, ("method",), config_keys(method, named), source_of) from None
    try:
        return ExperimentConfig.model_validate({**merged, "method": method_cfg})
    except ValidationError as err:
        raise _first_error(err, source, (), config_keys(method, named), source_of,
                           chosen_protocol(method_cls.task, named)) from None


@dataclass(frozen=True)
class PlannedPrerequisite:
    """A :class:`~pointtune.method.Prerequisite` of an experiment, as configs: ``config`` trains it, ``stand_in``
    is the experiment as it builds before the prerequisite exists (for the preflight check), and
    :meth:`then` the experiment once it does."""

    name: str
    key: str
    own_keys: tuple[str, ...]
    config: ExperimentConfig
    stand_in: ExperimentConfig
    experiment: ExperimentConfig

    def then(self, run_dir: str | Path) -> ExperimentConfig:
        """The experiment with :attr:`key` set to the prerequisite run's directory ``run_dir`` (absolute)."""
        return build_config(self.experiment.method.name, self.experiment.to_dict(),
                            {self.key: str(Path(run_dir).resolve())}, source=f"{self.name} run")


def plan_prerequisite(exp: ExperimentConfig) -> PlannedPrerequisite | None:
    """The run ``exp`` needs first (:meth:`Method.prerequisite <pointtune.method.Method.prerequisite>`), or None.

    Raises:
        ConfigError: the prerequisite's overrides do not make a valid config (names the key).
    """
    pre = exp.method_cls.prerequisite(exp.method)
    if pre is None:
        return None
    tree = exp.to_dict()
    name = exp.method.name
    return PlannedPrerequisite(
        pre.name, pre.key, pre.own_keys, build_config(name, tree, pre.overrides, source=f"{name} {pre.name}"),
        build_config(name, tree, pre.stand_in, source=f"{name} {pre.name}"), exp)


def config_from_file(
    method: str, path: str | Path | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """Build the config of ``pointtune train METHOD [--config FILE] [--set k=v ...]``.

    A file written by ``pointtune best`` names its method; a mismatch with ``method`` is an error.

    Raises:
        ConfigError: see :func:`load_yaml`, :func:`parse_override`, :func:`build_config`.
    """
    tree = load_yaml(path) if path else {}
    named = (tree.get("method") or {}).get("name") if isinstance(tree.get("method"), dict) else None
    if named and named != method:
        raise ConfigError(f"{path}: method.name is {named!r} but the command trains {method!r}")
    pairs = dict(parse_override(o) for o in overrides or [])
    return build_config(method, tree, pairs, source=str(path) if path else "--set", override_source="--set")
