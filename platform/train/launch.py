"""Run one experiment with Ray Train: in-process (local debug mode) or on N data-parallel workers.

:func:`make_trainer` builds the ``TorchTrainer`` of ``pointtune train`` and of every data-parallel sweep
trial alike; :func:`train` is ``pointtune train``. Re-running with the same run directory resumes from its
last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pointtune import tracking
from pointtune.config import ConfigError, ExperimentConfig, build_config
from pointtune.failures import failure_reason
from pointtune.layout import RunDir
from pointtune.protocols import default_objective
from pointtune.train.loop import LoopConfig
from pointtune.train.sources import resolve_sources


def make_trainer(
    loop: LoopConfig,
    *,
    workers: int,
    use_gpu: bool,
    name: str,
    storage_path: str,
    resources_per_worker: dict[str, float] | None = None,
    callbacks: list | None = None,
    verbose: bool = False,
):
    """The ``TorchTrainer`` running :func:`~pointtune.train.loop.train_loop_per_worker` with ``loop``.

    Args:
        loop: the loop's settings.
        workers: 0 runs in this process (local debug mode); N >= 1 starts N Ray Train workers.
        use_gpu: one GPU per worker (or ``resources_per_worker["GPU"]``).
        name: the Train run's name: a deterministic name resumes from that run's last checkpoint.
        storage_path: where Ray Train keeps the run and its checkpoints (a path or a storage URI).
        resources_per_worker: e.g. ``{"CPU": 2, "GPU": 0.5}`` (default: Ray Train's 1 CPU).
        callbacks: Ray Train callbacks (a sweep trial passes Tune's ``TuneReportCallback``).
        verbose: Ray Train's INFO lines on the console.

    Returns:
        A ``ray.train.torch.TorchTrainer``; it keeps the best checkpoint by the objective and the latest, and
        never retries a failed run.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from pointtune.train.loop import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=resources_per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=loop.metric, checkpoint_score_order=loop.mode
            ),
            failure_config=ray.train.FailureConfig(max_failures=0, controller_failure_limit=0),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
        ),
    )


def train(
    exp: ExperimentConfig,
    run_dir: str | Path,
    workers: int = 0,
    use_gpu: bool = False,
    mlflow_uri: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``exp``; returns its summary (``summary.json``: best epoch and value, test metrics, wall time).

    The checkpoints of the runs ``exp`` starts from (``method.pretrained``, ``method.stage1_from``) are first
    copied into ``run_dir/sources`` and the config pointed at them (:func:`~pointtune.train.sources.resolve_sources`),
    so that ``config.yaml`` and the run's checkpoints do not depend on those runs.

    Args:
        exp: the validated experiment.
        run_dir: where checkpoints (``checkpoints/latest``, ``checkpoints/best`` in local mode; Ray Train's
            ``train/`` otherwise), ``config.yaml`` and the default MLflow database go.
        workers: 0 runs in this process (pdb works; CPU or the first GPU); N >= 1 starts N Ray Train
            workers (gloo on CPU, NCCL on GPU).
        use_gpu: one GPU per worker.
        mlflow_uri: tracking URI (default: SQLite in ``run_dir``).
        progress: show a progress bar (local mode).

    Raises:
        ConfigError: a source run that cannot be read (one line starting with its key).
        ray.train.TrainingFailedError: a worker failed (e.g. the loss became NaN); the reason
            (:func:`pointtune.failures.failure_reason`) is printed first and tagged ``pointtune.failure`` on the
            MLflow run.
    """
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    standalone = resolve_sources(exp, run_dir)  # the runs it starts from, copied into it
    if standalone:
        exp = build_config(exp.method.name, exp.to_dict(), standalone, source=f"{run_dir}: sources")
    run.config.write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    if workers == 0 and not use_gpu:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # local CPU mode stays on the CPU
    metric, mode = default_objective(exp)
    uri = tracking.resolve_tracking_uri(run_dir, mlflow_uri)
    experiment_id = tracking.ensure_experiment(uri, f"pointtune-{exp.method.name}", run_dir)
    run_id = tracking.start_run(uri, experiment_id, run_dir.name,
                                {tracking.KIND_TAG: "train", "pointtune.method": exp.method.name}, exp.to_dict())
    print(f"[pointtune] training {exp.method.name} on {exp.data.name} for {exp.train.epochs} epochs "
          f"({'local, in-process' if workers == 0 else f'{workers} Ray Train workers'}); run dir {run_dir}", flush=True)
    if workers > 0:
        from pointtune.cluster import init_ray

        init_ray(None)  # the dashboard's State API lets Ray Train free the workers of a failed run
    loop = LoopConfig(exp, metric, mode, mlflow={"tracking_uri": uri, "run_id": run_id},
                      local_dir=str(run.checkpoints) if workers == 0 else None, progress=progress,
                      cpus_per_worker=1 if workers > 0 else None, metrics_file=str(run.metrics))
    trainer = make_trainer(loop, workers=workers, use_gpu=use_gpu, name=RunDir.RAY_TRAIN_NAME,
                           storage_path=str(run_dir))
    began = time.time()
    try:
        trainer.fit()
    except Exception as err:
        reason = failure_reason(err)
        print(f"[pointtune] training failed: {reason}", file=sys.stderr, flush=True)
        tracking.set_tags(uri, run_id, {"pointtune.failure": reason})
        tracking.end_run(uri, run_id, "FAILED")
        raise
    _log_best_checkpoint(uri, run_id, run_dir, exp.method.name)
    tracking.end_run(uri, run_id, "FINISHED")
    summary = write_summary(run, metric, mode, time.time() - began)
    print(f"[pointtune] per-epoch metrics: {run.metrics}; summary: {run.summary}; "
          f"MLflow: pointtune ui {run_dir}")
    return summary


def _log_best_checkpoint(uri: str, run_id: str, run_dir: Path, method: str) -> None:
    """The run's best checkpoint, its config, validation confusion matrix and feature spectrum as MLflow
    artifacts, as a sweep trial's (:func:`pointtune.train.artifacts.log_checkpoint_artifacts`); nothing when the
    run kept no checkpoint (``--epochs 0``)."""
    from pointtune.train.artifacts import log_checkpoint_artifacts
    from pointtune.train.load import find_checkpoint

    try:
        best = find_checkpoint(run_dir)
    except ConfigError:  # none kept (--epochs 0)
        return
    log_checkpoint_artifacts(uri, run_id, str(best), f"{method} {run_dir.name}")


def write_summary(run: RunDir, metric: str, mode: str, wall_s: float) -> dict[str, Any]:
    """``summary.json`` of the run, from its last per-epoch record: the loop's model selection (``best/<metric>``
    and ``best/epoch``, :mod:`pointtune.objective`), the test metrics (scored on that epoch's weights;
    ``test/epoch`` says which) and the wall time; returns it.

    Raises:
        FileNotFoundError: the run recorded no epoch.
    """
    last = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()][-1]
    best = last.get(f"best/{metric}")
    found = isinstance(best, (int, float)) and math.isfinite(best)
    summary = {
        "epochs": int(last["epoch"]), "objective": metric, "mode": mode,
        "best_epoch": int(last["best/epoch"]) if found else None, "best": best if found else None,
        "wall_s": round(wall_s, 2),
        "test": {k.removeprefix("test/"): v for k, v in last.items() if k.startswith("test/")},
    }
    run.summary.write_text(json.dumps(summary, indent=2))
    return summary
