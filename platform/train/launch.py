"""Run one experiment with Ray Train: in-process (local debug mode) or on N data-parallel workers.

``pointtune train`` uses this; the same :func:`~pointtune.train.loop.train_loop_per_worker` runs inside
every sweep trial. Re-running with the same run directory resumes from its last checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from pointtune import tracking
from pointtune.config import ExperimentConfig
from pointtune.train.evaluate import DEFAULT_OBJECTIVE


def train(
    exp: ExperimentConfig,
    run_dir: str | Path,
    workers: int = 0,
    use_gpu: bool = False,
    mlflow_uri: str | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train ``exp``; returns the last epoch's metrics.

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
        ray.train.TrainingFailedError: a worker failed (e.g. the loss became NaN).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from pointtune.train.loop import train_loop_per_worker

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(exp.to_dict(), sort_keys=False))
    if workers == 0 and not use_gpu:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # local CPU mode stays on the CPU
    metric, mode = DEFAULT_OBJECTIVE[exp.method_cls.task]
    uri = tracking.resolve_tracking_uri(run_dir, mlflow_uri)
    experiment_id = tracking.ensure_experiment(uri, f"pointtune-{exp.method.name}", run_dir)
    run_id = tracking.start_run(uri, experiment_id, run_dir.name,
                                {tracking.KIND_TAG: "train", "pointtune.method": exp.method.name}, exp.to_dict())
    print(f"[pointtune] training {exp.method.name} on {exp.data.name} for {exp.train.epochs} epochs "
          f"({'local, in-process' if workers == 0 else f'{workers} Ray Train workers'}); run dir {run_dir}", flush=True)
    if workers > 0:
        from pointtune.cluster import init_ray

        init_ray(None, dashboard=False)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": exp.to_dict(),
            "objective": [metric, mode],
            "mlflow": {"tracking_uri": uri, "run_id": run_id},
            "local_dir": str(run_dir / "checkpoints") if workers == 0 else None,
            "progress": progress,
            "cpus_per_worker": 1 if workers > 0 else None,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=ray.train.RunConfig(
            name="train", storage_path=str(run_dir),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        tracking.end_run(uri, run_id, "FAILED")
        raise
    tracking.end_run(uri, run_id, "FINISHED")
    print(f"[pointtune] MLflow run {run_id}: mlflow ui --backend-store-uri {uri}")
    return dict(result.metrics or {})
