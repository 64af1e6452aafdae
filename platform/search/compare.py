"""A comparison (``pointtune compare SPEC.yaml``): methods, backbones or configurations side by side at an equal
budget, on the same data and protocol, each entry's result a seed study (:mod:`pointtune.search.study`).

The spec (YAML, :class:`CompareSpec`) names the comparison, the seeds and the epochs of every run, the budget
of the entries that search (``budget``: trials and ASHA grace period, the same for each), overrides shared by
all entries (``set``) and the entries: ``name -> {method, config, set, space}``. An entry with a ``space`` is
swept (:func:`~pointtune.search.sweep.run_sweep`: Optuna TPE + ASHA, ``budget.trials`` trials of ``epochs``
epochs), then its best trial's configuration (as its best checkpoint holds it) goes through a seed study; an
entry without one goes straight to a study of its configuration. Every study trains its one row with
``train.seed`` 0 .. ``seeds``-1 for ``epochs`` epochs and scores the test split at the epoch validation selected.

Before anything runs, every entry's configuration is built (as its runs will build it: its space's fixed values
included) and the entries must share the dataset (:data:`DATA_KEYS`), the protocol (its name and
``protocol.data``) and the objective that selects checkpoints; otherwise one line names the two entries and
what differs.

The compare directory: ``compare.yaml`` (the spec as resolved), ``compare_run.yaml`` (its MLflow parent run),
``<entry>/sweep/`` and ``<entry>/study/`` (a sweep and a study directory each), ``mlflow.db`` and
``mlartifacts/`` (one store for every entry, unless ``--mlflow-uri``), and the leaderboard written by
:mod:`pointtune.search.compare_report`. Running the same command again skips what finished and resumes an
interrupted sweep or study (``pointtune resume``'s :func:`~pointtune.search.sweep.resume_sweep`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pointtune.config import ConfigError, ExperimentConfig, build_config, load_yaml
from pointtune.search.space import SearchSpace, load_search_space
from pointtune.search.spec import SweepSpec, trial_config
from pointtune.tracking import flatten

# The keys that fix which clouds a run trains, validates and tests on: equal for every entry of a comparison.
DATA_KEYS = ("data.name", "data.root", "data.variant", "data.classes", "data.val_fraction", "data.split_seed",
             "data.synthetic_per_class", "data.synthetic_num_classes")
# The keys a spec's `set` gives as paths relative to the spec file (as `config` and `space` are).
DATASET_ROOTS = ("data.root", "protocol.data.root")
# The keys a comparison decides itself: `epochs` and the study's seeds.
BUDGET_KEYS = ("train.epochs", "train.seed")
SPEC_FILE = "compare.yaml"
RUN_FILE = "compare_run.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Budget(BaseModel):
    """What every entry with a search space spends on its sweep: ``trials`` trials (of the spec's ``epochs``
    epochs each) and ASHA's ``grace_period`` (epochs before a trial may be stopped)."""

    model_config = ConfigDict(extra="forbid")
    trials: int = Field(ge=1)
    grace_period: int = Field(1, ge=1)


class Entry(BaseModel):
    """One contestant: ``method`` (a registered method), an optional ``config`` file (a YAML config of that
    method), ``set`` (dotted key -> value, over the spec's shared ``set``) and an optional search ``space``
    (swept first, then its best configuration studied)."""

    model_config = ConfigDict(extra="forbid")
    method: str
    config: str | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    space: str | None = None


class CompareSpec(BaseModel):
    """A comparison as its YAML file states it (see the module docstring); ``source`` is the file."""

    model_config = ConfigDict(extra="forbid")
    name: str
    seeds: int = Field(5, ge=2)
    epochs: int = Field(ge=1)
    budget: Budget | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    entries: dict[str, Entry] = Field(min_length=2)
    source: str = Field("", exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("letters, digits, '_', '.' and '-' only (it names the default directory)")
        return value

    @field_validator("entries")
    @classmethod
    def _entry_names(cls, value: dict[str, Entry]) -> dict[str, Entry]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"{name!r}: letters, digits, '_', '.' and '-' only (it names a directory)")
        return value


@dataclass(frozen=True)
class EntryPlan:
    """An entry as it will run.

    Attributes:
        name: the entry's name (its directory and its leaderboard row).
        method: the method.
        base: the config tree under every run (the entry's ``config`` file; ``{}`` without one).
        overrides: dotted overrides over ``base`` (the spec's ``set``, then the entry's).
        space: the entry's search space, or None (no sweep).
        experiment: the config every run shares (a sweep's: with its space's fixed values), as built now.
        objective: ``(metric, mode)`` that selects each run's checkpoint (the space's, else the protocol's).
    """

    name: str
    method: str
    base: dict[str, Any]
    overrides: dict[str, Any]
    space: SearchSpace | None
    experiment: ExperimentConfig
    objective: tuple[str, str]


def load_compare(path: str | Path) -> CompareSpec:
    """Read and validate a comparison spec; relative ``config`` and ``space`` files and dataset roots
    (:data:`DATASET_ROOTS`) in ``set`` are made absolute from the spec file's directory.

    Raises:
        ConfigError: unreadable file, unknown or missing key, bad value, a ``budget`` without an entry that
            searches (or an entry with a space and no ``budget``), or a ``set`` of a key the comparison decides
            (:data:`BUDGET_KEYS`); one line naming the file and the key.
    """
    path = Path(path).resolve()
    tree = load_yaml(path)
    try:
        spec = CompareSpec.model_validate(tree)
    except ValidationError as err:
        errors = err.errors()  # an unknown key first: it often explains a missing one (a misspelt key)
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        key = ".".join(str(p) for p in first["loc"]) or "<root>"
        problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{path}: {key}: {problem}") from None
    here = path.parent
    searching = [n for n, e in spec.entries.items() if e.space]
    if searching and spec.budget is None:
        raise ConfigError(f"{path}: budget: entry {searching[0]} has a space; give budget.trials (and grace_period)")
    if spec.budget is not None and not searching:
        raise ConfigError(f"{path}: budget: no entry has a space to search; remove it")
    for where, sets in [("set", spec.set), *((f"entries.{n}.set", e.set) for n, e in spec.entries.items())]:
        try:
            given = flatten(_nested(sets))
        except ConfigError as err:
            raise ConfigError(f"{path}: {where}: {err}") from None
        for key in BUDGET_KEYS:
            if key in given:
                raise ConfigError(f"{path}: {where}: {key}: the comparison sets it (epochs; seeds 0 .. seeds-1)")
    entries = {name: entry.model_copy(update={
        "config": str(here / entry.config) if entry.config else None,
        "space": str(here / entry.space) if entry.space else None,
        "set": _rooted(entry.set, here)}) for name, entry in spec.entries.items()}
    return spec.model_copy(update={"set": _rooted(spec.set, here), "entries": entries, "source": str(path)})


def _nested(sets: dict[str, Any]) -> dict[str, Any]:
    """Dotted ``set`` keys as a nested tree (a value may itself be a section)."""
    from pointtune.config import set_dotted

    tree: dict[str, Any] = {}
    for key, value in sets.items():
        set_dotted(tree, key, value)
    return tree


def _rooted(sets: dict[str, Any], here: Path) -> dict[str, Any]:
    """``sets`` with relative dataset roots (:data:`DATASET_ROOTS`) made absolute from ``here``."""
    return {k: str((here / v).resolve()) if k in DATASET_ROOTS and isinstance(v, str) and not Path(v).is_absolute()
            else v for k, v in sets.items()}


def plan_entries(spec: CompareSpec) -> dict[str, EntryPlan]:
    """Build every entry's configuration and check that the comparison is fair (see the module docstring).

    Raises:
        ConfigError: an entry's config, overrides or space is invalid, its space searches a dataset or protocol
            key, it needs a prerequisite run that only a sweep trains (SCL's stage 1 without a space), or two
            entries differ in dataset, protocol or objective; one line naming the spec file, the entry and the key.
    """
    from pointtune.config import plan_prerequisite
    from pointtune.protocols import default_objective

    plans = {}
    for name, entry in spec.entries.items():
        where = f"{spec.source}: entries.{name}"
        overrides = {**spec.set, **entry.set}
        try:
            base = load_yaml(entry.config) if entry.config else {}
            space = load_search_space(entry.space, entry.method) if entry.space else None
            if space is not None:
                probe = SweepSpec(method=entry.method, space_file=entry.space, sweep_dir="", base=base,
                                  overrides=overrides, epochs=spec.epochs)
                experiment = trial_config(probe, space.fixed_values(), space)
                objective = (space.metric, space.mode)
            else:
                experiment = build_config(entry.method, base, {**overrides, "train.epochs": spec.epochs},
                                          source=entry.config or "set")
                objective = default_objective(experiment)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        unfair = [k for k in (space.searched() if space else [])
                  if k in DATA_KEYS or k == "protocol.name" or k.startswith("protocol.data")]
        if unfair:
            raise ConfigError(f"{where}.space: {unfair[0]}: a comparison keeps the data and protocol fixed; do not "
                              f"search it")
        pre = plan_prerequisite(experiment) if space is None else None
        if pre is not None:
            raise ConfigError(f"{where}: {pre.key}: this config needs its {pre.name} run first; give the entry a "
                              f"space (its sweep trains it once) or set {pre.key}")
        plans[name] = EntryPlan(name, entry.method, base, overrides, space, experiment, objective)
    check_fair(plans, spec.source)
    return plans


def fairness_keys(plan: EntryPlan) -> dict[str, Any]:
    """What must be equal across entries: the dataset keys (:data:`DATA_KEYS`; the ``synthetic_*`` ones only
    for the synthetic dataset, which alone reads them), the protocol's name and its own dataset
    (``protocol.data``) and the objective."""
    from pointtune.protocols import protocol_name

    exp = plan.experiment
    flat = flatten(exp.to_dict())
    keys = {key: flat.get(key) for key in DATA_KEYS
            if exp.data.name == "synthetic" or not key.startswith("data.synthetic_")}
    keys["protocol.name"] = protocol_name(exp)
    keys["protocol.data"] = exp.protocol.data.model_dump(mode="json") if exp.protocol.data is not None else None
    keys["objective"] = " ".join(reversed(plan.objective))
    return keys


def check_fair(plans: dict[str, EntryPlan], source: str) -> None:
    """Refuse entries that differ in dataset, protocol or objective (:func:`fairness_keys`).

    Raises:
        ConfigError: ``<source>: entries a and b differ in <key> (<value> vs <value>): ...``, one line.
    """
    first, *others = plans.values()
    reference = fairness_keys(first)
    for plan in others:
        for key, value in fairness_keys(plan).items():
            if value != reference[key]:
                raise ConfigError(f"{source}: entries {first.name} and {plan.name} differ in {key} "
                                  f"({reference[key]} vs {value}): a comparison needs the same data and protocol")


def run_compare(spec: CompareSpec, out: str | Path, resources: dict[str, Any] | None = None,
                mlflow_uri: str | None = None) -> list[dict[str, Any]]:
    """Run (or finish) a comparison in ``out``: check it (:func:`plan_entries`), open its MLflow parent run,
    sweep and study every entry in turn (:func:`run_entry`; what finished is skipped, what was interrupted is
    resumed), then write the leaderboard and log it to the parent run. A local Ray instance started here is
    shared by every entry and stopped at the end.

    Args:
        spec: the comparison (:func:`load_compare`).
        out: the compare directory.
        resources: :class:`~pointtune.search.spec.SweepSpec` fields for every sweep and study (``workers``,
            ``gpus_per_worker``, ``cpus_per_worker``, ``max_concurrent``, ``address``, ``storage``,
            ``wait_for_resources``, ``worker_start_timeout``, ``verbose``).
        mlflow_uri: the store of every entry and of the parent run (default: SQLite in ``out``).

    Returns:
        The leaderboard rows (:func:`pointtune.search.compare_report.leaderboard`), best first.

    Raises:
        ConfigError: see :func:`plan_entries`; ``out`` holds another comparison; an entry's sweep has no trial
            with a checkpoint. SweepInterrupted: an entry's sweep or study was stopped (run again to resume).
    """
    import ray

    from pointtune import tracking
    from pointtune.cluster import shutdown_ray
    from pointtune.search.compare_report import EntryDirs, write_leaderboard

    plans = plan_entries(spec)
    out = Path(out).resolve()
    _claim(out, spec)
    uri = tracking.resolve_tracking_uri(out, mlflow_uri)
    for method in sorted({p.method for p in plans.values()}):  # created here: their artifacts go to `out`
        tracking.ensure_experiment(uri, f"pointtune-{method}", out)
    parent = _parent_run(out, spec, plans, uri)
    started_ray = not ray.is_initialized()
    try:
        for plan in plans.values():
            tracking.set_tags(uri, parent, run_entry(spec, plan, out, resources or {}, uri))
    finally:
        if started_ray:
            shutdown_ray()
    metric, mode = next(iter(plans.values())).objective
    dirs = [EntryDirs(p.name, p.method, out / p.name / "study", out / p.name / "sweep" if p.space else None)
            for p in plans.values()]
    budget = f", {spec.budget.trials} trials (ASHA grace {spec.budget.grace_period}) per search" if spec.budget else ""
    rows, written, markdown = write_leaderboard(
        out, f"Comparison {spec.name}: {len(plans)} entries, {spec.seeds} seeds x {spec.epochs} epochs{budget}",
        dirs, metric, mode)
    for path in written:
        tracking.log_artifact(uri, parent, path)
    tracking.end_run(uri, parent, "FINISHED")
    print("\n" + markdown)
    print(f"[pointtune] compare: {out / 'compare.md'}, compare.csv, compare.png; MLflow: pointtune ui {out}"
          if uri.startswith("sqlite:///") else f"[pointtune] compare: {out / 'compare.md'}, compare.csv, compare.png")
    return rows


def run_entry(spec: CompareSpec, plan: EntryPlan, out: Path, resources: dict[str, Any], uri: str) -> dict[str, str]:
    """Sweep the entry (if it has a space) in ``<out>/<entry>/sweep``, then study its configuration (the sweep's
    best trial's, else its own) in ``<out>/<entry>/study``; each skipped when finished, resumed when
    interrupted. Returns the compare parent run's tags naming the entry's sweep and study parent runs.

    Raises:
        ConfigError: the entry's sweep has no trial with a checkpoint (names the entry).
    """
    from pointtune.layout import join
    from pointtune.search.study import plan_study, sweep_rows
    from pointtune.search.sweep import run_sweep

    root = out / plan.name
    storage = resources.get("storage")
    shared = {**resources, "mlflow_uri": uri, "storage": join(storage, out.name, plan.name) if storage else None}
    tags = {}
    sweep_dir = root / "sweep" if plan.space is not None else None
    if sweep_dir is not None:
        sweep = SweepSpec(method=plan.method, space_file=plan.space.source, sweep_dir=str(sweep_dir),
                          trials=spec.budget.trials, epochs=spec.epochs, grace_period=spec.budget.grace_period,
                          base=plan.base, overrides=plan.overrides, **shared)
        _run_or_resume(sweep_dir, "summary.csv", lambda: run_sweep(sweep))
        tags[f"pointtune.sweep_run.{plan.name}"] = _parent_run_id(sweep_dir)

    def start_study():
        if sweep_dir is not None:
            try:
                _, best = sweep_rows(sweep_dir, 1, reference=False)
            except ConfigError as err:
                raise ConfigError(f"compare entry {plan.name}: {err}") from None
            rows, overrides = {plan.name: best["top1"]}, {}  # its config holds the overrides already
        else:
            rows, overrides = {plan.name: plan.base}, plan.overrides
        study = SweepSpec(method=plan.method, space_file="", sweep_dir=str(root / "study"), epochs=spec.epochs,
                          overrides=overrides, of=str(sweep_dir) if sweep_dir else None, **shared)
        return run_sweep(plan_study(study, rows, spec.seeds, plan.objective))

    _run_or_resume(root / "study", "study.csv", start_study)
    tags[f"pointtune.study_run.{plan.name}"] = _parent_run_id(root / "study")
    return tags


def _run_or_resume(directory: Path, finished: str, start) -> None:
    """Skip a sweep or study whose ``finished`` file exists, resume one whose trials started (Tune saved its
    state), else ``start()`` it."""
    from ray import tune

    from pointtune.layout import SweepDir
    from pointtune.search.sweep import resume_sweep

    if (directory / finished).is_file():
        print(f"[pointtune] compare: {directory} is finished; skipped", flush=True)
        return
    layout = SweepDir.open(directory)
    if layout.runtime.is_file() and tune.Tuner.can_restore(layout.tune):
        resume_sweep(directory)
    else:
        start()


def _parent_run_id(directory: Path) -> str:
    from pointtune.layout import SweepDir
    from pointtune.search.spec import SweepRuntime

    return SweepRuntime.load(SweepDir.open(directory)).parent_run_id


def _claim(out: Path, spec: CompareSpec) -> None:
    """Write ``<out>/compare.yaml`` (the spec as resolved), or check that it is this spec's (a rerun).

    Raises:
        ConfigError: ``out`` holds another comparison.
    """
    saved = out / SPEC_FILE
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    if saved.is_file() and saved.read_text() != text:
        raise ConfigError(f"{out}: holds another comparison ({saved} is not {spec.source} as it reads now); pass "
                          f"another --output")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(text)


def _parent_run(out: Path, spec: CompareSpec, plans: dict[str, EntryPlan], uri: str) -> str:
    """The comparison's MLflow parent run (kind ``compare``, experiment ``pointtune-compare``): the one
    ``compare_run.yaml`` names in this store, else a new one, recorded there."""
    from pointtune import tracking
    from pointtune.protocols import protocol_name

    record = out / RUN_FILE
    if record.is_file():
        saved = load_yaml(record)
        if saved.get("tracking_uri") == uri:
            return saved["parent_run_id"]
    first = next(iter(plans.values()))
    experiment = tracking.ensure_experiment(uri, "pointtune-compare", out)
    run_id = tracking.start_run(uri, experiment, spec.name, {tracking.KIND_TAG: "compare"}, {
        "spec": spec.source, "entries": ",".join(plans), "seeds": spec.seeds, "epochs": spec.epochs,
        **({"trials": spec.budget.trials, "grace_period": spec.budget.grace_period} if spec.budget else {}),
        "dataset": first.experiment.data.name, "protocol": protocol_name(first.experiment),
        "objective": f"{first.objective[1]} {first.objective[0]}",
        **{f"method/{p.name}": p.method for p in plans.values()},
    })
    record.write_text(yaml.safe_dump({"tracking_uri": uri, "experiment_id": experiment, "parent_run_id": run_id}))
    return run_id
