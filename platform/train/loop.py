"""The per-worker training loop shared by every method.

The same :func:`run_loop` runs in-process (local debug mode, Ray Train's ``num_workers=0``), on N
data-parallel Ray Train workers, and directly inside a single-process Tune trial; the
:mod:`~pointtune.train.session` it is given is the only difference. It asks the method for its model,
losses and predictions, and knows nothing else about it. Per epoch it trains, evaluates with the task's
protocol, and reports the metrics, with a checkpoint (model, optimizer, scheduler, scaler, epoch, best score,
RNG states, the epoch's metrics) every ``train.checkpoint_every`` epochs, whenever the objective improves
and at the last epoch. It resumes from the session's checkpoint (or, in local mode, ``<run dir>/checkpoints``).

``config`` keys: ``experiment`` (an :class:`~pointtune.config.ExperimentConfig` as a dict), ``objective``
(``[metric, mode]``), ``mlflow`` (``pointtune train`` only: ``{tracking_uri, run_id}``; rank 0 logs each
epoch there before reporting it; sweeps log from the Tune driver instead, exactly what Tune received),
``local_dir`` (local mode: where checkpoints are kept), ``progress`` (show a progress bar) and
``cpus_per_worker`` (torch threads of a CPU worker).
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pointtune.config import ExperimentConfig, OptimConfig, build_config
from pointtune.data import build_datasets
from pointtune.method import Method
from pointtune.train.checkpoint import LocalCheckpoints, load_state, rng_state, save_state, set_rng_state
from pointtune.train.evaluate import evaluate, to_device
from pointtune.train.session import TrainSession, TuneSession


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial is stopped and reported as failed."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(
    params, cfg: OptimConfig, epochs: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD (momentum) or AdamW with a cosine / step / constant schedule stepped once per epoch."""
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=min(cfg.min_lr, cfg.lr))
    elif cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def is_better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` improves on ``best`` (``None``: nothing yet) for ``mode`` ``max`` or ``min``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _train_one_epoch(
    model: torch.nn.Module, loader, optimizer, scaler, exp: ExperimentConfig, epoch: int,
    device: torch.device, show_progress: bool,
) -> dict[str, float]:
    """One pass over ``loader``; returns the mean of every logged loss term and the training accuracy."""
    model.train()
    use_amp = exp.train.amp and device.type == "cuda"
    steps = len(loader)
    sums: dict[str, float] = {}
    correct = seen = 0
    batches = loader
    if show_progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{exp.train.epochs}", leave=False, dynamic_ncols=True)
    for step, batch in enumerate(batches):
        batch = to_device(batch, device)
        progress = (epoch + step / max(steps, 1)) / exp.train.epochs
        with torch.autocast(device_type=device.type, enabled=use_amp):
            out = model(batch, epoch, progress)
        loss = out["loss"]
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in out.items() if k != "logits" and v.numel() == 1)
            raise NonFiniteLossError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} ({terms})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if exp.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), exp.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for key, value in out.items():
            if key != "logits" and value.numel() == 1:
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        if "logits" in out and "label" in batch:
            correct += int((out["logits"].detach().argmax(-1) == batch["label"]).sum())
            seen += batch["label"].numel()
        if show_progress:
            batches.set_postfix(loss=f"{float(loss.detach()):.4f}")
    stats = {key: total / max(steps, 1) for key, total in sums.items()}
    if seen:
        stats["acc"] = correct / seen
    return stats


def _log_epoch(config: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """Rank 0 of ``pointtune train``: log one epoch's metrics to the run's MLflow run (if any)."""
    if not config.get("mlflow"):
        return
    from pointtune.tracking import log_metrics

    log_metrics(config["mlflow"], metrics, step)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``TorchTrainer``, any number of workers); see the module docstring."""
    run_loop(config, TrainSession(config.get("cpus_per_worker")))


def tune_trial_loop(config: dict[str, Any]) -> None:
    """Entry point inside a single-process Tune trial's own actor; see the module docstring."""
    run_loop(config, TuneSession(config.get("cpus_per_worker") or 1))


def run_loop(config: dict[str, Any], session) -> None:
    """Train one experiment on this worker, reporting through ``session``.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the run fails with that message).
        ValueError: the validation split is empty.
    """
    exp = build_config(config["experiment"]["method"]["name"], config["experiment"])
    metric, mode = config["objective"]
    rank, world, device = session.rank, session.world_size, session.device
    seed_everything(exp.train.seed)

    data = build_datasets(exp.data)
    if len(data.val) == 0:
        raise ValueError("data.val_fraction: the validation split is empty; evaluation and model selection need "
                         "one (test data is never used for selection)")
    method: Method = exp.method_cls(exp.method, data.num_classes, exp.train.epochs).to(device)
    optimizer, scheduler = build_optimizer(method.parameters(), exp.optim, exp.train.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=exp.train.amp and device.type == "cuda")

    local = LocalCheckpoints(config["local_dir"]) if config.get("local_dir") else None
    if local is not None:
        local.root.mkdir(parents=True, exist_ok=True)
    start_epoch, best = 0, None
    resume_dir = session.checkpoint_dir()
    if resume_dir is None and local is not None and (local.latest / "state.pt").is_file():
        resume_dir = local.latest
    if resume_dir is not None:
        state = load_state(resume_dir, map_location=device)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        set_rng_state(state["rng"])
        if rank == 0:
            print(f"[pointtune] resumed from epoch {start_epoch} ({resume_dir})", flush=True)

    model = session.prepare_model(method)
    train_loader = session.prepare_loader(
        DataLoader(data.train, batch_size=exp.train.batch_size, shuffle=True, drop_last=exp.train.drop_last,
                   num_workers=exp.train.loader_workers, persistent_workers=exp.train.loader_workers > 0)
    )
    # Every rank evaluates the whole validation split: exact metrics, identical on all ranks.
    eval_loaders = {
        "eval": DataLoader(data.val, batch_size=exp.train.eval_batch_size),
        "fit": DataLoader(data.train_eval, batch_size=exp.train.eval_batch_size),
    }
    test_loaders = {**eval_loaders, "eval": DataLoader(data.test, batch_size=exp.train.eval_batch_size)}
    show_progress = bool(config.get("progress")) and rank == 0
    last = {}
    for epoch in range(start_epoch, exp.train.epochs):
        began = time.time()
        if world > 1:
            train_loader.sampler.set_epoch(epoch)
        data.train.set_epoch(epoch)
        stats = _train_one_epoch(model, train_loader, optimizer, scaler, exp, epoch, device, show_progress)
        scheduler.step()
        metrics: dict[str, float] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        metrics.update({f"train/{k}": v for k, v in stats.items()})
        final = epoch == exp.train.epochs - 1
        confusion = None
        if (epoch + 1) % exp.train.eval_every == 0 or final:
            scores, confusion = evaluate(method, eval_loaders, device, data.class_names, **exp.protocol.model_dump())
            last = {f"val/{k}": v for k, v in scores.items()}
        metrics.update(last)
        improved = is_better(metrics.get(metric), best, mode)
        if improved:
            best = metrics[metric]
        metrics[f"best/{metric}"] = best if best is not None else float("nan")
        if final and data.test is not None:
            test_scores, _ = evaluate(method, test_loaders, device, data.class_names, **exp.protocol.model_dump())
            metrics.update({f"test/{k}": v for k, v in test_scores.items()})
        metrics["time/epoch_s"] = time.time() - began

        if rank != 0:
            session.report(metrics, None)
            continue
        _log_epoch(config, metrics, epoch + 1)
        keep = improved or final or (epoch + 1) % exp.train.checkpoint_every == 0
        if not keep:
            session.report(metrics, None)
        else:
            state = {
                "model": method.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                "best": best, "rng": rng_state(), "experiment": exp.to_dict(), "metrics": metrics,
                "class_names": data.class_names,
            }
            with tempfile.TemporaryDirectory(dir=local.root if local else None) as tmp:
                staged = save_state(Path(tmp) / "ckpt", state)
                if confusion is not None:
                    np.save(staged / "confusion.npy", confusion)
                if local is not None:
                    staged = local.commit(staged, improved)
                session.report(metrics, staged)
        summary = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith(("train/loss", "val/")) and "/acc/" not in k)
        print(f"[pointtune] epoch {epoch + 1}/{exp.train.epochs}  {summary}  ({metrics['time/epoch_s']:.1f}s)",
              flush=True)
