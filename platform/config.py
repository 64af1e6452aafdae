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
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from pointtune.data import DataConfig
from pointtune.errors import ConfigError
from pointtune.method import Method, MethodConfig, get_method
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
    baseline of self-supervised methods. ``threads``: torch threads of each CPU worker; ``None``: the CPUs a
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


class ProtocolConfig(BaseModel):
    """The ``protocol.*`` section: which evaluation protocol judges the run, on which data, with what settings
    (:mod:`pointtune.protocols`).

    Fields:
        name: a registered protocol (``classification``, ``linear_svm``, ``few_shot``, ``part_seg``,
            ``scene_seg``; :func:`pointtune.protocols.protocol_names`); ``None`` is the default of the method's
            task kind (classification -> ``classification``, pretrain -> ``linear_svm``, segmentation ->
            ``scene_seg``).
        data: a dataset of the protocol's own (a :class:`~pointtune.data.DataConfig`), e.g. pretrain on
            ShapeNetPart, judge on ModelNet40. When set, the protocol fits on its training split, scores its
            validation split every evaluated epoch and its test split at the end; ``None`` uses ``data``.
        svm_c: linear SVM: LinearSVC's C, one value, or a list chosen from by stratified ``svm_folds``-fold
            cross-validation on the (L2-normalised) training features (SCL / DCGLR specs' recommendation).
        svm_folds: folds of that cross-validation (fewer when the training split has fewer clouds per class).
        svm_max_iter: LinearSVC's ``max_iter``; whether the final fit converged is reported (``svm_converged``).
        ways, shots: few-shot: every ``N``-way ``K``-shot setting of these lists is run (Point-MAE: 5/10-way,
            10/20-shot); a setting the data cannot fill is skipped with a printed line.
        folds: few-shot episodes (folds) per setting; accuracy is reported as mean and std over them.
        queries: few-shot query clouds per class and episode, drawn from the scored split (Point-MAE: 20).
        fewshot_c: few-shot: C of the LinearSVC fitted per episode on the support features.
        seed: seed of the few-shot episodes, of the SVM cross-validation folds and of the part-segmentation
            head (its weights, batch order, dropout, label fraction and point subsets).
        seg_head, seg_category_onehot, seg_dropout: part segmentation (``part_seg``): the head trained on frozen
            per-point features, ``1fc`` (one Linear to the 50 parts) or ``5fc`` (C -> 512 -> 256 -> 256 -> 128
            -> 50, BN + LeakyReLU(0.2) + dropout on the hidden layers): the SCL paper's two settings (SCL spec
            §4.5, A12 [REC]); the category one-hot concatenated to every point's feature (PointNet).
        seg_epochs, seg_lr, seg_lr_step, seg_lr_gamma, seg_weight_decay, seg_batch_size: the head's Adam and
            StepLR schedule (SCL spec §4.5 [REC]: 100 epochs, lr 1e-3 halved every 20 epochs, batch 32 shapes).
        seg_label_fraction: train the head on this seeded, category-stratified fraction of the training shapes
            (at least one per category): the semi-supervised setting (SCL Table 3: 0.01, 0.05).
        seg_fit_points: points of every training shape the head is trained on (a fixed seeded subset; the head is
            point-wise); ``None``: all of them.
        seg_finetune: fine-tuning the encoder with the head (SCL Table 3 "w/ fine-tune") is not implemented;
            only ``false`` is accepted.
        scene_whole: scene segmentation (``scene_seg``): score the test split on every original point of every
            scene (the crops of all grid passes, softmax votes per point: PointNeXt's whole-scene testing);
            ``false``: score it as the validation split (``scene_val``).
        scene_val: how the validation split is scored at evaluated epochs: ``pass`` (one grid pass per scene,
            covered by crops, scored on its one point per voxel: PointNeXt's validation), ``crops`` (the
            split's own fixed crops, cheapest) or ``whole`` (as the test split).
        scene_render, scene_render_points, scene_render_oblique: the first ``scene_render`` scenes of the scored
            split keep a seeded subset of ``scene_render_points`` scored points (coordinates, truth,
            prediction) as checkpoint arrays, rendered for the best checkpoint's MLflow artifacts (top-down,
            and oblique when set).
    """

    # Imported here so that this class is the only part of the module the protocols touch.
    from pydantic import field_validator

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(
        None, description="evaluation protocol: classification, linear_svm, few_shot, part_seg, scene_seg (null: "
        "the task's default)")
    data: DataConfig | None = Field(
        None, description="the protocol's own dataset, e.g. judge on ModelNet40 what pretrained on ShapeNet; keys "
        "as data.* (null: data)")
    svm_c: float | list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0],
        description="linear SVM: C, or a list chosen from by cross-validation on the training features")
    svm_folds: int = Field(5, ge=2, description="linear SVM: folds of that cross-validation")
    svm_max_iter: int = Field(
        5000, ge=100, description="linear SVM: LinearSVC max_iter (whether it converged is reported as svm_converged)")
    ways: list[int] = Field(
        default_factory=lambda: [5, 10], min_length=1, description="few-shot: the N of every N-way setting run")
    shots: list[int] = Field(
        default_factory=lambda: [10, 20], min_length=1, description="few-shot: the K of every K-shot setting run")
    folds: int = Field(10, ge=1, description="few-shot: episodes per setting (accuracy: mean and std over them)")
    queries: int = Field(20, ge=1, description="few-shot: query clouds per class and episode")
    fewshot_c: float = Field(1.0, gt=0, description="few-shot: C of the LinearSVC fitted per episode")
    seed: int = Field(0, ge=0, description="seed of the few-shot episodes, the SVM folds and the part_seg head")
    seg_head: Literal["1fc", "5fc"] = Field(
        "1fc", description="part_seg: head on the frozen per-point features: 1fc (Linear to the parts) or 5fc "
        "(C-512-256-256-128-50, BN, LeakyReLU, dropout), the SCL paper's two settings")
    seg_category_onehot: bool = Field(
        True, description="part_seg: concatenate the shape category's one-hot to every point's feature (PointNet)")
    seg_dropout: float = Field(0.5, ge=0, lt=1, description="part_seg: dropout on the hidden layers of the 5fc head")
    seg_epochs: int = Field(100, ge=1, description="part_seg: epochs of head training per evaluation")
    seg_lr: float = Field(1e-3, gt=0, description="part_seg: Adam learning rate of the head")
    seg_lr_step: int = Field(20, ge=1, description="part_seg: the head's learning rate is multiplied by "
                             "seg_lr_gamma every this many epochs")
    seg_lr_gamma: float = Field(0.5, gt=0, le=1, description="part_seg: that factor (StepLR)")
    seg_weight_decay: float = Field(0.0, ge=0, description="part_seg: Adam weight decay of the head")
    seg_batch_size: int = Field(32, ge=1, description="part_seg: shapes per head training batch")
    seg_label_fraction: float = Field(
        1.0, gt=0, le=1, description="part_seg: train the head on this seeded, category-stratified fraction of the "
        "training shapes, at least one per category (semi-supervised: 0.01, 0.05)")
    seg_fit_points: int | None = Field(
        512, ge=1, description="part_seg: points per training shape the head trains on (fixed seeded subset; "
        "null: all); bounds the memory of the stored features")
    seg_finetune: bool = Field(
        False, description="part_seg: fine-tune the encoder with the head; not implemented (only false)")
    scene_whole: bool = Field(
        True, description="scene_seg: score the test split on every original point (votes over the crops of all "
        "grid passes); false: as scene_val")
    scene_val: Literal["pass", "crops", "whole"] = Field(
        "pass", description="scene_seg: validation scoring: pass (one grid pass per scene, covered by crops), crops "
        "(the split's fixed crops) or whole (every original point)")
    scene_render: int = Field(
        4, ge=0, description="scene_seg: scenes of the scored split kept for the best checkpoint's renders (0: none)")
    scene_render_points: int = Field(
        20000, ge=1, description="scene_seg: scored points per rendered scene (a seeded subset)")
    scene_render_oblique: bool = Field(
        True, description="scene_seg: renders add an oblique view below the top-down one")

    @field_validator("name")
    @classmethod
    def _known_protocol(cls, value: str | None) -> str | None:
        from pointtune.protocols import protocol_names

        if value is not None and value not in protocol_names():
            raise ValueError(f"unknown protocol {value!r}; known protocols: {', '.join(protocol_names())} "
                             "(null: the default of the method's task)")
        return value

    @field_validator("svm_c")
    @classmethod
    def _positive_cs(cls, value: float | list[float]) -> float | list[float]:
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ValueError("give one C or a non-empty list of Cs, e.g. [0.01, 0.1, 1, 10]")
        if any(not c > 0 for c in values):
            raise ValueError("every C must be > 0")
        if isinstance(value, list) and len(set(values)) < len(values):
            raise ValueError("a C is listed more than once")
        return value

    @field_validator("seg_finetune")
    @classmethod
    def _no_finetune(cls, value: bool) -> bool:
        if value:
            raise ValueError("fine-tuning the encoder in the part_seg protocol is not implemented: it judges frozen "
                             "per-point features (the paper's 'w/o fine-tune'); set it false")
        return value

    @field_validator("ways", "shots")
    @classmethod
    def _counts(cls, value: list[int], info) -> list[int]:
        low = 2 if info.field_name == "ways" else 1
        if any(v < low for v in value):
            raise ValueError(f"every entry must be an integer >= {low}")
        if len(set(value)) < len(value):
            raise ValueError("an entry is listed more than once")
        return value


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
        ConfigError: no ``=``, an empty key, or a value that is not valid YAML (e.g. ``[0.1``); names the item.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. optim.lr=0.01")
    if not raw.strip():
        return key.strip(), None
    try:
        return key.strip(), yaml.safe_load(raw)
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


def config_keys(method: str) -> list[str]:
    """Every valid dotted key of ``method``'s experiment config, sections included (``optim``,
    ``optim.lr``, ``method.backbone.name``, ...), in schema order.

    ``method.backbone`` also accepts the backbone's constructor arguments (``method.backbone.k``), which are
    not listed: they are checked when the backbone is built (see :mod:`pointtune.preflight`).

    Raises:
        ConfigError: unknown method.
    """
    try:
        method_cls = get_method(method)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    keys = []
    for key in _model_keys(ExperimentConfig):
        if key == "method":
            keys += ["method", *_model_keys(method_cls.Config, "method.")]
        elif not key.startswith("method."):
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


def _first_error(
    err: ValidationError, source: str, prefix: tuple[str, ...] = (), valid: list[str] | None = None,
    source_of: Callable[[str], str] | None = None,
) -> ConfigError:
    first = err.errors()[0]
    key = ".".join(str(p) for p in (*prefix, *first["loc"])) or "<root>"
    if source_of is not None:
        source = source_of(key)
    value = first.get("input")
    more = f" [+{err.error_count() - 1} more]" if err.error_count() > 1 else ""
    if first["type"] == "extra_forbidden" and valid:
        return ConfigError(f"{source}: {key}: {unknown_key_message(key, valid)}{more}")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return ConfigError(f"{source}: {key}: {first['msg']}{shown}{more}")


def schedule_keys(method_cls: type[Method]) -> list[str]:
    """Dotted keys of every schedule of ``method_cls``'s experiment config (``optim.lr``,
    ``method.teacher_momentum``, ...)."""
    return schedule_fields(ExperimentConfig) + schedule_fields(method_cls.Config, "method.")


def _schedule_starts(tree: dict[str, Any], schedules: list[str]) -> dict[str, Any]:
    """``tree`` with a number given for a schedule written as ``{start: number}``, so that merging it over
    another layer's schedule keeps that layer's other parts (``--set optim.lr=0.05`` over a recipe's
    warm-up)."""
    out = copy.deepcopy(tree)
    for key in schedules:
        *sections, leaf = key.split(".")
        node = out
        for part in sections:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(leaf) if isinstance(node, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[leaf] = {"start": value}
    return out


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

    Raises:
        ConfigError: unknown method, unknown key (with the closest valid keys) or invalid value, in one line
            naming the key.
    """
    try:
        method_cls = get_method(method)
    except KeyError as err:
        raise ConfigError(str(err.args[0])) from None
    schedules = schedule_keys(method_cls)
    merged = deep_merge(_schedule_starts(getattr(method_cls, "recipe", {}), schedules),
                        _schedule_starts(tree or {}, schedules))
    for key, value in (overrides or {}).items():
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
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

    try:
        method_cfg = method_cls.Config.model_validate(merged["method"])
    except ValidationError as err:
        raise _first_error(err, source, ("method",), config_keys(method), source_of) from None
    try:
        return ExperimentConfig.model_validate({**merged, "method": method_cfg})
    except ValidationError as err:
        raise _first_error(err, source, (), config_keys(method), source_of) from None


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
