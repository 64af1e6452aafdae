"""``pointtune best SWEEP_DIR``: the best trial of a (finished or interrupted) sweep, read from Tune's
saved state without starting Ray, and its full config written as YAML that ``pointtune train`` accepts."""

from __future__ import annotations

from pathlib import Path

from pointtune.config import ConfigError
from pointtune.search.report import TrialSummary, format_table, summarize, write_best_config
from pointtune.search.sweep import TUNE_NAME, SweepSpec, trial_config


def best_trial(sweep_dir: str | Path, output: str | Path | None = None) -> TrialSummary:
    """Print the trials (best first) and write the best trial's config.

    Args:
        sweep_dir: a directory made by ``pointtune sweep``.
        output: YAML path (default ``<sweep_dir>/best_config.yaml``).

    Raises:
        ConfigError: not a sweep directory, or no trial reported the objective yet.
    """
    from ray.tune import ExperimentAnalysis, ResultGrid

    spec = SweepSpec.load(sweep_dir)
    space = spec.space()
    path = f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}"
    try:
        grid = ResultGrid(ExperimentAnalysis(path, default_metric=space.metric, default_mode=space.mode))
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"{sweep_dir}: cannot read the Tune experiment at {path} ({err})") from None
    rows = summarize(grid, space, trial_config(spec, {}).train.epochs)
    print(format_table(rows, space.metric))
    if not rows or rows[0].best is None:
        raise ConfigError(f"{sweep_dir}: no trial has reported {space.metric} yet")
    out = Path(output) if output else spec.root / "best_config.yaml"
    if write_best_config(rows, out) is None:
        raise ConfigError(f"{sweep_dir}: the best trial {rows[0].trial_id} left no checkpoint")
    best = rows[0]
    print(f"\nbest trial {best.trial_id}: {space.metric} = {best.best:.4f}  {best.params}")
    print(f"config written to {out}\n  pointtune train {spec.method} --config {out}")
    return best


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory that ``path`` designates, for ``pointtune train finetune --from PATH``.

    ``path`` may be a checkpoint directory (holding ``state.pt``) or that file, a ``pointtune train`` run
    directory (its ``checkpoints/best``), or a sweep directory (the best trial's best checkpoint).

    Raises:
        ConfigError: nothing usable at ``path``.
    """
    path = Path(path).resolve()
    if path.name == "state.pt" and path.is_file():
        return path.parent
    if (path / "state.pt").is_file():
        return path
    if (path / "checkpoints" / "best" / "state.pt").is_file():
        return path / "checkpoints" / "best"
    if (path / "sweep.yaml").is_file():
        from ray.tune import ExperimentAnalysis, ResultGrid

        spec = SweepSpec.load(path)
        space = spec.space()
        grid = ResultGrid(ExperimentAnalysis(f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}"))
        rows = [r for r in summarize(grid, space, trial_config(spec, {}).train.epochs) if r.best_checkpoint]
        if rows:
            return Path(rows[0].best_checkpoint)
        raise ConfigError(f"{path}: no trial of this sweep left a checkpoint")
    raise ConfigError(f"{path}: not a checkpoint, a pointtune run directory or a sweep directory")
