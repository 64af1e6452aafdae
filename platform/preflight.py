"""Checks that run before anything starts: no Ray, no MLflow store, no run directory until they pass.

Every check raises :class:`~pointtune.config.ConfigError` or :class:`~pointtune.data.DatasetError` with a
one-line message naming the flag, file, key or value at fault; the CLI prints it as
``pointtune: error: ...`` and exits with status 2.

* :func:`check_numbers`: the CLI's numbers (``--trials``, ``--workers``, ``--seed``, ...) or the same
  fields of a ``sweep.yaml``.
* :func:`check_tracking_uri`: ``--mlflow-uri`` (or ``$MLFLOW_TRACKING_URI``) has a scheme MLflow tracks to.
* :func:`check_storage`: ``--storage`` is a path or a URI of a filesystem Ray Tune writes to.
* :func:`check_gpus`: GPUs asked of the local machine exist (CUDA build of torch, visible devices).
* :func:`preflight`: the datasets build, the splits can feed the loop, and the method builds on the CPU,
  warm-starts from the runs it starts from (``method.pretrained``, ``method.stage1_from``) and runs one training
  forward pass plus ``predict`` / ``embed`` on a tiny batch.
* :func:`load_sweep_yaml_checked`: a ``sweep.yaml`` is a mapping of known fields.

Normals (``data.use_normals``): accepted on a dataset that has them (``synthetic``: analytic normals;
``modelnet40_resampled``, ``shapenetpart``; the HDF5 layouts when every file has a ``normal`` key). The
items then carry ``normals`` ``(N, 3)``, which the methods of this project ignore. On a dataset without
normals (``scanobjectnn``; ``modelnet40`` / ``modelnet10`` / ``shapenetpart_h5`` files without ``normal``)
:func:`pointtune.data.build_datasets`, called here, raises a ``data.use_normals`` DatasetError.
"""

from __future__ import annotations

import difflib
import math
import os
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pointtune.config import ConfigError, ExperimentConfig, build_config
from pointtune.data import DatasetBundle, DatasetError
from pointtune.memory import peak_bytes, reset_peak, rss_bytes

__all__ = [
    "TRACKING_SCHEMES",
    "BatchTooLargeError",
    "PreflightResult",
    "TINY_BATCH",
    "check_numbers",
    "check_tracking_uri",
    "check_storage",
    "check_gpus",
    "preflight",
    "load_sweep_yaml_checked",
]

# URI schemes of MLflow's tracking-store registry (mlflow 3.x: DATABASE_ENGINES + http(s) + Databricks);
# ``file`` and plain paths are MLflow's file store, refused by MLflow >= 3.13 unless
# MLFLOW_ALLOW_FILE_STORE=true. A "dialect+driver" scheme (postgresql+psycopg2) counts as its dialect.
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
_FILE_SCHEMES = ("", "file")

# Integer fields and their minimum, per command; a field absent from ``values`` or None is not checked
# (``epochs``, ``max_concurrent``: None means "default").
_MIN_INT = {
    "sweep": {"trials": 1, "epochs": 1, "workers": 1, "max_concurrent": 1, "grace_period": 1, "seed": 0,
              "pbt_interval": 1, "startup_trials": 0},
    "train": {"epochs": 0, "workers": 0, "limit_batches": 1},
}
_SEED_MAX = 2**32 - 1  # numpy's (hence Optuna's TPE) seed range


def _flag(key: str, source: str | None) -> str:
    return f"{source}: {key}" if source else "--" + key.replace("_", "-")


def check_numbers(values: Mapping[str, Any], command: str, source: str | None = None) -> None:
    """Check the numeric settings of ``pointtune train`` / ``pointtune sweep`` before anything starts.

    Sweep: ``trials``, ``workers``, ``grace_period`` >= 1; ``startup_trials`` >= 0; ``epochs``, ``max_concurrent`` >= 1 when not
    None; ``seed`` in ``[0, 2**32 - 1]``; ``gpus_per_worker`` >= 0, a fraction <= 1 or a whole number;
    ``cpus_per_worker`` > 0, a fraction < 1 or a whole number, when not None; ``memory_per_worker`` > 0 (GB)
    when not None; ``wait_for_resources`` >= 0
    and ``worker_start_timeout`` > 0 (seconds) when present. Train: ``workers`` >= 0 (0 = in-process),
    ``epochs`` >= 1 when not None. Other keys are ignored.

    Args:
        values: field name -> value, e.g. ``vars(args)`` or a ``sweep.yaml`` mapping.
        command: ``"train"`` or ``"sweep"``.
        source: None for CLI flags (messages name ``--grace-period``), or a file name (messages name
            ``<file>: grace_period``).

    Raises:
        ConfigError: the first bad value, e.g. ``--grace-period must be an integer >= 1, got 0``.
    """
    for key, minimum in _MIN_INT[command].items():
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_flag(key, source)} must be an integer >= {minimum}, got {value!r}")
        if value < minimum:
            raise ConfigError(f"{_flag(key, source)} must be an integer >= {minimum}, got {value}")
        if key == "seed" and value > _SEED_MAX:
            raise ConfigError(f"{_flag(key, source)} must be in [0, {_SEED_MAX}], got {value}")
    if command != "sweep":
        return
    for key, positive in (("gpus_per_worker", False), ("cpus_per_worker", True)):
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{_flag(key, source)} must be a number, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise ConfigError(f"{_flag(key, source)} must be {'> 0' if positive else '>= 0'}, got {value:g}")
        if value > 1 and not float(value).is_integer():  # Ray accepts fractions only below one
            raise ConfigError(f"{_flag(key, source)} must be a fraction <= 1 or a whole number, got {value:g}")
    memory = values.get("memory_per_worker")
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, (int, float))
                               or not math.isfinite(memory) or memory <= 0):
        raise ConfigError(f"{_flag('memory_per_worker', source)} must be a number of GB > 0, got {memory!r}")
    for key, positive in (("wait_for_resources", False), ("worker_start_timeout", True)):
        value = values.get(key)
        if value is None:
            continue
        bad = isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)
        if bad or value < 0 or (positive and value == 0):
            raise ConfigError(f"{_flag(key, source)} must be a number of seconds {'> 0' if positive else '>= 0'}, "
                              f"got {value!r}")


def check_tracking_uri(uri: str | None) -> None:
    """Check an MLflow tracking URI without contacting it.

    ``uri`` is ``--mlflow-uri``; None checks ``$MLFLOW_TRACKING_URI`` instead (when set), since that is what
    :func:`pointtune.tracking.resolve_tracking_uri` would use. Accepted: the schemes of
    :data:`TRACKING_SCHEMES`; ``sqlite:///PATH`` only when the parent directory of ``PATH`` exists (MLflow
    would create it silently, hiding a typo) and ``PATH`` is not a directory; ``http(s)://`` with a host;
    ``file:`` or a plain path only with ``MLFLOW_ALLOW_FILE_STORE=true`` (MLflow 3 refuses its file store
    otherwise).

    Raises:
        ConfigError: naming ``--mlflow-uri`` (or ``$MLFLOW_TRACKING_URI``) and the URI.
    """
    what = "--mlflow-uri"
    if uri is None:
        uri, what = os.environ.get("MLFLOW_TRACKING_URI"), "$MLFLOW_TRACKING_URI"
        if not uri:
            return
    if uri in ("databricks", "databricks-uc", "uc"):  # the workspace of the default Databricks profile
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower().split("+", 1)[0]
    if scheme in _FILE_SCHEMES:
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true", "yes"):
            return
        raise ConfigError(f"{what} {uri!r}: MLflow 3 refuses its file store (a directory or file: URI) unless "
                          "MLFLOW_ALLOW_FILE_STORE=true; use sqlite:///PATH/mlflow.db or a tracking server")
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(f"{what} {uri!r}: unknown tracking URI scheme {parsed.scheme!r}; MLflow tracks to "
                          f"{', '.join(s + ':' for s in TRACKING_SCHEMES)} (e.g. sqlite:///runs/mlflow.db)")
    if scheme in ("http", "https") and not parsed.netloc:
        raise ConfigError(f"{what} {uri!r}: no host in the tracking server URI (e.g. http://localhost:5000)")
    if scheme == "sqlite":
        rest = uri.split("://", 1)[1] if "://" in uri else ""
        path = rest[1:] if rest.startswith("/") else rest  # sqlite:///rel.db -> rel.db, sqlite:////abs -> /abs
        path = path.split("?", 1)[0]
        if path in ("", ":memory:"):
            raise ConfigError(f"{what} {uri!r}: an in-memory SQLite store is lost at exit and not shared with "
                              "Ray workers; give a file, e.g. sqlite:///runs/mlflow.db")
        target = Path(path)
        if not target.parent.is_dir():
            raise ConfigError(f"{what} {uri!r}: directory {target.parent} does not exist")
        if target.is_dir():
            raise ConfigError(f"{what} {uri!r}: {target} is a directory, not a database file")


# Schemes of the filesystems Ray Tune's storage_path goes through (pyarrow.fs): a local path has none.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "mock")


def check_storage(uri: str | None) -> None:
    """Check ``--storage`` without contacting it: a local path (made absolute later) or a URI of a filesystem
    Ray Tune can write to (:data:`STORAGE_SCHEMES`) with a bucket or host.

    Raises:
        ConfigError: an unknown scheme or a URI without a bucket; names ``--storage`` and the URI.
    """
    if not uri or "://" not in uri:
        return
    parsed = urlparse(uri)
    if parsed.scheme.lower() not in STORAGE_SCHEMES:
        raise ConfigError(f"--storage {uri!r}: unknown filesystem {parsed.scheme!r}; Ray Tune writes to a local or "
                          f"NFS path or to {', '.join(s + '://' for s in STORAGE_SCHEMES if s != 'mock')}")
    if parsed.scheme.lower() not in ("file", "mock") and not parsed.netloc:
        raise ConfigError(f"--storage {uri!r}: no bucket or host (e.g. s3://my-bucket/pointtune)")


def check_gpus(workers: int, gpus_per_worker: float, flags: str) -> None:
    """Check that this machine gives ``workers`` workers ``gpus_per_worker`` GPUs each (at least one
    worker: ``pointtune train --gpu`` in local mode uses one GPU). Call it only where the work runs on this
    machine (``pointtune train``; ``pointtune sweep`` without ``--address``).

    Counts the CUDA devices torch sees (none with a CPU build of torch or ``CUDA_VISIBLE_DEVICES=""``),
    without creating a CUDA context.

    Args:
        workers: Ray Train workers (0 = in-process, counted as 1).
        gpus_per_worker: GPUs per worker (fractions share a GPU); <= 0 checks nothing.
        flags: the flags to name in the message, e.g. ``--gpu`` or ``--gpus-per-worker 1``.

    Raises:
        ConfigError: fewer GPUs than asked; the message says ``... GPUs, but the cluster has N`` and why.
    """
    if gpus_per_worker <= 0:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    workers = max(int(workers), 1)
    need = workers * gpus_per_worker
    if need <= have + 1e-9:
        return
    if torch.version.cuda is None and torch.version.hip is None:
        why = "torch is a CPU build; install the CUDA build (README: GPU users)"
    elif os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        why = "CUDA_VISIBLE_DEVICES is empty"
    else:
        why = f"torch sees {have} CUDA device(s)"
    raise ConfigError(f"{flags}: {workers} worker(s) x {gpus_per_worker:g} GPU = {need:g} GPUs, but the cluster "
                      f"has {have} (this machine: {why})")


class BatchTooLargeError(ConfigError):
    """``train.batch_size`` exceeds the training items each worker gets, with ``train.drop_last`` (every epoch
    would be empty). ``fits``: the largest batch size that gives every worker one full batch (0 when a worker
    gets fewer than 2 items, too few for BatchNorm)."""

    def __init__(self, message: str, fits: int):
        super().__init__(message)
        self.fits = fits


@dataclass
class PreflightResult:
    """What :func:`preflight` built and learnt.

    Attributes:
        data: the datasets (reuse them instead of building again).
        loss_terms: keys of the method's ``forward`` output on the tiny batch (``loss``, the loss terms,
            ``logits`` if any); the loop logs each scalar one as ``train/<key>``.
        seconds: wall time of the whole check.
        held_bytes: what the process held before the training step: libraries, datasets, the model (CPU RSS).
        step_bytes: the training step's peak above ``held_bytes`` (forward and backward on ``TINY_BATCH``
            items: activations and gradients).
        optimizer_bytes: the optimizer's state for the model's trainable parameters (SGD momentum: one copy;
            AdamW: two).
    """

    data: DatasetBundle
    loss_terms: tuple[str, ...]
    seconds: float
    held_bytes: int = 0
    step_bytes: int = 0
    optimizer_bytes: int = 0

    def memory_per_worker(self, batch_size: int) -> int:
        """Estimated bytes a CPU worker holds when it trains at ``batch_size``: what it holds, the step's peak
        scaled linearly from ``TINY_BATCH`` items (activations grow with the batch), and the optimizer state.
        An estimate: the allocator may keep more, and a GPU worker's device memory is another matter."""
        return self.held_bytes + self.step_bytes * batch_size // TINY_BATCH + self.optimizer_bytes

    def describe_memory(self, batch_size: int) -> str:
        """One line: the estimate at ``batch_size`` and what it was scaled from."""
        gb = 1e9
        return (f"[pointtune] memory: ~{self.memory_per_worker(batch_size) / gb:.1f} GB per worker at train.batch_size "
                f"{batch_size} (preflight: a training step on {TINY_BATCH} items took {self.step_bytes / 1e6:.0f} MB "
                f"above the {self.held_bytes / gb:.1f} GB held; CPU memory, scaled linearly)")


def _culprit(err: BaseException) -> str:
    """The config key to blame for an exception from building or running a method: ``method.backbone``
    when the innermost pointtune frame is a backbone's, else ``method``."""
    backbones = str(Path(__file__).resolve().parent / "backbones")
    frames = [f.filename for f in traceback.extract_tb(err.__traceback__)]
    ours = [f for f in frames if "pointtune" in f or f.startswith(str(Path(__file__).resolve().parents[1]))]
    return "method.backbone" if ours and ours[-1].startswith(backbones) else "method"


def _one_line(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else repr(err)}"[:400]


def _check_splits(exp: ExperimentConfig, data: DatasetBundle, workers: int) -> None:
    task = exp.method_cls.task.value
    scenes = data.kind == "scenes"
    # Classes and the validation split matter for evaluation (and a classifier's training); with a
    # protocol.data of its own, those are checked on it (_check_judged).
    if data.num_classes < 2 and (exp.protocol.data is None or task != "pretrain"):
        raise DatasetError(
            f"data.classes: dataset {exp.data.name!r} is left with {data.num_classes} class "
            f"({', '.join(data.class_names)}); a {task} method and its evaluation need at least 2"
        )
    if scenes and task == "classification":
        raise ConfigError(
            f"data.name: {exp.data.name!r} is a scene dataset (per-point labels 'seg', no label per item); the "
            f"classification method {exp.method.name} needs a label per cloud (train a segmentation method on it)")
    if scenes:  # the classes a segmentation method learns are those its per-point labels hold
        present = [name for name, count in zip(data.class_names, _class_counts(data.train)) if count > 0]
        if len(present) < 2:
            raise DatasetError(
                f"data: the training scenes of dataset {exp.data.name!r} hold labelled points of {len(present)} "
                f"class(es) ({', '.join(present) or 'none'}); a {task} method needs at least 2 (more scenes, "
                "or another data.val_area / data.val_fraction)")
    if exp.protocol.data is None and len(data.val) == 0:
        raise DatasetError("data.val_fraction: the validation split is empty; evaluation and model selection need "
                           "one (test data is never used for selection)")
    n, world, batch = len(data.train), max(int(workers), 1), exp.train.batch_size
    per_worker = math.ceil(n / world)
    unit = "item" if scenes else "cloud"
    of = f" ({len(data.train.scenes)} scene(s) x data.loop {data.train.loop})" if scenes else ""
    if exp.train.drop_last and per_worker < batch:
        raise BatchTooLargeError(
            f"train.batch_size: {batch} {unit}s per worker, but each of the {world} worker(s) gets {per_worker} of "
            f"the {n} training {unit}s{of}; with train.drop_last every epoch would be empty"
            + ("; lower train.batch_size or raise data.loop" if scenes else ""),
            fits=min(n // world, batch) if n // world >= 2 else 0)
    if not exp.train.drop_last and per_worker % batch == 1:
        raise ConfigError(
            f"train.drop_last: false leaves a last batch of 1 {unit} ({per_worker} {unit}s per worker, "
            f"train.batch_size {batch}), which BatchNorm cannot train on; set it true or change the batch size"
        )


def _class_counts(dataset) -> list[int]:
    """Per class: clouds of a point-cloud split, labelled points of a scene split (:func:`describe_split`)."""
    from pointtune.data import describe_split

    return [int(c) for c in describe_split(dataset).class_counts]


def _split_labels(dataset):
    """What :meth:`Protocol.reported` gets as a split's labels: ``(M,)`` per-cloud labels, or for a scene split
    (no per-item label) every class with labelled points, once each."""
    import numpy as np

    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels)
    return np.flatnonzero(np.asarray(_class_counts(dataset))).astype(np.int64)


def _check_judged(exp: ExperimentConfig, judged, protocol) -> None:
    """``protocol.data``'s splits (when set) can judge: at least 2 classes and a validation split."""
    if judged.source != "protocol.data":
        return
    name = exp.protocol.data.name
    if judged.num_classes < 2:
        raise DatasetError(f"protocol.data.classes: dataset {name!r} is left with {judged.num_classes} class "
                           f"({', '.join(judged.class_names)}); the {protocol.name} protocol needs at "
                           "least 2")
    if len(judged.val) == 0:
        raise DatasetError("protocol.data.val_fraction: the validation split is empty; evaluation and model "
                           "selection need one (test data is never used for selection)")


def _check_reported(exp: ExperimentConfig, protocol, judged, objectives: list[str]) -> None:
    """The protocol reports something on the validation split, and no ``val/`` metric of ``objectives`` is a
    part of it that this data cannot fill (e.g. a few-shot setting with more ways than classes)."""
    fit_labels = _split_labels(judged.fit) if "fit" in protocol.splits else None
    names, skipped = protocol.reported(exp.protocol, fit_labels, _split_labels(judged.val), judged.num_classes)
    where = "protocol.data" if judged.source == "protocol.data" else "data"
    if not names:
        raise ConfigError(f"protocol: the {protocol.name} protocol reports nothing on the validation split of "
                          f"{where} ({exp.protocol.data.name if judged.source == 'protocol.data' else exp.data.name}): "
                          f"skipped {', '.join(skipped)}")
    for objective in objectives:
        if objective.startswith("val/") and objective[4:] in protocol.metrics(exp.protocol) \
                and objective[4:] not in names:
            raise ConfigError(f"objective.metric: {objective!r} is never reported on this data; the "
                              f"{protocol.name} protocol skips {', '.join(skipped)}")


TINY_BATCH = 2  # items of the training step preflight runs


def _tiny_batch(dataset, indices: list[int]) -> dict:
    from torch.utils.data import default_collate

    return default_collate([dataset[i] for i in indices])


def preflight(
    exp: ExperimentConfig, workers: int = 1, objective: str | Sequence[str] | None = None,
    data: DatasetBundle | None = None, step: bool = True,
) -> PreflightResult:
    """Check that ``exp`` can train, on the CPU, in about a second, before any run directory, Ray or MLflow.

    Steps: resolve the evaluation protocol (``protocol.name`` or the task's default,
    :func:`pointtune.protocols.selected_protocol`); build the datasets (:func:`pointtune.data.build_datasets`,
    unless ``data`` is given) and the splits the protocol judges on (``protocol.data``'s own when set,
    :func:`pointtune.protocols.build_eval_splits`); check the splits (at least 2 classes and a non-empty
    validation split where the protocol judges, enough training clouds for one batch of
    ``train.batch_size`` per worker with ``train.drop_last``, no last batch of 1 without it); build the
    method with the training dataset's number of classes (the architecture of a run it starts from, e.g.
    ``method.pretrained``'s, read from that run's checkpoint: :func:`pointtune.train.sources.resolve_sources`
    without copying it) and warm-start it from those runs (:meth:`Method.warm_start
    <pointtune.method.Method.warm_start>`: the checks of a source run); run one ``forward`` and its backward in train mode on
    2 training clouds (of different classes where possible), measuring the step's memory
    (:meth:`PreflightResult.memory_per_worker`), and the protocol's hook (:meth:`Protocol.check_output
    <pointtune.protocols.Protocol.check_output>`: ``predict`` ``(1, K)`` logits, or ``embed`` ``(1, D)``) in
    eval mode on 1 validation cloud of the judged splits. The global torch RNG state and the training set's
    augmentation streams are left as they were. Check that the protocol reports something on the
    validation split (a few-shot setting needs enough classes and clouds). With ``objective``, also check
    it is a metric the run reports (:func:`pointtune.search.space.check_objective` against the selected
    protocol's metrics, with the class names and the method's loss terms) and one this data does not skip.

    Scene datasets (``data.kind == "scenes"``): the items are fixed-size crops without a per-item label, so the
    class checks read the per-point ``seg`` labels (at least 2 classes with labelled training points), the
    batch check counts items (``data.loop`` crops per training scene), the tiny batch is training items 0 and
    1 (two crops), and :meth:`Protocol.reported` gets the classes present in a split's labelled points (once
    each) as that split's labels.

    Args:
        exp: the validated experiment (as ``pointtune train`` runs it, or a sweep's probe trial config).
        workers: data-parallel workers (0 or 1: one process); each gets ``1 / workers`` of the training set.
        objective: a metric name such as ``val/OA`` (a search space's objective), the metrics of a list of
            objectives, or None.
        data: datasets already built from ``exp.data``, if any.
        step: run the training step (forward and backward, its memory measured) and the protocol's hook;
            without it (``--fast-dev-run``, whose own run takes that step at once, with a traceback where it
            fails) the data, splits, config and model are checked, no loss terms are known and the step's
            memory is 0.

    Returns:
        :class:`PreflightResult` with the datasets, the forward pass's output keys and the time taken.

    Raises:
        DatasetError: the dataset or ``protocol.data`` cannot be read or used (see
            :func:`pointtune.data.build_datasets`; messages name ``data.*`` or ``protocol.data.*``), the judged
            data has fewer than 2 classes, or its validation split is empty.
        ConfigError: ``protocol.name`` cannot judge the method's task (or ``protocol.data`` is set for the
            classification protocol), the protocol reports nothing on the validation split, the objective is
            not a metric the run reports or one this data makes the protocol skip, the batch does not fit the
            training split, the model cannot be built (e.g. an unknown ``method.backbone.name``, a backbone
            argument it does not take) or fails on the batch (e.g. a shape mismatch, ``data.num_points`` below
            DGCNN's ``k``), or a run it starts from is missing or does not fit (``method.pretrained`` without
            ``state.pt``, ``method.stage1_from`` naming no SCL stage-1 run); the message names the key
            (``method.backbone`` or ``method`` when the fault is inside the method, the source's key) and the
            original error in one line.
    """
    import torch

    from pointtune.data import build_datasets
    from pointtune.protocols import build_eval_splits, selected_protocol
    from pointtune.train.sources import load_sources, resolve_sources

    began = time.perf_counter()
    protocol = selected_protocol(exp)  # protocol.name fits the method's task; protocol.data fits the protocol
    if data is None:
        data = build_datasets(exp.data)
    _check_splits(exp, data, workers)
    judged = build_eval_splits(exp, data)
    _check_judged(exp, judged, protocol)
    standalone = resolve_sources(exp)  # the architecture of the runs it starts from (nothing is copied)
    if standalone:
        exp = build_config(exp.method.name, exp.to_dict(), standalone, source="preflight: sources")
    cls, name, k = exp.method_cls, exp.method.name, data.num_classes
    labels = getattr(data.train, "labels", None)  # scene items have none: items 0 and 1 (the next crop)
    second = next((i for i in range(1, len(labels)) if labels[i] != labels[0]), 1) if labels is not None else 1
    context = f"{name} on {exp.data.name}, data.num_points={exp.data.num_points}, {k} classes"
    with torch.random.fork_rng(devices=[]):
        try:
            batch = _tiny_batch(data.train, [0, second])
            probe = _tiny_batch(judged.val, [0])
        finally:
            data.train.set_epoch(data.train.epoch)  # forget the visits: training streams start afresh
        try:
            method = cls(exp.method, k, exp.train.epochs)
            method.warm_start(load_sources(method))
        except (ConfigError, DatasetError):
            raise
        except KeyError as err:
            msg = str(err.args[0]) if err.args else repr(err)
            key = "method.backbone.name" if "unknown backbone" in msg else _culprit(err)
            raise ConfigError(f"{key}: {msg} (preflight: building {context})") from err
        except (TypeError, ValueError, RuntimeError, IndexError, NotImplementedError, AssertionError) as err:
            raise ConfigError(f"{_culprit(err)}: cannot build the model: {_one_line(err)} "
                              f"(preflight: {context})") from err
        method.train()
        held, out, step_bytes = rss_bytes(), {}, 0
        reset_peak()
        try:
            if step:
                out = method(batch, 0, 0.0)
                if not isinstance(out, dict) or "loss" not in out:
                    raise TypeError(f"forward returned {type(out).__name__} without a 'loss' entry")
                if out["loss"].requires_grad:
                    out["loss"].backward()
                step_bytes = max(0, peak_bytes() - held)
                method.zero_grad(set_to_none=True)
                method.eval()
                with torch.no_grad():
                    protocol.check_output(method, probe, judged.num_classes)
        except (ConfigError, DatasetError):
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, NotImplementedError,
                AssertionError) as err:
            raise ConfigError(f"{_culprit(err)}: the model fails on a batch of training clouds: {_one_line(err)} "
                              f"(preflight: {context})") from err
    loss_terms = tuple(out)
    objectives = [objective] if isinstance(objective, str) else list(objective or [])
    _check_reported(exp, protocol, judged, objectives)
    from pointtune.search.space import check_objective

    for metric in objectives:
        check_objective(metric, cls.task, "objective.metric", judged.class_names, list(loss_terms),
                        protocol=protocol.name, protocol_cfg=exp.protocol)
    trainable = sum(p.numel() * p.element_size() for p in method.parameters() if p.requires_grad)
    moments = 2 if exp.optim.name == "adamw" else 1
    return PreflightResult(data, loss_terms, time.perf_counter() - began, held, step_bytes, moments * trainable)


def load_sweep_yaml_checked(
    path: str | Path, field_names: Iterable[str], required: Iterable[str] = ()
) -> dict[str, Any]:
    """Read a ``sweep.yaml`` and check its keys against the sweep spec's fields (and its numbers with
    :func:`check_numbers`), so that a misspelled or unknown key is one line instead of a ``TypeError``.

    Args:
        path: ``<sweep dir>/sweep.yaml``.
        field_names: the valid keys, e.g. ``[f.name for f in dataclasses.fields(SweepSpec)]``.
        required: keys that must be present (the fields without a default).

    Returns:
        The mapping, ready for ``SweepSpec(**mapping)``.

    Raises:
        ConfigError: no such file (``<dir>: not a pointtune sweep directory (no sweep.yaml)``), invalid YAML,
            not a mapping, an unknown key (named with the closest valid one), a missing required key, or a
            bad number; names the file.
    """
    from pointtune.config import load_yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path.parent}: not a pointtune sweep directory (no {path.name})")
    tree = load_yaml(path)
    valid = list(field_names)
    for key in tree:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = f"closest valid key: {close[0]}" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(f"{path}: unknown key {key!r}; {hint}")
    missing = [key for key in required if key not in tree]
    if missing:
        raise ConfigError(f"{path}: missing key {missing[0]!r}")
    check_numbers(tree, "sweep", source=str(path))
    return tree
