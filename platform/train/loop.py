"""The per-worker training loop shared by every method.

The same :func:`run_loop` runs in-process (local debug mode, Ray Train's ``num_workers=0``), on N
data-parallel Ray Train workers, and directly inside a single-process Tune trial; the
:mod:`~pointtune.train.session` it is given is the only difference. It asks the method for its model,
losses, diagnostics and predictions, and knows nothing else about it. Per optimizer step it sets the
per-iteration learning rate and weight decay (:mod:`~pointtune.train.schedule`), steps, and calls the
method's ``after_step`` hook. Per epoch it evaluates with the selected protocol (:mod:`pointtune.protocols`:
``protocol.name`` or the task's default, on ``protocol.data``'s splits when set, each worker scoring its
shard) every ``train.eval_every`` epochs and at the last (an epoch that does not evaluate reports no ``val/*``
value), and reports the metrics with a checkpoint (model, optimizer, scaler, epoch, best score, RNG states,
the epoch's metrics) at evaluated epochs: every ``train.checkpoint_every``-th, whenever the objective
improves, and at the last epoch. It resumes from the session's checkpoint (or, in local mode,
``<run dir>/checkpoints``); a fresh start takes the weights of the runs the method starts from first
(:meth:`Method.warm_start <pointtune.method.Method.warm_start>`).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pointtune.config import ExperimentConfig, OptimConfig, build_config
from pointtune.data import build_datasets, describe_split
from pointtune.method import Method
from pointtune.protocols import build_eval_splits, evaluate, to_device
from pointtune.train.checkpoint import LocalCheckpoints, load_state, rng_state, save_state, set_rng_state
from pointtune.schedules import schedule_values
from pointtune.train.schedule import apply_schedules
from pointtune.train.session import TrainSession, TuneSession


@dataclass
class LoopConfig:
    """What the loop needs besides the experiment, the same for ``pointtune train`` and every sweep trial.

    Attributes:
        experiment: an :class:`~pointtune.config.ExperimentConfig` as a dict (``to_dict()``).
        metric, mode: the objective (model selection and the best checkpoint).
        mlflow: ``pointtune train`` only: ``{tracking_uri, run_id}``; rank 0 logs each epoch there before
            reporting it. Sweeps log from the Tune driver instead, exactly what Tune received.
        local_dir: local mode: where ``latest`` and ``best`` checkpoints are kept (Ray keeps none there).
        progress: show a progress bar (rank 0).
        cpus_per_worker: CPUs a worker holds; a CPU worker uses that many torch threads.
        verbose: keep Ray Train's INFO lines (e.g. every report's full metrics) on the console.
        metrics_file: ``pointtune train``: rank 0 appends each epoch's metrics there as a JSON line.
    """

    experiment: dict[str, Any]
    metric: str
    mode: str
    mlflow: dict[str, str] | None = None
    local_dir: str | None = None
    progress: bool = False
    cpus_per_worker: float | None = None
    verbose: bool = False
    metrics_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for ``TorchTrainer(train_loop_config=...)``."""
        return asdict(self)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial is stopped and reported as failed."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(method: Method, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the method's parameter groups (:meth:`Method.param_groups`); the
    learning rate and weight decay are set per step by :func:`~pointtune.train.schedule.apply_schedules`."""
    groups = method.param_groups(cfg.weight_decay.start)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr.start, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr.start)


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` improves on ``best`` (``None``: nothing yet) for ``mode`` ``max`` or ``min``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _train_one_epoch(
    model: torch.nn.Module, method: Method, loader, optimizer, scaler, exp: ExperimentConfig, epoch: int,
    device: torch.device, show_progress: bool,
) -> dict[str, float]:
    """One pass over ``loader`` (``model``: the method, wrapped in DDP on several workers); returns the
    mean of every scalar the method reported (losses, diagnostics) over the epoch's steps."""
    model.train()
    use_amp = exp.train.amp and device.type == "cuda"
    steps, epochs = len(loader), exp.train.epochs
    sums: dict[str, float] = {}
    batches = loader
    if show_progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True)
    for i, batch in enumerate(batches):
        step = epoch * steps + i
        apply_schedules(optimizer, exp.optim, step, steps, epochs)
        batch = to_device(batch, device)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(batch, epoch, (epoch + i / max(steps, 1)) / epochs)
        loss = out["loss"]
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in out.items() if v.numel() == 1)
            raise NonFiniteLossError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1} ({terms})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if exp.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), exp.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        method.after_step(step + 1, epochs * steps)
        for key, value in out.items():
            if value.numel() == 1:
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        if show_progress:
            batches.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return {key: total / max(steps, 1) for key, total in sums.items()}


def _describe_splits(label: str, splits: dict[str, Any], names: list[str], warn: bool) -> None:
    """One line per split (clouds, or scene items, and classes present) and, with ``warn``, a warning naming
    the classes without a validation cloud (scenes: labelled point), whose accuracy is never measured before
    the test (:func:`pointtune.data.describe_split`)."""
    summaries = {split: describe_split(dataset) for split, dataset in splits.items() if dataset is not None}
    for split, summary in summaries.items():
        present = int((summary.class_counts > 0).sum())
        print(f"[pointtune] {label} {split}: {summary.text}, {present} of {len(names)} classes", flush=True)
    val = summaries.get("val")
    missing = [n for n, c in zip(names, val.class_counts) if c == 0] if val is not None else []
    if warn and missing and len(splits["val"]):
        print(f"[pointtune] warning: no validation {val.unit} for {len(missing)} class(es): {', '.join(missing)}",
              flush=True)


@contextlib.contextmanager
def _weights(method: Method, weights: dict[str, torch.Tensor] | None):
    """Run the block with ``weights`` (a state dict) loaded into ``method``, then put its own back;
    ``None``: the method as it is."""
    if weights is None:
        yield
        return
    own = {k: v.detach().clone() for k, v in method.state_dict().items()}
    method.load_state_dict(weights)
    try:
        yield
    finally:
        method.load_state_dict(own)


def _record_epoch(loop: LoopConfig, metrics: dict[str, float], step: int) -> None:
    """Rank 0 of ``pointtune train``: one epoch's metrics to the run's MLflow run and its ``metrics_file``
    (sweeps set neither: their driver records what Tune receives)."""
    if loop.mlflow:
        from pointtune.tracking import log_metrics

        log_metrics(loop.mlflow, metrics, step)
    if loop.metrics_file:
        with open(loop.metrics_file, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")


def _warm_start(method: Method, rank: int) -> None:
    """A fresh start's initial weights from the runs the method starts from (:meth:`Method.weight_sources`,
    rebuilt by :func:`~pointtune.train.sources.load_sources`, applied by :meth:`Method.warm_start`), one line
    per source on rank 0. Never on a resume: the checkpoint holds every weight.

    Raises:
        ConfigError: a source that cannot be read or does not fit (one line starting with its key).
    """
    from pointtune.train.sources import load_sources

    sources = load_sources(method)
    if rank == 0:
        for key, path in method.weight_sources().items():
            print(f"[pointtune] warm start: {key} <- {path}", flush=True)
    method.warm_start(sources)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer``, any number of workers): ``config`` is a
    :class:`LoopConfig` as a dict."""
    loop = LoopConfig(**config)
    run_loop(loop, TrainSession(loop.cpus_per_worker, loop.verbose))


def tune_trial_loop(loop: LoopConfig) -> None:
    """Entry point inside a single-process Tune trial's own actor."""
    run_loop(loop, TuneSession(loop.cpus_per_worker or 1))


def run_loop(loop: LoopConfig, session) -> None:
    """Train one experiment on this worker, reporting through ``session``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the run fails with that message).
        ValueError: the validation split is empty.
    """
    exp = build_config(loop.experiment["method"]["name"], loop.experiment)
    metric, mode = loop.metric, loop.mode
    rank, world, device = session.rank, session.world_size, session.device
    if exp.train.threads is not None:
        torch.set_num_threads(exp.train.threads)
    seed_everything(exp.train.seed)

    data = build_datasets(exp.data)
    # What the protocol judges on: the training dataset's splits, or protocol.data's own.
    judged = build_eval_splits(exp, data)
    if rank == 0:
        own = judged.source == "data"
        _describe_splits(f"data {exp.data.name}", {"train": data.train, "val": data.val, "test": data.test},
                         data.class_names, warn=own)
        if not own:
            _describe_splits(f"judged on protocol.data {exp.protocol.data.name}",
                             {"fit": judged.fit, "val": judged.val, "test": judged.test}, judged.class_names, warn=True)
    if len(judged.val) == 0:
        raise ValueError(f"{judged.source}.val_fraction: the validation split is empty; evaluation and model "
                         "selection need one (test data is never used for selection)")
    method: Method = exp.method_cls(exp.method, data.num_classes, exp.train.epochs).to(device)
    optimizer = build_optimizer(method, exp.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=exp.train.amp and device.type == "cuda")

    local = LocalCheckpoints(loop.local_dir) if loop.local_dir else None
    if local is not None:
        local.root.mkdir(parents=True, exist_ok=True)
    start_epoch, best, best_epoch, best_weights = 0, None, None, None
    resume_dir = session.checkpoint_dir()
    if resume_dir is None and local is not None and (local.latest / "state.pt").is_file():
        resume_dir = local.latest
    if resume_dir is not None:
        state = load_state(resume_dir, map_location=device)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, best_epoch = state["epoch"] + 1, state["best"], state.get("best_epoch")
        set_rng_state(state["rng"])
        if rank == 0:
            print(f"[pointtune] resumed after epoch {start_epoch} ({resume_dir})", flush=True)
        if start_epoch >= exp.train.epochs:
            # The checkpoint is the run's last epoch (e.g. written by a worker after its driver was killed): the
            # run is complete, and its result is what that checkpoint recorded. It is reported again so that Tune
            # (and through it every record) has it; nothing is trained.
            if rank == 0:
                print("[pointtune] that is the last epoch: the run is complete", flush=True)
            session.report(dict(state.get("metrics") or {"epoch": start_epoch}),
                           Path(resume_dir) if rank == 0 else None)
            return
    else:
        _warm_start(method, rank)

    model = session.prepare_model(method, method.ddp_options())
    if world > 1:  # same initial weights on every worker (seeded alike), then each its own dropout stream
        torch.manual_seed(exp.train.seed + 1_000_003 * rank)
    train_loader = session.prepare_loader(
        DataLoader(data.train, batch_size=exp.train.batch_size, shuffle=True, drop_last=exp.train.drop_last,
                   num_workers=exp.train.loader_workers, persistent_workers=exp.train.loader_workers > 0)
    )
    # Each rank evaluates only its shard of every split (indices rank::world, no padding); the protocol
    # merges the shards exactly (summed confusion matrices, gathered features), identical on all ranks.
    val_splits = {"fit": judged.fit, "eval": judged.val}
    test_splits = {"fit": judged.fit, "eval": judged.test} if judged.test is not None and len(judged.test) else None
    def score(splits: dict, prefix: str) -> tuple[dict[str, float], np.ndarray | None, dict[str, np.ndarray]]:
        """The protocol's metrics on ``splits`` (every rank its shard), named ``<prefix>/<metric>``, its
        confusion matrix and its other arrays (e.g. ``spectrum``), saved into checkpoints as ``<name>.npy``."""
        scores, confusion, arrays = evaluate(method, splits, device, judged.class_names, exp.protocol,
                                             batch_size=exp.train.eval_batch_size, return_arrays=True, split=prefix)
        return {f"{prefix}/{k}": v for k, v in scores.items()}, confusion, arrays

    show_progress = loop.progress and rank == 0
    if exp.train.epochs == 0:  # the initial model judged by the protocol: the random-initialisation baseline
        metrics = {"epoch": 0, **score(val_splits, "val")[0]}
        metrics[f"best/{metric}"] = metrics.get(metric, float("nan"))
        if test_splits is not None:
            metrics.update(score(test_splits, "test")[0], **{"test/epoch": 0})
        if rank == 0:
            _record_epoch(loop, metrics, 0)
            print(f"[pointtune] epoch 0 (untrained): {metric}={metrics.get(metric, float('nan')):.4f}", flush=True)
        session.report(metrics, None)
        return
    for epoch in range(start_epoch, exp.train.epochs):
        began = time.time()
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        data.train.set_epoch(epoch)
        stats = _train_one_epoch(model, method, train_loader, optimizer, scaler, exp, epoch, device, show_progress)
        metrics: dict[str, float] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        # The schedules this epoch followed (at its start): what PBT mutated is visible epoch by epoch.
        metrics.update({f"sched/{k}": v for k, v in schedule_values(exp, epoch, exp.train.epochs).items()})
        metrics.update({f"train/{k}": v for k, v in stats.items()})
        final = epoch == exp.train.epochs - 1
        confusion, arrays = None, {}
        evaluated = (epoch + 1) % exp.train.eval_every == 0 or final
        if evaluated:
            scores, confusion, arrays = score(val_splits, "val")
            metrics.update(scores)
        improved = is_better(metrics.get(metric), best, mode)
        if improved:
            best, best_epoch = metrics[metric], epoch + 1
            best_weights = {k: v.detach().clone() for k, v in method.state_dict().items()}
        metrics[f"best/{metric}"] = best if best is not None else float("nan")
        if final and test_splits is not None:
            # Test is scored on the model that validation selected (the best epoch; the last one only when the
            # best epoch's weights are not in memory, i.e. it came before a resume); test/epoch says which.
            scored = best_weights if best_weights is not None and not improved else None
            with _weights(method, scored):
                metrics.update(score(test_splits, "test")[0])
            metrics["test/epoch"] = best_epoch if scored is not None else epoch + 1
        metrics["time/epoch_s"] = time.time() - began

        if rank != 0:
            session.report(metrics, None)
            continue
        _record_epoch(loop, metrics, epoch + 1)
        keep = evaluated and (improved or final or (epoch + 1) % exp.train.checkpoint_every == 0)
        if not keep:
            session.report(metrics, None)
        else:
            state = {
                "model": method.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch,
                "best": best, "best_epoch": best_epoch, "rng": rng_state(), "experiment": exp.to_dict(), "metrics": metrics,
                "class_names": data.class_names,
            }
            staged = save_state(Path(tempfile.mkdtemp(prefix="pointtune-ckpt-", dir=local.root if local else None)),
                                state)
            if confusion is not None:
                np.save(staged / "confusion.npy", confusion)
            for name, array in arrays.items():  # e.g. spectrum.npy (the feature-collapse diagnostic)
                np.save(staged / f"{name}.npy", array)
            if local is not None:  # local mode keeps latest and best itself; the session must not delete them
                session.report(metrics, local.commit(staged, improved), owned=False)
            else:
                session.report(metrics, staged, owned=True)
        summary = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(("train/loss", "val/")) and "/acc/" not in k)
        print(f"[pointtune] epoch {epoch + 1}/{exp.train.epochs}  {summary}  ({metrics['time/epoch_s']:.1f}s)",
              flush=True)
