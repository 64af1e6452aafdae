"""A seed study (``pointtune study``): the configurations a sweep selected, retrained with several seeds and
scored on the test split next to a reference, the way a paper reports a result.

A study is a sweep whose trials are a grid, not a search (:class:`~pointtune.search.spec.SweepSpec` with
``scheduler: fifo``): every row (a whole config: the sweep's top trials' configs as they trained, the
reference, any ``--config`` file) x every seed (``train.seed``: initialisation, data order, augmentation,
crops; the split stays where ``data.split_seed`` puts it), each trial run to its last epoch. Each trial
selects its checkpoint on validation and scores the test split there, exactly as a sweep's trial does, and
the study reuses the sweep's machinery for everything else: resources, records (MLflow, Tune),
``pointtune resume`` and its fault handling. :mod:`pointtune.search.study_report` turns the trials into
``runs.csv``, ``study.csv``, ``study.md`` and ``study.png``.

Rows from a sweep: its ``--top-k`` trials by the objective, each with the config its best checkpoint holds,
and (``reference``) the sweep's shared config with the method's recipe values for every searched key: the
trials' config, minus the search.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from pointtune.config import ConfigError, build_config, load_yaml
from pointtune.search.spec import SweepRuntime, SweepSpec, trial_config
from pointtune.search.study_report import REFERENCE


def sweep_rows(sweep_dir: str | Path, top_k: int, reference: bool) -> tuple[SweepSpec, dict[str, dict[str, Any]]]:
    """The rows a sweep hands to its study: ``top1`` .. ``top<k>`` (the configs of its best trials by the
    objective, read from their best checkpoints) and, with ``reference``, ``reference`` (see the module).

    Returns:
        The sweep's spec and ``{row name: config tree}``.

    Raises:
        ConfigError: not a finished sweep, or fewer than ``top_k`` trials with a checkpoint.
    """
    from pointtune.search.best import sweep_trials
    from pointtune.train.checkpoint import experiment_of

    spec, space, trials = sweep_trials(sweep_dir)
    kept = [t for t in trials if t.best is not None and t.best_checkpoint]
    if len(kept) < top_k:
        raise ConfigError(f"--top-k {top_k}: the sweep {sweep_dir} has {len(kept)} trial(s) with a checkpoint")
    rows = {}
    if reference:
        shared = trial_config(spec, space.fixed_values(), space, SweepRuntime.load(spec.layout))
        rows[REFERENCE] = shared.to_dict()
    for rank, trial in enumerate(kept[:top_k], start=1):
        with tempfile.TemporaryDirectory() as tmp:
            rows[f"top{rank}"] = experiment_of(trial.best_checkpoint, Path(tmp))
        rows[f"top{rank}"]["train"]["threads"] = None  # the sweep's resource plan; the study plans its own
    return spec, rows


def config_rows(paths: list[str], method: str) -> dict[str, dict[str, Any]]:
    """Rows from config files (``--config``), named by their file stems (``paper.yaml`` -> ``paper``).

    Raises:
        ConfigError: a file is not a valid config of ``method``, or two files share a stem.
    """
    rows: dict[str, dict[str, Any]] = {}
    for path in paths:
        name = Path(path).stem
        if name in rows or name == REFERENCE:
            raise ConfigError(f"--config {path}: a row named {name!r} exists already; rename the file")
        tree = load_yaml(path)
        build_config(method, tree, source=str(path))  # one line naming the file and key if it is not a config
        rows[name] = tree
    return rows


def plan_study(spec: SweepSpec, rows: dict[str, dict[str, Any]], seeds: int, objective: tuple[str, str]) -> SweepSpec:
    """The study's :class:`SweepSpec`: ``rows`` x seeds ``0 .. seeds-1``, its space (``objective`` and the
    seeds) written to ``<study dir>/space.yaml``. ``spec`` carries the method, directory, resources, epochs
    and overrides.

    Raises:
        ConfigError: no rows, or fewer than 2 seeds (a spread needs two).
    """
    if not rows:
        raise ConfigError("a study needs at least one config: a sweep's top trials, the reference or --config")
    if seeds < 2:
        raise ConfigError(f"--seeds {seeds}: a study needs at least 2 seeds to measure a spread")
    metric, mode = objective
    layout = spec.layout
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.space.write_text(yaml.safe_dump({
        "method": spec.method, "objective": {"metric": metric, "mode": mode},
        "params": {"train.seed": {"type": "categorical", "choices": list(range(seeds))}},
    }, sort_keys=False))
    return replace(spec, space_file=str(layout.space), scheduler="fifo", rows=rows, seeds=list(range(seeds)),
                   trials=len(rows) * seeds)
