"""``pointtune best SWEEP_DIR``: the best trial of a (finished or interrupted) sweep, read from Tune's
saved state without starting Ray, and its full config written as YAML that ``pointtune train`` accepts; of a
multi-objective sweep also its Pareto front (the config written is the primary objective's best)."""

from __future__ import annotations

from pathlib import Path

from pointtune.config import ConfigError
from pointtune.search.report import TrialSummary, format_front, format_table, summarize, write_best
from pointtune.search.space import SearchSpace
from pointtune.search.spec import SweepSpec


def sweep_trials(sweep_dir: str | Path) -> tuple[SweepSpec, SearchSpace, list[TrialSummary]]:
    """A sweep's spec, space and trials (best first), read from Tune's saved state without starting Ray.

    Raises:
        ConfigError: not a sweep directory, or its Tune state cannot be read.
    """
    from ray.tune import ExperimentAnalysis, ResultGrid

    spec = SweepSpec.load(sweep_dir)
    space = spec.space()
    path = spec.layout.tune
    try:
        grid = ResultGrid(ExperimentAnalysis(path, default_metric=space.metric, default_mode=space.mode))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{sweep_dir}: cannot read the Tune experiment at {path} ({err})") from None
    return spec, space, summarize(grid, space, spec)


def best_trial(sweep_dir: str | Path, output: str | Path | None = None) -> TrialSummary:
    """Print the trials (best first by the primary objective) and, with several objectives, the Pareto front;
    record the best trial in ``best.json`` and write its config.

    Args:
        sweep_dir: a directory made by ``pointtune sweep``.
        output: YAML path (default ``<sweep_dir>/best_config.yaml``).

    Raises:
        ConfigError: not a sweep directory, or no trial reported the objective yet.
    """
    spec, space, rows = sweep_trials(sweep_dir)
    print(format_table(rows, space))
    if space.multi_objective:
        print("\n" + format_front(rows, space))
    if not rows or rows[0].best is None:
        raise ConfigError(f"{sweep_dir}: no trial has reported {space.metric} yet")
    out = Path(output) if output else spec.layout.best_config
    if write_best(rows, spec.layout, space.metric, out) is None:
        raise ConfigError(f"{sweep_dir}: the best trial {rows[0].trial_id} left no checkpoint")
    best = rows[0]
    print(f"\nbest trial {best.trial_id}: {space.metric} = {best.best:.4f}  {best.params}")
    print(f"config written to {out}\n  pointtune train {spec.method} --config {out}")
    return best


def resolve_checkpoint(path: str | Path) -> Path | str:
    """The checkpoint directory that ``path`` designates, for ``pointtune train finetune --from PATH``.

    A thin wrapper of :func:`pointtune.train.load.find_checkpoint` (which see: a checkpoint directory
    or its ``state.pt``, a ``pointtune train`` run directory, local or multi-worker, a sweep directory or one
    of its trial directories) whose errors name the flag. Only the resolution and a check that the
    ``state.pt`` is a ``torch.save`` archive happen here; the checkpoint is read in full
    (:func:`pointtune.train.load.load_method`) when the encoder is loaded.

    Returns:
        An absolute local :class:`~pathlib.Path`, or a storage URI string for a sweep in remote storage.

    Raises:
        ConfigError: nothing usable at ``path``; one line starting ``--from`` and naming the path (a
            :class:`~pointtune.train.checkpoint.CheckpointNotFoundError` when nothing exists there).
    """
    from pointtune.train.load import find_checkpoint

    try:
        return find_checkpoint(path)
    except ConfigError as err:
        raise type(err)(f"--from {err}") from None
