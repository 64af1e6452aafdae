"""Where the shared loop runs: the few calls it makes to whatever runs it.

Two runners, one loop (:func:`pointtune.train.loop.run_loop`):

- :class:`TrainSession`: Ray Train V2 (``TorchTrainer``) with N data-parallel workers, or in-process with
  ``num_workers=0`` (``pointtune train``'s local debug mode). Used by multi-worker sweep trials too, whose
  reports reach Tune through ``TuneReportCallback``.
- :class:`TuneSession`: directly inside a Tune trial's own actor, for single-process trials (one CPU worker
  or one GPU). No Train controller, worker group, placement-group cleaner or synchronisation actor is
  started, which is most of a small trial's fixed cost (Ray's hyperparameter-optimisation guide lets
  trials compute in their own actor the same way).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

EXPERIMENT_KEY = "experiment"  # a sweep trial's first result: its experiment as JSON (:class:`Announcing`)


def private_copy(checkpoint) -> str | None:
    """Copy a ``ray.train.Checkpoint`` (``None``: nothing) into a new temporary directory of this process
    alone and return its path; the caller deletes it when done.

    Ray's default target is one directory per checkpoint, shared by every worker on the node: a worker that
    arrives after another has finished copying copies the files again, under the first one's feet while it
    reads or uploads them (a data-parallel trial resumed at its last epoch failed so in CI).
    """
    if checkpoint is None:
        return None
    return checkpoint.to_directory(tempfile.mkdtemp(prefix="pointtune-restored-"))


class TrainSession:
    """The loop's view of a Ray Train worker (or of Train's in-process local mode)."""

    def __init__(self, cpus_per_worker: float | None = None, verbose: bool = False):
        import ray.train
        from ray.train.torch import get_device

        from pointtune.console import quiet_worker

        quiet_worker(verbose)
        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = get_device()
        if self.device.type == "cpu" and cpus_per_worker:
            torch.set_num_threads(max(1, math.floor(cpus_per_worker)))

    def checkpoint_dir(self) -> str | None:
        """A private local copy of the checkpoint to resume from, which the caller owns (``None``: start
        fresh); see :func:`private_copy`."""
        import ray.train

        return private_copy(ray.train.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, owned: bool = False) -> None:
        """Send one epoch's metrics (and, from rank 0, the checkpoint directory) to Ray Train.

        An ``owned`` checkpoint directory (a fresh one the session may delete) is uploaded to the run's
        storage in the background while the next epoch trains, then deleted; one that is not is uploaded
        before this returns.
        """
        import ray.train
        from ray.train import CheckpointUploadMode

        if checkpoint is None:
            ray.train.report(metrics)
        elif owned:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)),
                             checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                             delete_local_checkpoint_after_upload=True)
        else:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)))

    def prepare_model(self, model: torch.nn.Module, ddp_options: dict[str, bool]) -> torch.nn.Module:
        """Move to the device and, with several workers, wrap in DDP with the method's ``ddp_options``
        (:meth:`pointtune.method.Method.ddp_options`)."""
        from ray.train.torch import prepare_model

        return prepare_model(model, parallel_strategy_kwargs=ddp_options)

    def prepare_loader(self, loader):
        """Shard a training loader across workers (``DistributedSampler``) and move batches to the device."""
        from ray.train.torch import prepare_data_loader

        return prepare_data_loader(loader)


class TuneSession:
    """The loop's view of a single-process Tune trial (world size 1): CPU, or the trial's one GPU."""

    rank, world_size = 0, 1

    def __init__(self, cpus: float):
        import ray

        gpus = ray.get_gpu_ids()
        self.device = torch.device("cuda", 0) if gpus and torch.cuda.is_available() else torch.device("cpu")
        torch.set_num_threads(max(1, math.floor(cpus)))

    def checkpoint_dir(self) -> str | None:
        """A private local copy of the checkpoint Tune restored this trial from, which the caller owns
        (``None``: start fresh); see :func:`private_copy`."""
        from ray import tune

        return private_copy(tune.get_checkpoint())

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, owned: bool = False) -> None:
        """Send one epoch's metrics (and the checkpoint directory, if one was written) to Tune, which copies
        the checkpoint into the trial's storage before this returns; an ``owned`` directory is then deleted."""
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None)
        if checkpoint is not None and owned:
            shutil.rmtree(checkpoint, ignore_errors=True)

    def prepare_model(self, model: torch.nn.Module, ddp_options: dict[str, bool]) -> torch.nn.Module:
        """Move to the device (one process: no DDP, ``ddp_options`` unused)."""
        return model.to(self.device)

    def prepare_loader(self, loader):
        """One process: the loader as it is (the loop moves batches to the device)."""
        return loader


class Announcing:
    """A session whose first report also carries ``extra``, e.g. a sweep trial's experiment (``experiment``:
    its config as JSON) for the sweep's driver, which logs it as the trial's MLflow params: the trial builds
    its config once and the driver reads it instead of building it again. Everything else is ``session``'s."""

    def __init__(self, session, extra: dict[str, Any]):
        self._session, self._extra = session, extra

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def report(self, metrics: dict[str, Any], checkpoint: Path | None, owned: bool = False) -> None:
        """The session's report, with ``extra`` added the first time."""
        if self._extra is not None:
            metrics, self._extra = {**metrics, **self._extra}, None
        self._session.report(metrics, checkpoint, owned)
