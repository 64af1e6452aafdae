"""``pointtune robustness RUN``: judge a trained run's frozen features under noise and sparsity
(:mod:`pointtune.protocols.robustness`), write ``robustness.csv`` / ``robustness.png`` beside the run and log them,
with the ``robust/*`` metrics, to the MLflow run that recorded the run's training (a ``pointtune train`` run's, or
a sweep trial's)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pointtune import tracking
from pointtune.config import ConfigError
from pointtune.layout import run_of, trial_of
from pointtune.protocols.robustness import (CSV_FILE, DEFAULT_COUNTS, DEFAULT_SIGMAS, PLOT_FILE, RobustnessRow,
                                            check_seed, first_line, perturbations, plot_robustness, robust_metrics,
                                            robustness_table, write_csv)


def _local_store(uri: str) -> bool:
    """Whether ``uri`` names a SQLite store that exists (never create one just to look into it)."""
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file()


def find_mlflow_run(checkpoint: str | Path, tracking_uri: str | None = None,
                    method: str | None = None) -> tuple[dict[str, str] | None, str]:
    """The MLflow run that recorded the training of ``checkpoint`` (a directory :func:`find_checkpoint` returned).

    A sweep trial's checkpoint (:func:`pointtune.layout.trial_of`): the trial's child run in the sweep's store
    (its ``runtime.yaml``). A ``pointtune train`` run's (:func:`pointtune.layout.run_of`): the latest run named
    after the run directory (:func:`pointtune.tracking.find_train_run`) in ``tracking_uri`` (default
    :func:`pointtune.tracking.resolve_tracking_uri` of the run directory), experiment ``pointtune-<method>``.

    Returns:
        ``({"tracking_uri", "run_id"}, description)``, or ``(None, why not)``; never creates a store or a run.
    """
    from pointtune.search.spec import SweepRuntime, SweepSpec

    if "://" in str(checkpoint):
        return None, "the checkpoint lies in remote storage"
    trial, run = trial_of(Path(checkpoint)), run_of(Path(checkpoint))
    try:
        if trial is not None:
            where, trial_id = trial
            runtime = SweepRuntime.load(SweepSpec.load(where).layout)
            uri = tracking_uri or runtime.tracking_uri
            if not _local_store(uri):
                return None, f"sweep {where} has no MLflow store"
            run_id = tracking.find_child_run(uri, runtime.experiment_id, runtime.parent_run_id, trial_id)
            if run_id is None:
                return None, f"no MLflow run of trial {trial_id} in {uri}"
            return {"tracking_uri": uri, "run_id": run_id}, f"trial {trial_id} of sweep {where}"
        if run is None:
            return None, "the checkpoint belongs to no run or sweep directory"
        uri = tracking.resolve_tracking_uri(run, tracking_uri)
        if not _local_store(uri):
            return None, f"no MLflow store at {uri}"
        run_id = tracking.find_train_run(uri, run.name, f"pointtune-{method}" if method else None)
    except Exception as err:  # noqa: BLE001 - a store that cannot be read leaves the files written, says why
        return None, f"cannot read the MLflow store ({first_line(err)})"
    if run_id is None:
        return None, f"no MLflow run named {run.name} in {uri}"
    return {"tracking_uri": uri, "run_id": run_id}, f"run {run}"


def log_robustness(rows: Sequence[RobustnessRow], target: dict[str, str], files: Sequence[str | Path],
                   step: int = 0, tags: dict[str, str] | None = None) -> None:
    """Log :func:`robust_metrics` at ``step`` (the checkpoint's epoch), ``files`` (the CSV and PNG) as artifacts
    at the root, and ``tags`` to the run ``target = {"tracking_uri", "run_id"}``."""
    tracking.log_metrics(target, robust_metrics(rows), step=step)
    for path in files:
        tracking.log_artifact(target["tracking_uri"], target["run_id"], path)
    if tags:
        tracking.set_tags(target["tracking_uri"], target["run_id"], tags)


def run_robustness(
    path: str | Path, sigmas: Sequence[float] = DEFAULT_SIGMAS, counts: Sequence[int] = DEFAULT_COUNTS,
    seed: int = 0, *, output: str | Path | None = None, split: str = "test", device: str = "cpu",
    tracking_uri: str | None = None, mlflow: bool = True, log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """``pointtune robustness``: load a run, compute :func:`robustness_table`, write ``robustness.csv`` and
    ``robustness.png`` into ``output`` and, when the run has an MLflow run, log both and the metrics there.

    Args:
        path: anything :func:`pointtune.train.load.load_method` accepts (run, sweep trial, sweep, checkpoint).
        sigmas, counts, seed, split: see :func:`robustness_table`.
        output: where the files go (created); default ``path`` itself when it is a local directory (the run,
            trial or sweep directory), the directory of a ``state.pt``.
        device: ``cpu`` or a CUDA device.
        tracking_uri: the run's MLflow store when it is not the default one (``--mlflow-uri``).
        mlflow: False: write the files only.
        log: progress lines.

    Returns:
        ``{"rows", "csv", "png", "checkpoint", "mlflow"}``: the rows, the two files, the checkpoint judged, and
        the MLflow target (None when none) with ``mlflow_note`` saying where it was logged or why not.

    Raises:
        ConfigError: bad levels or seed, not a run / checkpoint (one line from :func:`load_method`), a remote path
            without ``output``, an output path that is a file, or a protocol that cannot judge the method.
        DatasetError: the run's data cannot be read.
    """
    from pointtune.protocols import selected_protocol
    from pointtune.train.load import load_method

    log = log or (lambda line: None)
    perturbations(sigmas, counts)  # bad levels and seeds fail before anything is loaded
    check_seed(seed)
    remote = "://" in str(path)
    if output is None:
        if remote:
            raise ConfigError(f"{path}: a checkpoint in remote storage needs --output DIR")
        local = Path(path).expanduser().absolute()
        output = local.parent if local.is_file() else local
    output = Path(output).expanduser().absolute()
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: is a file, not a directory")
    loaded = load_method(path, map_location=device)
    exp = loaded.experiment
    log(f"[pointtune] robustness of {exp.method.name} ({loaded.path}, epoch {loaded.epoch}), judged by its "
        f"protocol on {exp.protocol.data.name if exp.protocol.data else exp.data.name}")
    rows = robustness_table(loaded, sigmas, counts, seed, split=split, device=device, log=log)
    output.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(rows, output / CSV_FILE)
    title = (f"{exp.method.name}, {Path(str(path)).name} (epoch {loaded.epoch}), {selected_protocol(exp).name} "
             f"protocol, perturbation seed {seed}")
    png_path = plot_robustness(rows, output / PLOT_FILE, title=title)
    target, note = (None, "not asked") if not mlflow else find_mlflow_run(loaded.path, tracking_uri, exp.method.name)
    if target is not None:
        log_robustness(rows, target, [csv_path, png_path], step=loaded.epoch,
                       tags={"pointtune.robustness": f"seed={seed} jitter={','.join(f'{s:g}' for s in sigmas)} "
                                                     f"points={','.join(str(c) for c in counts)}"})
        note = f"logged to MLflow run {target['run_id']} ({note})"
    else:
        note = f"not logged to MLflow: {note}"
    log(f"[pointtune] robustness: {csv_path}, {png_path}; {note}")
    return {"rows": rows, "csv": csv_path, "png": png_path, "checkpoint": loaded.path, "mlflow": target,
            "mlflow_note": note}
