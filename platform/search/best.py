"""``pointtune best SWEEP_DIR``: the best trial of a (finished or interrupted) sweep, read from Tune's
saved state without starting Ray, and its full config written as YAML that ``pointtune train`` accepts."""

from __future__ import annotations

from dataclasses import asdict
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
    rows = summarize(grid, space, trial_config(spec, {}).train.epochs, asdict(spec))
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
    directory (its ``checkpoints/best``), or a sweep directory (the best trial's best checkpoint). A
    ``state.pt`` found so is checked to be a ``torch.save`` file (a zip archive with a pickle); the full check
    (:func:`pointtune.methods.finetune.read_checkpoint`) happens when the encoder is loaded.

    Raises:
        ConfigError: nothing usable at ``path``, or its ``state.pt`` is not a file torch wrote; names the path.
    """
    import zipfile

    def checked(state: Path) -> Path:
        """The directory of ``state`` if it is a ``torch.save`` archive (a zip holding ``*/data.pkl``)."""
        try:
            with zipfile.ZipFile(state) as archive:
                ok = any(name.endswith("data.pkl") for name in archive.namelist())
        except (zipfile.BadZipFile, OSError):
            ok = False
        if not ok:
            raise ConfigError(f"--from {state}: not a pointtune checkpoint (not a file written by torch.save)")
        return state.parent

    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(f"--from {path}: no such file or directory")
    if path.is_file() and path.name != "state.pt":
        raise ConfigError(f"--from {path}: not a checkpoint (a checkpoint is a directory holding state.pt, "
                          "or that state.pt)")
    if path.name == "state.pt" and path.is_file():
        return checked(path)
    if (path / "state.pt").is_file():
        return checked(path / "state.pt")
    if (path / "checkpoints" / "best" / "state.pt").is_file():
        return checked(path / "checkpoints" / "best" / "state.pt")
    if (path / "sweep.yaml").is_file():
        from ray.tune import ExperimentAnalysis, ResultGrid

        spec = SweepSpec.load(path)
        space = spec.space()
        grid = ResultGrid(ExperimentAnalysis(f"{spec.storage_path.rstrip('/')}/{TUNE_NAME}"))
        rows = [r for r in summarize(grid, space, trial_config(spec, {}).train.epochs, asdict(spec)) if r.best_checkpoint]
        if rows:
            return Path(rows[0].best_checkpoint)
        raise ConfigError(f"{path}: no trial of this sweep left a checkpoint")
    raise ConfigError(f"{path}: not a checkpoint, a pointtune run directory or a sweep directory")
