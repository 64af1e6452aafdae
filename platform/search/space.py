"""Search spaces: a YAML file per method, validated before any compute, turned into an Optuna
define-by-run function for Ray Tune's ``OptunaSearch``.

File format (``search_spaces/cedr.yaml``)::

    method: cedr
    extends: other.yaml            # optional: start from another space; entries here win, `null` deletes
    objective: {metric: val/OA, mode: max}
    params:
      optim.lr:            {type: float, low: 0.01, high: 0.2, log: true}
      method.temperature:  {type: categorical, choices: [0.05, 0.1, 0.2, 0.5, 1.0]}
      method.use_eaa:      {type: categorical, choices: [true, false]}
      method.ent_high:     {type: float, low: 1.5, high: 3.5, when: {method.use_eaa: true}}
      train.batch_size:    {type: int, low: 16, high: 64, step: 16}
      method.label_smoothing: {type: fixed, value: 0.2}
      method.teacher_momentum.start: {type: float, low: 0.99, high: 0.9995, perturb: {factor: [0.999, 1.001]}}
      method.student_temperature:    {type: categorical, choices: [0.05, 0.1, 0.2], perturb: resample}
      method.b_l.step_epochs: {type: float, low: 0.02, high: 0.1}
      method.b_u.step_epochs: {type: same, as: method.b_l.step_epochs}

``objective`` may also be a list, e.g. ``[{metric: val/OA, mode: max}, {metric: cost/epoch_s, mode: min}]``
(each entry names both): a multi-objective search (Optuna's multi-objective TPE, the Pareto front in the
summary). The first objective is the primary one: it selects each trial's epoch (its checkpoint and the
values of the others, :class:`pointtune.objective.BestEpoch`), and ASHA stops trials on it.

Keys are dotted config keys (see :mod:`pointtune.config`). ``when`` makes a parameter conditional: it is
sampled only if every named parameter (defined earlier in the file) took one of the given values.
``perturb`` marks what population-based training (``pointtune sweep --scheduler pbt``,
:mod:`pointtune.search.pbt`) may change when a trial exploits another: multiply by one of two factors
(numbers; clipped to ``[low, high]``), or ``resample`` from the parameter's distribution. ASHA sweeps
ignore it. ``same`` ties a key to an earlier parameter: it takes the value that parameter took (two
schedules that must share their warm-up and period, such as SCL's bounds ``b_l`` and ``b_u``); it is not
searched on its own, and PBT changes it with its source.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pointtune.config import ConfigError, build_config, load_yaml
from pointtune.method import Task
from pointtune.objective import Objective

TYPES = ("float", "int", "categorical", "fixed", "same")
_ALLOWED = {
    "float": {"type", "low", "high", "log", "step", "when", "perturb"},
    "int": {"type", "low", "high", "log", "step", "when", "perturb"},
    "categorical": {"type", "choices", "when", "perturb"},
    "fixed": {"type", "value", "when"},
    "same": {"type", "as", "when"},
}


@dataclass(frozen=True)
class Param:
    """One searched (or fixed, or tied) hyperparameter. ``when`` maps earlier keys to their allowed values;
    ``perturb`` is how PBT may change it: ``None``, ``"resample"`` or the pair of factors ``(low, high)``;
    ``same_as`` (type ``same``) the earlier key whose value it takes."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    value: Any = None
    when: dict[str, tuple] = field(default_factory=dict)
    perturb: str | tuple[float, float] | None = None
    same_as: str | None = None

    def active(self, sampled: dict[str, Any]) -> bool:
        """Whether every condition holds for the values sampled so far."""
        return all(key in sampled and sampled[key] in allowed for key, allowed in self.when.items())

    def suggest(self, trial) -> Any:
        """Sample this parameter from an Optuna ``trial`` (fixed values are returned as they are)."""
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        return self.value

    def domain(self):
        """The parameter as a Ray Tune search domain (``tune.loguniform``, ``tune.choice``, ...), for the
        initial population and the resampling of population-based training; a fixed value as it is."""
        from ray import tune

        if self.type == "categorical":
            return tune.choice(list(self.choices))
        if self.type == "fixed":
            return self.value
        if self.type == "int":
            if self.log:
                return tune.lograndint(int(self.low), int(self.high) + 1)
            return tune.qrandint(int(self.low), int(self.high), int(self.step or 1))
        if self.log:
            return tune.loguniform(self.low, self.high)
        return tune.quniform(self.low, self.high, self.step) if self.step else tune.uniform(self.low, self.high)

    def clip(self, value: Any) -> Any:
        """``value`` held within ``[low, high]`` (and an integer for ``int``), after a PBT perturbation."""
        if self.type not in ("float", "int"):
            return value
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.type == "int" else float(value)

    def corners(self) -> list[Any]:
        """Values that span the parameter (bounds or every choice), used to validate it against the config."""
        if self.type in ("float", "int"):
            return [self.low, self.high]
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "same":
            return []  # its source's values: SearchSpace.resolve
        return [self.value]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space for one method.

    Attributes:
        objectives: one objective, or several (a multi-objective search); the first is the primary one.
    """

    method: str
    objectives: tuple[Objective, ...]
    params: tuple[Param, ...]
    source: str

    @property
    def metric(self) -> str:
        """The primary objective's metric: what selects each trial's epoch, ranks trials and drives ASHA."""
        return self.objectives[0].metric

    @property
    def mode(self) -> str:
        """The primary objective's mode (``max`` or ``min``)."""
        return self.objectives[0].mode

    @property
    def multi_objective(self) -> bool:
        """Whether the search has several objectives."""
        return len(self.objectives) > 1

    @property
    def secondary(self) -> tuple[str, ...]:
        """The metrics of the objectives after the first (read at the epoch the first selects)."""
        return tuple(o.metric for o in self.objectives[1:])

    def describe_objective(self) -> str:
        """The objectives in words, e.g. ``max val/OA`` or ``max val/OA, min cost/params``."""
        return ", ".join(f"{o.mode} {o.metric}" for o in self.objectives)

    def define_by_run(self, trial) -> dict[str, Any]:
        """Optuna define-by-run function: samples the active parameters, returns the fixed ones."""
        sampled: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for param in self.params:
            if not param.active({**sampled, **fixed}):
                continue
            if param.type == "fixed":
                fixed[param.key] = param.value
            elif param.type == "same":
                fixed[param.key] = {**sampled, **fixed}.get(param.same_as)
            else:
                sampled[param.key] = param.suggest(trial)
        return fixed

    def searched(self) -> list[str]:
        """Keys that are sampled (not fixed, not tied to another)."""
        return [p.key for p in self.params if p.type not in ("fixed", "same")]

    def resolve(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` with every ``same`` parameter set to its source's value (where the source is in
        ``values``; a tied key whose source is absent is dropped)."""
        out = dict(values)
        for param in self.params:
            if param.type == "same":
                out.pop(param.key, None)
                if param.same_as in out:
                    out[param.key] = out[param.same_as]
        return out

    def fixed_values(self) -> dict[str, Any]:
        """The values every trial gets: the ``fixed`` parameters without conditions (and keys tied to them)."""
        return self.resolve({p.key: p.value for p in self.params if p.type == "fixed" and not p.when})

    def first_corner(self) -> dict[str, Any]:
        """One value of every parameter (its first corner: low bound, first choice, fixed value), tied keys
        resolved: a configuration every trial shape can be checked with."""
        return self.resolve({p.key: p.corners()[0] for p in self.params if p.type != "same"})

    def active_values(self, values: dict[str, Any]) -> dict[str, Any]:
        """``values`` without the parameters whose ``when`` conditions fail (a sampler that draws every
        parameter, like the initial population of PBT, draws inactive ones too); other keys pass."""
        params = {p.key: p for p in self.params}
        kept: dict[str, Any] = {}
        for key, value in values.items():
            if key not in params or params[key].active(kept):
                kept[key] = value
        return kept


def _err(source: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {msg}")


def _number(source: str, key: str, spec: dict, name: str, kind: str) -> float:
    value = spec.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(source, key, f"'{name}' must be a number, got {value!r}")
    if kind == "int" and not float(value).is_integer():
        raise _err(source, key, f"'{name}' must be an integer for type int, got {value!r}")
    return value


def _parse_param(source: str, key: str, spec: Any, earlier: dict[str, Param]) -> Param:
    if not isinstance(spec, dict):
        raise _err(source, key, f"expected a mapping like {{type: float, low: ..., high: ...}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise _err(source, key, f"unknown type {kind!r}; expected one of {', '.join(TYPES)}")
    unknown = sorted(set(spec) - _ALLOWED[kind])
    if unknown:
        raise _err(source, key, f"unknown field {unknown[0]!r} for type {kind}")
    when = {}
    conditions = spec.get("when") or {}
    if not isinstance(conditions, dict):
        raise _err(source, key, f"'when' must be a mapping of earlier parameters to their values, e.g. "
                                f"{{method.use_eaa: true}}, got {conditions!r}")
    for cond_key, allowed in conditions.items():
        if cond_key not in earlier:
            raise _err(source, key, f"condition on {cond_key!r}, which is not a parameter defined before it")
        when[cond_key] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    if kind == "same":
        target = spec.get("as")
        if target not in earlier:
            raise _err(source, key, f"same: 'as' must name a parameter defined before it, got {target!r}")
        if earlier[target].type == "same":
            target = earlier[target].same_as
        return Param(key, kind, same_as=target, when=when)
    perturb = _perturbation(source, key, spec.get("perturb"), kind)
    if kind in ("float", "int"):
        low, high = _number(source, key, spec, "low", kind), _number(source, key, spec, "high", kind)
        if low > high:
            raise _err(source, key, f"low {low} > high {high}")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise _err(source, key, f"'log' must be true or false, got {log!r}")
        if log and low <= 0:
            raise _err(source, key, f"log scale needs low > 0, got {low}")
        step = spec.get("step")
        if step is not None:
            step = _number(source, key, spec, "step", kind)
            if step <= 0 or log:
                raise _err(source, key, "'step' must be > 0 and cannot be combined with log")
        return Param(key, kind, low=low, high=high, log=log, step=step, when=when, perturb=perturb)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _err(source, key, f"'choices' must be a non-empty list, got {choices!r}")
        return Param(key, kind, choices=tuple(choices), when=when, perturb=perturb)
    if "value" not in spec:
        raise _err(source, key, "type fixed needs a 'value'")
    return Param(key, kind, value=spec["value"], when=when)


def _perturbation(source: str, key: str, spec: Any, kind: str) -> str | tuple[float, float] | None:
    """``perturb:`` of a parameter: ``resample`` or ``{factor: [a, b]}`` (numbers > 0, numeric types only)."""
    if spec is None or spec == "resample":
        return spec
    if kind in ("float", "int") and isinstance(spec, dict) and set(spec) == {"factor"}:
        factors = spec["factor"]
        if (isinstance(factors, list) and len(factors) == 2
                and all(isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in factors)):
            return (float(min(factors)), float(max(factors)))
    allowed = "resample" if kind == "categorical" else "resample or {factor: [0.8, 1.2]} (two numbers > 0)"
    raise _err(source, key, f"perturb: expected {allowed}, got {spec!r}")


def _params_of(path: Path, tree: dict[str, Any]) -> dict[str, Any]:
    params = tree.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: params: expected a mapping of dotted config keys, got {type(params).__name__}")
    return params


def load_space_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a search-space file with ``extends`` resolved (parent entries, then this file's).

    Raises:
        ConfigError: the file (or a parent) is missing or not a YAML mapping, ``extends`` is not a path to an
            existing file, ``extends`` forms a cycle, or ``params`` is not a mapping; names the file.
    """
    tree = load_yaml(path)
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"{path}: extends: expected the path of another search-space file (relative to this "
                          f"one), got {parent!r}")
    parent_path = (path.parent / parent).resolve()
    if parent_path in seen or parent_path == path.resolve():
        raise ConfigError(f"{path}: extends: cycle through {parent_path}")
    if not parent_path.is_file():
        raise ConfigError(f"{path}: extends: {parent!r}: no such search-space file ({parent_path})")
    base = load_space_tree(parent_path, seen + (path.resolve(),))
    params = dict(_params_of(parent_path, base))
    for key, spec in _params_of(path, tree).items():
        if spec is None:
            params.pop(key, None)
        else:
            params[key] = spec
    return {**base, **{k: v for k, v in tree.items() if k != "params"}, "params": params}


def load_search_space(path: str | Path, method: str | None = None) -> SearchSpace:
    """Read and validate a search-space file.

    Every parameter is checked against the method's config schema with each of its bounds and choices, so
    an unknown key, a wrong type or an out-of-range value fails here, before Ray starts.

    Args:
        path: the YAML file.
        method: the method the sweep runs; must match the file's ``method``.

    Raises:
        ConfigError: one line naming the file and the key at fault.
    """
    from pointtune.method import get_method
    from pointtune.protocols import resolve_protocol

    path = Path(path)
    source = str(path)
    tree = load_space_tree(path)
    unknown = sorted(set(tree) - {"method", "objective", "params"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r} (expected method, objective, params)")
    file_method = tree.get("method")
    if method and file_method and file_method != method:
        raise ConfigError(f"{source}: method: file is for {file_method!r}, not {method!r}")
    name = method or file_method
    if not name:
        raise ConfigError(f"{source}: method: missing")
    try:
        method_cls = get_method(name)
    except KeyError as err:
        raise ConfigError(f"{source}: method: {err.args[0]}") from None
    fixed_protocol = (tree.get("params") or {}).get("protocol.name")  # a space may fix the protocol
    protocol = fixed_protocol.get("value") if isinstance(fixed_protocol, dict) else None
    try:
        selected = resolve_protocol(method_cls.task, protocol)
        default_metric, default_mode = selected.objective(selected.settings())
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    objectives = _parse_objectives(source, tree.get("objective"), (default_metric, default_mode))
    listed = isinstance(tree.get("objective"), list)
    for i, objective in enumerate(objectives):
        where = f"objective[{i}]" if listed else "objective"
        check_objective(objective.metric, method_cls.task, f"{source}: {where}.metric", protocol=protocol)
    raw = tree.get("params")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: params: expected a non-empty mapping of dotted config keys")
    params: dict[str, Param] = {}
    for key, spec in raw.items():
        params[key] = _parse_param(source, key, spec, params)
    for key in params:  # optim.lr and optim.lr.start: which one a trial trains with would depend on the order
        part = next((other for other in params if other.startswith(key + ".")), None)
        if part:
            raise ConfigError(f"{source}: {part}: a part of {key}, which the space also sets; give {key} whole or "
                              f"its parts, not both")
    space = SearchSpace(name, objectives, tuple(params.values()), source)
    _check_against_schema(space)
    return space


def _parse_objectives(source: str, spec: Any, default: tuple[str, str]) -> tuple[Objective, ...]:
    """The ``objective`` of a space file: a mapping (``metric`` and ``mode`` default to ``default``, the
    protocol's), absent (``default``), or a non-empty list of mappings that each name both, with distinct
    metrics. Metric names are checked against the method by the caller.

    Raises:
        ConfigError: one line naming the file and ``objective`` (``objective[i]`` for a list's entry).
    """
    example = f"{{metric: {default[0]}, mode: {default[1]}}}"
    if spec is None or isinstance(spec, dict):
        return (_parse_one_objective(source, "objective", spec or {}, default),)
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{source}: objective: expected a mapping like {example} or a non-empty list of them, "
                          f"got {spec!r}")
    objectives = []
    for i, entry in enumerate(spec):
        where = f"objective[{i}]"
        if not isinstance(entry, dict) or not {"metric", "mode"} <= set(entry):
            raise ConfigError(f"{source}: {where}: each objective of a list names its metric and mode, e.g. "
                              f"{{metric: cost/epoch_s, mode: min}}, got {entry!r}")
        objectives.append(_parse_one_objective(source, where, entry, default))
    metrics = [o.metric for o in objectives]
    twice = next((m for i, m in enumerate(metrics) if m in metrics[:i]), None)
    if twice:
        raise ConfigError(f"{source}: objective[{metrics.index(twice, metrics.index(twice) + 1)}].metric: "
                          f"{twice!r} is an objective already")
    return tuple(objectives)


def _parse_one_objective(source: str, where: str, spec: dict, default: tuple[str, str]) -> Objective:
    """One ``{metric, mode}`` mapping (missing entries from ``default``).

    Raises:
        ConfigError: an unknown key, a mode other than max or min, or a metric that is not a non-empty name.
    """
    unknown = sorted(set(spec) - {"metric", "mode"})
    if unknown:
        raise ConfigError(f"{source}: {where}: unknown key {unknown[0]!r} (expected metric, mode)")
    metric, mode = spec.get("metric", default[0]), spec.get("mode", default[1])
    if mode not in ("max", "min"):
        raise ConfigError(f"{source}: {where}.mode: expected max or min, got {mode!r}")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{source}: {where}.metric: expected a metric name such as {default[0]}")
    return Objective(metric, mode)


# Metrics the training loop reports every epoch besides the protocol's ``val/*`` (see pointtune.train.loop).
EPOCH_METRICS = ("epoch", "lr", "cost/epoch_s", "cost/params", "cost/peak_memory_mb", "train/loss")


def objective_metrics(
    task: Task, class_names: list[str] | None = None, loss_terms: list[str] | None = None,
    protocol: str | None = None, protocol_cfg: Any = None,
) -> list[str]:
    """The metric names a run of a ``task`` method reports, i.e. what an objective may name.

    ``val/<m>`` for each metric of the selected protocol (:meth:`pointtune.protocols.Protocol.metrics`
    under ``protocol_cfg``: e.g. ``val/svm_acc``, ``val/svm_C``, ``val/fewshot/5way10shot``) and
    ``val/acc/<class>`` when the protocol reports per-class accuracy; ``epoch``, ``lr``, ``cost/*``;
    ``train/loss`` and ``train/<term>`` for each loss term the method's ``forward`` returns (``train/acc``
    when it returns ``logits``). Unknown parts are shown as patterns: ``val/acc/<class>`` without
    ``class_names``, ``train/<loss term>`` without ``loss_terms``.

    Args:
        protocol: ``protocol.name``; None: ``protocol_cfg.name``, else the default protocol of ``task``.
        protocol_cfg: the ``protocol`` section, the selected protocol's settings (an instance of its ``Config``;
            its default settings when None), which decide e.g. the few-shot settings.

    Raises:
        ConfigError: no evaluation protocol for ``task``, or ``protocol`` cannot judge it.
        TypeError: ``protocol_cfg`` is another protocol's settings.
    """
    from pointtune.protocols import resolve_protocol

    selected = resolve_protocol(task, protocol or getattr(protocol_cfg, "name", None))
    names = [f"val/{m}" for m in selected.metrics(selected.settings(protocol_cfg))]
    if selected.per_class:
        names += [f"val/acc/{c}" for c in class_names] if class_names is not None else ["val/acc/<class>"]
    names += list(EPOCH_METRICS)
    if loss_terms is None:
        names.append("train/<loss term>")
    else:
        names += [f"train/{t}" for t in loss_terms if t not in ("loss", "logits")]
        names += ["train/acc"] if "logits" in loss_terms else []
    return names


def check_objective(
    metric: str, task: Task, where: str, class_names: list[str] | None = None, loss_terms: list[str] | None = None,
    protocol: str | None = None, protocol_cfg: Any = None,
) -> None:
    """Check that ``metric`` is one that runs of a ``task`` method judged by the selected protocol report (see
    :func:`objective_metrics`; ``val/acc/<x>`` and ``train/<x>`` are accepted for any ``x`` when
    ``class_names`` / ``loss_terms`` are not given).

    Args:
        metric: e.g. ``val/OA``.
        task: the method's task kind.
        where: prefix of the error message (file and key, e.g. ``space.yaml: objective.metric``).
        class_names: the dataset's classes, if known.
        loss_terms: keys of the method's ``forward`` output, if known (from :func:`pointtune.preflight.preflight`).
        protocol: ``protocol.name`` (None: ``protocol_cfg.name``, else the task's default protocol).
        protocol_cfg: the ``protocol`` section (the selected protocol's settings), if known.

    Raises:
        ConfigError: ``metric`` is not reported; the message names the protocol, lists the valid names and the
            closest one, and says which other protocol of the task reports ``metric`` (under its default
            settings) if one does.
        TypeError: ``protocol_cfg`` is another protocol's settings.
    """
    from pointtune.protocols import protocol_names, resolve_protocol

    selected = resolve_protocol(task, protocol or getattr(protocol_cfg, "name", None))
    valid = objective_metrics(task, class_names, loss_terms, selected.name, protocol_cfg)
    if metric in valid:
        return
    if class_names is None and selected.per_class and metric.startswith("val/acc/") and len(metric) > len("val/acc/"):
        return
    if loss_terms is None and metric.startswith("train/") and len(metric) > len("train/"):
        return
    others = []
    for name in protocol_names():
        try:
            other = resolve_protocol(task, name)
        except ConfigError:
            continue
        if name != selected.name and metric.startswith("val/") and metric[4:] in other.metrics(other.settings()):
            others.append(name)
    elsewhere = f"; reported by the {others[0]} protocol (protocol.name: {others[0]})" if others else ""
    close = difflib.get_close_matches(metric, valid, n=1, cutoff=0.5)
    hint = f"; closest: {close[0]}" if close else ""
    raise ConfigError(f"{where}: {metric!r} is not reported by runs of the {selected.name} protocol "
                      f"(task {task.value}){elsewhere}{hint}; valid: {', '.join(valid)}")


def _check_against_schema(space: SearchSpace) -> None:
    base = space.first_corner()
    for param in space.params:
        for value in param.corners():
            try:
                build_config(space.method, overrides=space.resolve({**base, param.key: value}), source=space.source)
            except ConfigError as err:
                raise ConfigError(f"{err} [checking {param.key}={value!r}]") from None
