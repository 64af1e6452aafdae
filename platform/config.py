"""Experiment configuration: one validated object from defaults, a YAML file and ``key=value`` overrides.

Precedence, lowest first: the platform defaults below < the method's ``recipe`` (its paper's training
setup) < ``--config FILE`` < ``--set key=value`` < values sampled by a sweep < explicit CLI flags
(``--epochs``, ``--dataset``, ``--data-root``).

Keys are dotted paths into the nested config, e.g. ``optim.lr``, ``method.lambda_con``,
``method.backbone.k``, ``data.classes``. Every error names the key (and the file) at fault.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from pointtune.data import DataConfig
from pointtune.method import Method, MethodConfig, get_method


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message is one line naming the key at fault."""


class OptimConfig(BaseModel):
    """Optimizer and learning-rate schedule.

    ``schedule``: ``cosine`` anneals ``lr`` to ``min_lr`` over the run (stepped per epoch); ``step``
    multiplies by ``gamma`` every ``step_size`` epochs; ``constant`` keeps ``lr``.
    """

    model_config = ConfigDict(extra="forbid")
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    min_lr: float = Field(1e-3, ge=0)
    step_size: int = Field(20, ge=1)
    gamma: float = Field(0.7, gt=0, le=1)


class TrainConfig(BaseModel):
    """Loop settings shared by every method.

    ``batch_size`` is per worker (Ray Train data parallelism multiplies it by the number of workers).
    ``amp`` takes effect on CUDA only. ``eval_every`` is in epochs; the last epoch is always evaluated.
    """

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=2)
    eval_batch_size: int = Field(64, ge=1)
    loader_workers: int = Field(0, ge=0)
    drop_last: bool = True
    amp: bool = True
    seed: int = 0
    grad_clip: float | None = Field(None, gt=0)
    eval_every: int = Field(1, ge=1)


class ProtocolConfig(BaseModel):
    """Settings of the evaluation protocols (self-supervised methods are judged by a linear SVM on frozen
    global features: Point-MAE / OcCo protocol; ``svm_c`` is LinearSVC's C)."""

    model_config = ConfigDict(extra="forbid")
    svm_c: float = Field(1.0, gt=0)
    svm_max_iter: int = Field(5000, ge=100)


class ExperimentConfig(BaseModel):
    """Everything one training run needs. ``method`` is validated by the method's own ``Config``."""

    model_config = ConfigDict(extra="forbid")
    method: SerializeAsAny[MethodConfig]  # serialise the method's own fields, not just the base's
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    protocol: ProtocolConfig = ProtocolConfig()

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
        ConfigError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. optim.lr=0.01")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping.

    Raises:
        ConfigError: missing file, invalid YAML, or a top level that is not a mapping; names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _first_error(err: ValidationError, source: str, prefix: tuple[str, ...] = ()) -> ConfigError:
    first = err.errors()[0]
    key = ".".join(str(p) for p in (*prefix, *first["loc"])) or "<root>"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    more = f" [+{err.error_count() - 1} more]" if err.error_count() > 1 else ""
    return ConfigError(f"{source}: {key}: {first['msg']}{shown}{more}")


def build_config(
    method: str,
    tree: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "config",
) -> ExperimentConfig:
    """Validate a nested config for ``method``.

    Args:
        method: registered method name (``cedr``); wins over ``method.name`` in ``tree``.
        tree: nested dict (e.g. from a YAML file), merged over the method's ``recipe``.
        overrides: ``{"dotted.key": value}`` applied last.
        source: what to call the input in error messages (a file name, ``--set``).

    Raises:
        ConfigError: unknown method, unknown key or invalid value, in one line naming the key.
    """
    try:
        method_cls = get_method(method)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    merged = deep_merge(getattr(method_cls, "recipe", {}), tree or {})
    for key, value in (overrides or {}).items():
        set_dotted(merged, key, value)
    merged.setdefault("method", {})
    if not isinstance(merged["method"], dict):
        raise ConfigError(f"{source}: method: expected a mapping of the method's hyperparameters")
    merged["method"]["name"] = method
    try:
        method_cfg = method_cls.Config.model_validate(merged["method"])
    except ValidationError as err:
        raise _first_error(err, source, ("method",)) from None
    try:
        return ExperimentConfig.model_validate({**merged, "method": method_cfg})
    except ValidationError as err:
        raise _first_error(err, source) from None


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
    return build_config(method, tree, pairs, source=str(path) if path else "--set")
