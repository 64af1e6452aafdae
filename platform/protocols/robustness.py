"""Robustness of a trained method's frozen features to noisy and sparse input: the noise and density experiments
of SCL (Du et al.), §4.1.3 "Ablation Studies", Fig. 3 (linear-SVM accuracy against Gaussian jitter), Fig. 4
(against the number of points) and Fig. 8 (part segmentation against jitter); specs/scl.md §4.6 and A15.

A run (any checkpoint :func:`pointtune.train.load.load_method` reads) is judged by *its own* protocol
(``protocol.*`` of its config: the linear SVM for self-supervised methods, the method's classifier for supervised
ones, part segmentation when the run was judged so) on the splits it was judged on
(:func:`pointtune.protocols.build_eval_splits`), once on clean clouds and once per perturbation level:

- ``jitter``: every coordinate plus independent ``N(0, sigma^2)`` noise, **unclipped**, in the units of the
  unit-sphere-normalised cloud (the noise is added after the run's evaluation transform, which normalises);
  levels ``sigma`` in :data:`DEFAULT_SIGMAS`.
- ``points``: ``n`` points drawn uniformly at random without replacement from each cloud the run's evaluation
  transform yields (the paper's "randomly sample"; the spec's [CODE] uses FPS), not renormalised; levels in
  :data:`DEFAULT_COUNTS`. A level above the clouds' number of points is skipped with a note.

Choices where the paper is silent (spec A15 [REC]): both the clouds the classifier (SVM, segmentation head) is
fitted on and the scored clouds are perturbed; the encoder is the one pretrained on clean data. The perturbation
is one more step of the data pipeline (:class:`~pointtune.data.transforms.Jitter` with an infinite clip,
:class:`~pointtune.data.transforms.Subsample` ``'random'``) appended to the run's evaluation transform of a
:class:`~pointtune.data.PointCloudDataset`, so ``Method.embed`` sees ordinary batches and per-point labels
(``seg``) follow the kept points. Random streams are seeded per split and per kind from ``seed`` and the cloud
index; all jitter levels share one stream (common random numbers: the noise at ``2 sigma`` is twice that at
``sigma``, which keeps the accuracy curve free of sampling wiggle between levels).

Public API::

    robustness_table(loaded, sigmas, counts, seed, split=, splits=, device=, batch_size=, log=) -> [RobustnessRow]
    perturbations(sigmas, counts) -> [Perturbation]; perturb_dataset(dataset, perturbation, seed, stream)
    metric_columns(rows), write_csv(rows, path), plot_robustness(rows, path, metrics=, title=)
    robust_metrics(rows) -> {"robust/<row>/<metric>": value}

``pointtune robustness RUN`` (loading the run, writing the files, logging to the run's MLflow run) is
:func:`pointtune.robustness_run.run_robustness`.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pointtune.data.dataset import PointCloudDataset
from pointtune.data.transforms import Compose, Jitter, Subsample
from pointtune.errors import ConfigError

if TYPE_CHECKING:
    from pointtune.protocols import EvalSplits
    from pointtune.train.load import LoadedCheckpoint

__all__ = [
    "DEFAULT_SIGMAS", "DEFAULT_COUNTS", "CSV_FILE", "PLOT_FILE", "METRIC_PREFIX",
    "Perturbation", "RobustnessRow", "perturbations", "perturb_dataset", "robustness_table", "metric_columns",
    "write_csv", "plot_robustness", "robust_metrics", "parse_levels", "check_seed", "first_line",
]

DEFAULT_SIGMAS = (0.01, 0.02, 0.03, 0.04, 0.05)  # SCL Fig. 3 / Fig. 8, spec §4.6
DEFAULT_COUNTS = (1024, 896, 768, 640, 512)  # SCL Fig. 4, spec §4.6
CSV_FILE = "robustness.csv"
PLOT_FILE = "robustness.png"
METRIC_PREFIX = "robust"
KINDS = ("clean", "jitter", "points")
_STREAM_CODES = {"fit": 1, "eval": 2}
_KIND_CODES = {"jitter": 1, "points": 2}


@dataclass(frozen=True)
class Perturbation:
    """One row of the robustness table.

    Attributes:
        kind: ``"clean"`` (no perturbation), ``"jitter"`` (Gaussian noise) or ``"points"`` (random subsampling).
        level: ``sigma`` (float, unit-sphere units) for ``jitter``, the number of points kept (int) for
            ``points``, None for ``clean``.
    """

    kind: str
    level: float | int | None = None

    @property
    def name(self) -> str:
        """``clean``, ``jitter_<sigma>`` (``%g``: ``jitter_0.01``) or ``points_<n>``: the row's key in MLflow
        (``robust/<name>/<metric>``)."""
        if self.kind == "clean":
            return "clean"
        return f"jitter_{self.level:g}" if self.kind == "jitter" else f"points_{int(self.level)}"

    def step(self):
        """The transform appended to the run's evaluation transform: ``Jitter(sigma, clip=inf)`` (unclipped),
        ``Subsample(n, 'random')``, or None for ``clean``. Both map ``(N, 3)`` points to ``(N, 3)`` /
        ``(n, 3)`` float32 and follow the transform contract of :mod:`pointtune.data.transforms`."""
        if self.kind == "jitter":
            return Jitter(float(self.level), clip=math.inf)
        if self.kind == "points":
            return Subsample(int(self.level), "random")
        return None


@dataclass
class RobustnessRow:
    """The protocol's result on one perturbation.

    Attributes:
        perturbation: what was done to the clouds.
        points: points per cloud the method saw (None when the row was skipped).
        metrics: the protocol's scalar metrics without split prefix (``svm_acc``, ``svm_mAcc``, ...; values as the
            protocol reports them, accuracies in ``[0, 1]``); per-class values (``acc/<class>``, ``iou/<cat>``)
            are left out. Empty when skipped.
        note: why the row was skipped or failed (empty otherwise).
        seconds: wall time of the row's evaluation.
    """

    perturbation: Perturbation
    points: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0

    def as_dict(self, columns: Sequence[str]) -> dict[str, Any]:
        """The CSV row: ``perturbation``, ``level`` (empty for clean), ``points``, every metric of ``columns``
        (empty when absent), ``note``."""
        p = self.perturbation
        row: dict[str, Any] = {"perturbation": p.kind, "level": "" if p.level is None else f"{p.level:g}",
                               "points": "" if self.points is None else self.points}
        row.update({c: ("" if c not in self.metrics else repr(float(self.metrics[c]))) for c in columns})
        row["note"] = self.note
        return row


def parse_levels(text: str, kind: str) -> list[float] | list[int]:
    """Levels from a comma-separated command-line list (``"0.01,0.02"``; empty: none).

    Args:
        text: the list.
        kind: ``"jitter"`` (floats, ``--jitter``) or ``"points"`` (integers, ``--points``).

    Raises:
        ConfigError: a value that is not a number of the kind's type; one line naming the flag.
    """
    flag = "--jitter" if kind == "jitter" else "--points"
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            out.append(float(part) if kind == "jitter" else int(part))
        except ValueError:
            what = "a number" if kind == "jitter" else "an integer"
            raise ConfigError(f"{flag}: {part!r} is not {what} (give a comma-separated list, e.g. "
                              f"{'0.01,0.02' if kind == 'jitter' else '1024,512'})") from None
    return out


def perturbations(sigmas: Sequence[float], counts: Sequence[int]) -> list[Perturbation]:
    """The rows of a table: ``clean``, then ``jitter`` per sigma, then ``points`` per count, in the given order
    (repeated levels once).

    Args:
        sigmas: standard deviations of the Gaussian jitter, >= 0, in unit-sphere units.
        counts: points kept per cloud, integers >= 1.

    Raises:
        ConfigError: a negative or non-finite sigma, a count below 1 or not an integer; one line naming
            ``--jitter`` / ``--points``.
    """
    rows = [Perturbation("clean")]
    for sigma in sigmas:
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ConfigError(f"--jitter: sigma must be a finite number >= 0 (unit-sphere units), got {sigma!r}")
        p = Perturbation("jitter", float(sigma))
        if p not in rows:
            rows.append(p)
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ConfigError(f"--points: the number of points must be an integer >= 1, got {count!r}")
        p = Perturbation("points", int(count))
        if p not in rows:
            rows.append(p)
    return rows


def _stream_seed(seed: int, stream: str, kind: str) -> int:
    """A non-negative 32-bit seed for the ``stream`` split (``fit``/``eval``) and perturbation ``kind``."""
    return int(np.random.SeedSequence([int(seed), _STREAM_CODES[stream], _KIND_CODES[kind]]).generate_state(1)[0])


def perturb_dataset(dataset: PointCloudDataset, perturbation: Perturbation, seed: int = 0,
                    stream: str = "eval") -> PointCloudDataset:
    """``dataset`` with ``perturbation`` appended to its (evaluation) transform.

    The same clouds, labels and item layout (``points`` ``(P, 3)`` float32 with ``P`` the perturbation's number of
    points or the dataset's, ``label``, ``index``, ``normals`` and ``seg`` following the kept points); item ``i``
    is drawn from the fixed stream ``default_rng([s, i])`` with ``s`` derived from ``seed``, ``stream`` and the
    perturbation's kind (:class:`~pointtune.data.PointCloudDataset` with ``train=False``), so it is the same on
    every call.

    Args:
        dataset: an evaluation split (``train=False``) of :func:`pointtune.data.build_datasets`.
        perturbation: the row; ``clean`` returns ``dataset`` itself.
        seed: >= 0.
        stream: ``fit`` (the clouds a classifier is fitted on) or ``eval`` (the scored ones): different streams.

    Raises:
        TypeError: ``dataset`` is not a :class:`~pointtune.data.PointCloudDataset`.
        ConfigError: ``seed < 0``.
    """
    if perturbation.kind == "clean":
        return dataset
    if not isinstance(dataset, PointCloudDataset):
        raise TypeError(f"robustness: can only perturb a PointCloudDataset, got {type(dataset).__name__}")
    check_seed(seed)
    base = [] if dataset.transform is None else [dataset.transform]
    return PointCloudDataset(dataset.pcs, Compose([*base, perturbation.step()]), train=False,
                             seed=_stream_seed(seed, stream, perturbation.kind))


def _scored_split(splits: EvalSplits, split: str, log: Callable[[str], None]):
    """The dataset ``split`` (``test`` or ``val``) of ``splits``; ``test`` falls back to ``val`` (with a line) when
    the dataset has no test clouds."""
    if split not in ("test", "val"):
        raise ConfigError(f"--split: must be test or val, got {split!r}")
    if split == "test" and (splits.test is None or len(splits.test) == 0):
        log("[pointtune] robustness: the judged dataset has no test split; scoring the validation split")
        split = "val"
    dataset = splits.test if split == "test" else splits.val
    if dataset is None or len(dataset) == 0:
        raise ConfigError(f"--split: the judged dataset's {split} split is empty")
    return dataset, split


def check_seed(seed: Any) -> None:
    """Raises ConfigError unless ``seed`` is an integer >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"--seed: must be an integer >= 0, got {seed!r}")


def first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def robustness_table(
    loaded: LoadedCheckpoint, sigmas: Sequence[float] = DEFAULT_SIGMAS, counts: Sequence[int] = DEFAULT_COUNTS,
    seed: int = 0, *, split: str = "test", splits: EvalSplits | None = None, device: torch.device | str | None = None,
    batch_size: int | None = None, log: Callable[[str], None] | None = print,
) -> list[RobustnessRow]:
    """Judge a trained method by its run's protocol on clean clouds and under each perturbation (SCL Figs. 3, 4,
    8; spec §4.6, A15).

    Each row calls :func:`pointtune.protocols.evaluate` with the run's ``protocol`` section on
    ``{"fit": <fit split>, "eval": <scored split>}``, both perturbed alike (:func:`perturb_dataset`, streams
    ``fit`` and ``eval``). The clean row is exactly the protocol's evaluation of the checkpoint on those splits.

    Args:
        loaded: a checkpoint rebuilt by :func:`pointtune.train.load.load_method` (its method, config and
            classes).
        sigmas: jitter standard deviations, >= 0, in units of the unit-sphere-normalised cloud.
        counts: points per cloud for the density rows, >= 1; a count above the clouds' points (the run's
            ``data.num_points``) is skipped with a note.
        seed: >= 0, seeds every perturbation stream (the protocol's own seeds stay ``protocol.seed``).
        split: the scored split, ``test`` (default, as in the paper's figures; ``val`` when the data has no test
            split) or ``val``.
        splits: the judged splits (default :func:`pointtune.protocols.build_eval_splits` of the run's config);
            its ``fit``, ``val`` and ``test`` must be :class:`~pointtune.data.PointCloudDataset` evaluation splits.
        device: where the method runs (default: where its parameters are).
        batch_size: of the evaluation loaders (default the run's ``train.eval_batch_size``).
        log: receives one progress line per row (None: silent).

    Returns:
        One :class:`RobustnessRow` per :func:`perturbations` entry, clean first. A row whose evaluation raised
        ``ValueError`` / ``RuntimeError`` (e.g. a backbone that needs more points than the row keeps) has no
        metrics and the error as its note.

    Raises:
        ConfigError: bad levels or seed (:func:`perturbations`), a bad ``split``, or a run whose protocol cannot
            judge its method (:func:`pointtune.protocols.resolve_protocol`); one line.
        DatasetError: the run's data (or ``protocol.data``) can no longer be read.
        Exception: whatever the clean evaluation raises (the clean row is never swallowed).
    """
    from pointtune.protocols import build_eval_splits, evaluate, resolve_protocol

    log = log or (lambda line: None)
    rows = perturbations(sigmas, counts)
    check_seed(seed)
    exp, method = loaded.experiment, loaded.method
    cfg = exp.protocol
    protocol = resolve_protocol(method.task, cfg.name, own_data=cfg.data is not None)
    splits = splits if splits is not None else build_eval_splits(exp)
    scored, split = _scored_split(splits, split, log)
    clean = {"fit": splits.fit, "eval": scored}
    read = [s for s in protocol.splits if s in clean]
    available = min(int(clean[s][0]["points"].shape[0]) for s in read)
    if device is None:
        device = next((p.device for p in method.parameters()), torch.device("cpu"))
    device = torch.device(device)
    batch_size = batch_size or exp.train.eval_batch_size
    names = set(protocol.metrics(cfg))

    out = []
    for p in rows:
        if p.kind == "points" and p.level > available:
            note = f"skipped: the judged clouds have {available} points, fewer than {p.level}"
            log(f"[pointtune] robustness {p.name}: {note}")
            out.append(RobustnessRow(p, None, note=note))
            continue
        datasets = {s: perturb_dataset(d, p, seed, s) for s, d in clean.items() if s in read}
        began = time.time()
        try:
            scores, _ = evaluate(method, datasets, device, splits.class_names, cfg, batch_size=batch_size)
        except (ValueError, RuntimeError) as err:
            if p.kind == "clean":
                raise
            note = f"failed: {first_line(err)}"
            log(f"[pointtune] robustness {p.name}: {note}")
            out.append(RobustnessRow(p, None, note=note, seconds=time.time() - began))
            continue
        points = int(datasets["eval"][0]["points"].shape[0])
        kept = {k: float(v) for k, v in scores.items() if k in names}
        row = RobustnessRow(p, points, kept, seconds=time.time() - began)
        headline = next(iter(protocol.metrics(cfg)))
        value = kept.get(headline, float("nan"))
        log(f"[pointtune] robustness {p.name:<12} {protocol.name} {split}: {headline}={value:.4f} "
            f"({points} points, {row.seconds:.1f} s)")
        out.append(row)
    return out


def metric_columns(rows: Sequence[RobustnessRow]) -> list[str]:
    """The metric names any row holds, in the order the first rows report them."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row.metrics if k not in columns]
    return columns


def write_csv(rows: Sequence[RobustnessRow], path: str | Path) -> Path:
    """Write the table (:meth:`RobustnessRow.as_dict`: ``perturbation, level, points, <metrics...>, note``; one
    line per row, clean first) to ``path``; returns it."""
    path = Path(path)
    columns = metric_columns(rows)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["perturbation", "level", "points", *columns, "note"])
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_dict(columns))
    return path


def _plotted(columns: Sequence[str]) -> list[str]:
    """The metrics plotted by default: the protocol's headline and, when it is one too, the second accuracy-like
    metric (``svm_mAcc``, ``mAcc``, ``cls_miou``)."""
    accuracy = [c for c in columns[:2] if "acc" in c.lower() or "miou" in c.lower()]
    return accuracy or list(columns[:1])


def plot_robustness(rows: Sequence[RobustnessRow], path: str | Path, metrics: Sequence[str] | None = None,
                    title: str = "") -> Path:
    """Save the two-panel PNG of SCL Figs. 3-4 (matplotlib, Agg): left, each metric against the jitter sigma;
    right, against the number of points (the x axis runs from dense to sparse); the clean value of each metric as
    a dashed horizontal reference line in both. Skipped or failed rows are left out.

    Args:
        rows: :func:`robustness_table`'s rows (a clean row for the reference lines).
        path: the PNG written.
        metrics: the metrics drawn (default: the headline metric and the second one when it is also an accuracy /
            mIoU, e.g. ``svm_acc`` and ``svm_mAcc``).
        title: the figure's title.

    Returns:
        ``path``.

    Raises:
        ValueError: no row has any of ``metrics``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    metrics = list(metrics) if metrics is not None else _plotted(metric_columns(rows))
    if not metrics or not any(m in r.metrics for r in rows for m in metrics):
        raise ValueError(f"plot_robustness: no row holds any of the metrics {metrics}")
    clean = next((r for r in rows if r.perturbation.kind == "clean" and r.metrics), None)
    fig, panels = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for panel, kind, xlabel in ((panels[0], "jitter", "Gaussian jitter sigma (unit-sphere units)"),
                                (panels[1], "points", "points per cloud (random subsample)")):
        done = [r for r in rows if r.perturbation.kind == kind and r.metrics]
        for i, metric in enumerate(metrics):
            color = colors[i % len(colors)]
            pts = sorted((r.perturbation.level, r.metrics[metric]) for r in done if metric in r.metrics)
            if pts:
                panel.plot([x for x, _ in pts], [y for _, y in pts], marker="o", color=color, label=metric)
            if clean is not None and metric in clean.metrics:
                panel.axhline(clean.metrics[metric], color=color, ls="--", lw=1,
                              label=f"{metric} clean ({clean.metrics[metric]:.3f}, {clean.points} points)")
        if kind == "points":
            panel.invert_xaxis()
        if not done:
            panel.text(0.5, 0.5, "no rows", transform=panel.transAxes, ha="center", va="center", color="gray")
        panel.set_xlabel(xlabel)
        panel.grid(alpha=0.3)
        panel.legend(fontsize=8, loc="lower left")
    panels[0].set_ylabel(" / ".join(metrics))
    panels[0].set_title("noise (SCL Fig. 3)")
    panels[1].set_title("density (SCL Fig. 4)")
    fig.suptitle(title or "robustness of frozen features", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def robust_metrics(rows: Sequence[RobustnessRow]) -> dict[str, float]:
    """The MLflow metrics of a table: ``robust/<row name>/<metric>`` (``robust/clean/svm_acc``,
    ``robust/jitter_0.01/svm_acc``, ``robust/points_512/svm_acc``) for every finite value."""
    return {f"{METRIC_PREFIX}/{r.perturbation.name}/{k}": v for r in rows for k, v in r.metrics.items()
            if math.isfinite(v)}
