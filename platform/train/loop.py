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
``<run dir>/checkpoints``).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from pointtune.config import ExperimentConfig, OptimConfig
from pointtune.data import build_datasets, describe_split
from pointtune.memory import peak_bytes, reset_peak
from pointtune.method import Method
from pointtune.objective import BestEpoch
from pointtune.protocols import build_eval_splits, evaluate, to_device
from pointtune.train.checkpoint import LocalCheckpoints, load_state, rng_state, save_state, set_rng_state
from pointtune.schedules import schedule_values
from pointtune.train.schedule import apply_schedules
from pointtune.train.session import EXPERIMENT_KEY, Announcing, TrainSession, TuneSession


@dataclass
class LoopConfig:
    """What the loop needs besides the experiment, the same for ``pointtune train`` and every sweep trial.

    Attributes:
        experiment: the validated :class:`~pointtune.config.ExperimentConfig` (built once by the caller; it
            travels to Ray Train's workers pickled, never rebuilt).
        metric, mode: the objective (model selection and the best checkpoint).
        secondary: a multi-objective sweep's other objectives: reported as ``best/<metric>`` at the epoch
            ``metric`` selects (:class:`~pointtune.objective.BestEpoch`); they select nothing.
        mlflow: ``pointtune train`` only: ``{tracking_uri, run_id}``; rank 0 logs each epoch there before
            reporting it. Sweeps log from the Tune driver instead, exactly what Tune received.
        local_dir: local mode: where ``latest`` and ``best`` checkpoints are kept (Ray keeps none there).
        progress: show a progress bar where it can be redrawn (one process, a terminal: :func:`_shows_progress`).
        cpus_per_worker: CPUs a worker holds; a CPU worker uses that many torch threads.
        verbose: keep Ray Train's INFO lines (e.g. every report's full metrics) on the console.
        metrics_file: ``pointtune train``: rank 0 appends each epoch's metrics there as a JSON line.
        announce: sweep trials: rank 0's first report carries the experiment (``experiment``, JSON) for the
            driver's MLflow params (:class:`~pointtune.train.session.Announcing`).
        trial_id: sweep trials: the Tune trial id, written into every checkpoint. A trial that resumes from a
            checkpoint another trial wrote (a PBT exploit) reports ``pbt/exploit`` = 1 and ``pbt/donor`` (that
            trial's id) with its next epoch: a record kept by the trials themselves, which survives a killed
            driver.
    """

    experiment: ExperimentConfig
    metric: str
    mode: str
    secondary: tuple[str, ...] = ()
    mlflow: dict[str, str] | None = None
    local_dir: str | None = None
    progress: bool = False
    cpus_per_worker: float | None = None
    verbose: bool = False
    metrics_file: str | None = None
    announce: bool = False
    trial_id: str | None = None

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


def _train_one_epoch(
    model: torch.nn.Module, method: Method, loader, optimizer, scaler, exp: ExperimentConfig, epoch: int,
    device: torch.device, show_progress: bool,
) -> dict[str, float]:
    """One pass over ``loader`` (``model``: the method, wrapped in DDP on several workers); returns the
    mean of every scalar the method reported (losses, diagnostics) over the epoch's steps."""
    model.train()
    use_amp = exp.train.amp and device.type == "cuda"
    steps, epochs = len(loader), exp.train.epochs
    if exp.train.limit_batches is not None:
        steps = min(steps, exp.train.limit_batches)
    sums: dict[str, float] = {}
    batches = loader
    if show_progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", total=steps, leave=False, dynamic_ncols=True)
    for i, batch in enumerate(batches):
        if i == steps:  # train.limit_batches
            break
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
def _weights(method: Method, weights: dict[str, torch.Tensor]):
    """Run the block with ``weights`` (a state dict) loaded into ``method``, then put its own back."""
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


@dataclass
class _Run:
    """What the steps of one run share on this worker: the experiment, its data, the method and its optimizer,
    and the model selection (``best``, with the selected epoch's weights while they differ from the current)."""

    loop: LoopConfig
    session: Any
    data: Any  # pointtune.data.DatasetBundle
    judged: Any  # pointtune.protocols.EvalSplits: what the protocol fits and scores on
    method: Method
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    best: BestEpoch
    best_weights: dict[str, torch.Tensor] | None = None
    local: LocalCheckpoints | None = None
    start_epoch: int = 0
    donor: str | None = None  # the trial whose checkpoint this one resumed from (PBT), until its next report

    @property
    def exp(self) -> ExperimentConfig:
        return self.loop.experiment

    @property
    def rank(self) -> int:
        return self.session.rank

    def score(self, split: str) -> tuple[dict[str, float], np.ndarray | None, dict[str, np.ndarray]]:
        """The protocol's metrics on ``split`` (``val`` or ``test``; every rank scores its shard, indices
        rank::world, and the protocol merges the shards exactly), named ``<split>/<metric>``, its confusion
        matrix and its other arrays (e.g. ``spectrum``), saved into checkpoints as ``<name>.npy``."""
        splits = {"fit": self.judged.fit, "eval": self.judged.val if split == "val" else self.judged.test}
        scores, confusion, arrays = evaluate(self.method, splits, self.session.device, self.judged.class_names,
                                             self.exp.protocol, batch_size=self.exp.train.eval_batch_size,
                                             return_arrays=True, split=split)
        return {f"{split}/{k}": v for k, v in scores.items()}, confusion, arrays

    @property
    def has_test(self) -> bool:
        return self.judged.test is not None and len(self.judged.test) > 0


def run_loop(loop: LoopConfig, session) -> None:
    """Train one experiment on this worker, reporting through ``session``: set up, resume, then per epoch
    train, evaluate, select the best epoch, score the test split at the last, checkpoint and report.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (the run fails with that message).
        ValueError: the validation split is empty.
    """
    if loop.announce and session.rank == 0:
        session = Announcing(session, {EXPERIMENT_KEY: json.dumps(loop.experiment.to_dict())})
    run = _setup(loop, session)
    exp = run.exp
    restored = _resume(run)
    if restored is None:
        _warm_start(run.method, run.rank)
    elif run.start_epoch >= exp.train.epochs:
        # The checkpoint is the run's last epoch (e.g. written by a worker after its driver was killed): the run
        # is complete, and its result is what that checkpoint recorded. It is reported again so that Tune (and
        # through it every record) has it; nothing is trained.
        if run.rank == 0:
            print("[pointtune] that is the last epoch: the run is complete", flush=True)
        metrics, resume_dir, owned = restored
        session.report(metrics, resume_dir if run.rank == 0 else None, owned)
        if owned and run.rank != 0:
            shutil.rmtree(resume_dir, ignore_errors=True)
        return
    if exp.train.epochs == 0:
        _judge_untrained(run)
        return
    model = session.prepare_model(run.method, run.method.ddp_options())
    if session.world_size > 1:  # same initial weights on every worker (seeded alike), then each its own dropout
        torch.manual_seed(exp.train.seed + 1_000_003 * run.rank)
    loader = session.prepare_loader(
        DataLoader(run.data.train, batch_size=exp.train.batch_size, shuffle=True, drop_last=exp.train.drop_last,
                   num_workers=exp.train.loader_workers, persistent_workers=exp.train.loader_workers > 0))
    for epoch in range(run.start_epoch, exp.train.epochs):
        began = time.time()
        reset_peak(run.session.device)
        metrics = _train_epoch(run, model, loader, epoch)
        if run.donor is not None:
            metrics.update({"pbt/exploit": 1.0, "pbt/donor": run.donor})
            run.donor = None
        final = epoch == exp.train.epochs - 1
        evaluated = (epoch + 1) % exp.train.eval_every == 0 or final
        confusion, arrays = None, {}
        if evaluated:
            scores, confusion, arrays = run.score("val")
            metrics.update(scores)
        metrics.update(_costs(run, time.time() - began))  # before the selection: an objective may be a cost
        improved = _select_best(run, metrics, epoch + 1)
        if final and run.has_test:
            _test(run, metrics, improved, epoch + 1)
        _report(run, metrics, epoch, keep=evaluated and (improved or final or (epoch + 1) % exp.train.checkpoint_every == 0),
                improved=improved, confusion=confusion, arrays=arrays)


def _setup(loop: LoopConfig, session) -> _Run:
    """Threads, seeds, the datasets and what the protocol judges on (described on rank 0), the method on the
    session's device, its optimizer and AMP scaler."""
    exp = loop.experiment
    if exp.train.threads is not None:
        torch.set_num_threads(exp.train.threads)
    seed_everything(exp.train.seed)
    data = build_datasets(exp.data)
    judged = build_eval_splits(exp, data)  # the training dataset's splits, or protocol.data's own
    if exp.train.limit_batches is not None:
        judged = judged.limited(exp.train.limit_batches * exp.train.batch_size)
    if session.rank == 0:
        own = judged.source == "data"
        _describe_splits(f"data {exp.data.name}", {"train": data.train, "val": data.val, "test": data.test},
                         data.class_names, warn=own)
        if not own:
            _describe_splits(f"judged on protocol.data {exp.protocol.data.name}",
                             {"fit": judged.fit, "val": judged.val, "test": judged.test}, judged.class_names, warn=True)
    if len(judged.val) == 0:
        raise ValueError(f"{judged.source}.val_fraction: the validation split is empty; evaluation and model "
                         "selection need one (test data is never used for selection)")
    method: Method = exp.method_cls(exp.method, data.num_classes, exp.train.epochs).to(session.device)
    local = LocalCheckpoints(loop.local_dir) if loop.local_dir else None
    if local is not None:
        local.root.mkdir(parents=True, exist_ok=True)
    return _Run(loop, session, data, judged, method, build_optimizer(method, exp.optim),
                torch.amp.GradScaler(session.device.type, enabled=exp.train.amp and session.device.type == "cuda"),
                BestEpoch(loop.metric, loop.mode, secondary=tuple(loop.secondary)), local=local)


def _resume(run: _Run) -> tuple[dict[str, float], Path, bool] | None:
    """Restore the session's checkpoint (or, in local mode, ``<local_dir>/latest``): weights, optimizer,
    scaler, RNG states, the epoch to start from and the model selection with the selected epoch's weights.
    Returns the restored epoch's metrics, the checkpoint directory and whether it is the session's private
    copy (deleted here unless the run is complete and reports it again), or ``None`` on a fresh start."""
    resume_dir = run.session.checkpoint_dir()
    owned = resume_dir is not None
    if resume_dir is None and run.local is not None and (run.local.latest / "state.pt").is_file():
        resume_dir = run.local.latest
    if resume_dir is None:
        return None
    state = load_state(resume_dir, map_location=run.session.device)
    run.method.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    run.start_epoch = state["epoch"] + 1
    run.best.value, run.best.epoch = state["best"], state.get("best_epoch")
    run.best.secondary_values = dict(state.get("best_secondary") or {})
    run.best_weights = state.get("best_model")  # None when the checkpoint's own epoch is the selected one
    if run.loop.trial_id is not None and state.get("trial_id") not in (None, run.loop.trial_id):
        run.donor = state["trial_id"]
    if run.best_weights is None and run.best.epoch == run.start_epoch:
        run.best_weights = {k: v.detach().clone() for k, v in run.method.state_dict().items()}
    if run.rank == 0:
        print(f"[pointtune] resumed after epoch {run.start_epoch}" + ("" if owned else f" ({resume_dir})"), flush=True)
    if owned and run.start_epoch < run.exp.train.epochs:
        shutil.rmtree(resume_dir, ignore_errors=True)
    return dict(state.get("metrics") or {"epoch": run.start_epoch}), Path(resume_dir), owned


def _judge_untrained(run: _Run) -> None:
    """``train.epochs: 0``: the initial model judged by the protocol (the random-initialisation baseline),
    reported as epoch 0 without a checkpoint."""
    metrics = {"epoch": 0, **run.score("val")[0]}
    run.best.update(metrics, 0)
    metrics.update(run.best.as_metrics())
    if run.has_test:
        metrics.update(run.score("test")[0], **{"test/epoch": 0})
    if run.rank == 0:
        _record_epoch(run.loop, metrics, 0)
        print(f"[pointtune] epoch 0 (untrained): {run.best.metric}={metrics.get(run.best.metric, float('nan')):.4f}",
              flush=True)
    run.session.report(metrics, None)


def _shows_progress(run: _Run) -> bool:
    """Whether this process draws the per-batch progress bar (tqdm, on stderr): asked for (``progress``), one
    process training alone, and a terminal to redraw it on. Elsewhere (a Ray worker's output is a file that Ray
    forwards line by line, prefixed with the worker's pid) every update would be a line: the per-epoch lines
    say enough."""
    return run.loop.progress and run.session.world_size == 1 and sys.stderr.isatty()


def _train_epoch(run: _Run, model: torch.nn.Module, loader, epoch: int) -> dict[str, float]:
    """One epoch of training; returns ``epoch`` (1-based), ``lr``, the schedules the epoch followed (at its
    start: what PBT mutated is visible epoch by epoch) as ``sched/<key>`` and the epoch means of the method's
    scalars as ``train/<key>``."""
    exp = run.exp
    if run.session.world_size > 1:
        loader.sampler.set_epoch(epoch)
    run.data.train.set_epoch(epoch)
    stats = _train_one_epoch(model, run.method, loader, run.optimizer, run.scaler, exp, epoch, run.session.device,
                             _shows_progress(run))
    metrics: dict[str, float] = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
    metrics.update({f"sched/{k}": v for k, v in schedule_values(exp, epoch, exp.train.epochs).items()})
    metrics.update({f"train/{k}": v for k, v in stats.items()})
    return metrics


def _select_best(run: _Run, metrics: dict[str, float], epoch: int) -> bool:
    """Model selection (:class:`~pointtune.objective.BestEpoch`, the one rule): whether ``epoch`` is the new
    best; keeps its weights in memory and adds ``best/<metric>`` and ``best/epoch`` to ``metrics``."""
    improved = run.best.update(metrics, epoch)
    if improved:
        run.best_weights = {k: v.detach().clone() for k, v in run.method.state_dict().items()}
    metrics.update(run.best.as_metrics())
    return improved


def _test(run: _Run, metrics: dict[str, float], improved: bool, epoch: int) -> None:
    """Score the test split on the model that validation selected; ``test/epoch`` says which epoch: the best
    one, or this last epoch when it is the best, when no epoch reported a finite objective, or when the best
    epoch's weights are unknown (a checkpoint written before pointtune kept them)."""
    if improved or run.best_weights is None:
        metrics.update(run.score("test")[0])
        metrics["test/epoch"] = epoch
        return
    with _weights(run.method, run.best_weights):
        metrics.update(run.score("test")[0])
    metrics["test/epoch"] = run.best.epoch


def _costs(run: _Run, seconds: float) -> dict[str, float]:
    """What the epoch cost: ``cost/epoch_s`` (wall seconds of training and validation; the test scoring after
    the last epoch is not counted), ``cost/params`` (the method's parameter count) and ``cost/peak_memory_mb``
    (MiB: the most this worker held during the epoch's training and validation: GPU memory PyTorch allocated
    on its device, or on the CPU its process's resident memory; :mod:`pointtune.memory`)."""
    return {"cost/epoch_s": seconds, "cost/params": float(sum(p.numel() for p in run.method.parameters())),
            "cost/peak_memory_mb": peak_bytes(run.session.device) / 2**20}


def _report(run: _Run, metrics: dict[str, float], epoch: int, *, keep: bool, improved: bool,
            confusion: np.ndarray | None, arrays: dict[str, np.ndarray]) -> None:
    """Report the epoch through the session: rank 0 records it (``pointtune train``), writes a checkpoint when
    ``keep`` (with the confusion matrix and the protocol's arrays) and prints one line; other ranks report
    the metrics alone."""
    session, exp = run.session, run.exp
    if run.rank != 0:
        session.report(metrics, None)
        return
    _record_epoch(run.loop, metrics, epoch + 1)
    if not keep:
        session.report(metrics, None)
    else:
        state = {
            "model": run.method.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(), "epoch": epoch, "best": run.best.value, "best_epoch": run.best.epoch,
            "best_secondary": run.best.secondary_values,
            # the selected epoch's weights, when this checkpoint is not that epoch: a resumed run tests on them
            "best_model": None if improved else run.best_weights,
            "rng": rng_state(), "experiment": exp.to_dict(), "metrics": metrics, "class_names": run.data.class_names,
            "trial_id": run.loop.trial_id,
        }
        staged = save_state(Path(tempfile.mkdtemp(prefix="pointtune-ckpt-", dir=run.local.root if run.local else None)),
                            state)
        if confusion is not None:
            np.save(staged / "confusion.npy", confusion)
        for name, array in arrays.items():  # e.g. spectrum.npy (the feature-collapse diagnostic)
            np.save(staged / f"{name}.npy", array)
        if run.local is not None:  # local mode keeps latest and best itself; the session must not delete them
            session.report(metrics, run.local.commit(staged, improved), owned=False)
        else:
            session.report(metrics, staged, owned=True)
    summary = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                        if k.startswith(("train/loss", "val/")) and "/acc/" not in k)
    print(f"[pointtune] epoch {epoch + 1}/{exp.train.epochs}  {summary}  ({metrics['cost/epoch_s']:.1f}s)", flush=True)
