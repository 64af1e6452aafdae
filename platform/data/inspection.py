"""``pointtune data inspect``: what a dataset directory holds, as pointtune reads it.

:func:`inspect_dataset` reads the directory with the dataset's registered loader (the same splits a run gets,
with no validation share held out) and reports the layout detected, the items per split, the points per item
(min / median / max), the class histogram per split (shapes per class for point clouds, points per class for
scenes, ignored points left out) and a PNG of a few items coloured by class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pointtune.data.errors import DatasetError

__all__ = ["SplitStats", "Inspection", "detect_layout", "inspect_dataset"]

#: Points drawn per item in the PNG (scenes are subsampled to this many).
PLOT_POINTS = 20000


@dataclass(frozen=True)
class SplitStats:
    """One split: ``items`` (clouds or scenes), points per item ``points_min`` / ``points_median`` /
    ``points_max``, and ``class_counts`` ``(C,)`` (shapes per class, or points per class for scenes)."""

    name: str
    items: int
    points_min: int
    points_median: float
    points_max: int
    class_counts: np.ndarray


@dataclass(frozen=True)
class Inspection:
    """The report of :func:`inspect_dataset`; :meth:`lines` renders it."""

    dataset: str
    root: Path
    layout: str
    class_names: list[str]
    splits: list[SplitStats]
    png: Path | None

    def lines(self) -> list[str]:
        """The printed report: a header, one line per split, the class histogram table, the PNG's path."""
        out = [f"{self.dataset} under {self.root}: layout {self.layout}, {len(self.class_names)} classes"]
        for s in self.splits:
            points = (f", points per item min {s.points_min} / median {s.points_median:g} / max {s.points_max}"
                      if s.items else "")
            out.append(f"  {s.name:<5} {s.items:>6} items{points}")
        width = max(len(c) for c in self.class_names)
        out.append(f"  {'class':<{width}} " + " ".join(f"{s.name:>10}" for s in self.splits))
        for c, name in enumerate(self.class_names):
            out.append(f"  {name:<{width}} " + " ".join(f"{int(s.class_counts[c]):>10}" for s in self.splits))
        if self.png is not None:
            out.append(f"  items coloured by class: {self.png}")
        return out


def detect_layout(root: Path, dataset: str) -> str:
    """A short name of the layout under ``root``: S3DIS per area (``npy``, ``txt`` or ``pointcept``:
    :func:`~pointtune.data.scenes.s3dis_layout`), ScanNet ``arrays`` or ``pointcept``
    (:func:`~pointtune.data.scenes.scannet_layout`, with ``+ official lists`` when they are there), and for
    point-cloud datasets ``hdf5`` or ``text`` by the files present.

    Raises:
        DatasetError: ``root`` is not a directory.
    """
    from pointtune.data.scenes import SCANNET_SPLIT_FILES, s3dis_areas, s3dis_layout, scannet_layout

    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory")
    if dataset == "s3dis":
        return ", ".join(f"Area_{a} {s3dis_layout(root, a)}" for a in s3dis_areas(root)) or "none"
    if dataset == "scannet":
        lists = all((root / name).is_file() for name in SCANNET_SPLIT_FILES.values())
        return scannet_layout(root) + (" + official lists" if lists else "")
    return "hdf5" if next(root.rglob("*.h5"), None) is not None else "text"


def _cloud_stats(name: str, split, num_classes: int) -> SplitStats:
    n = split.points.shape[1] if len(split) else 0
    return SplitStats(name, len(split), n, float(n), n, np.bincount(split.labels, minlength=num_classes)[:num_classes])


def _scene_stats(name: str, split) -> SplitStats:
    sizes = split.num_points() if len(split) else np.zeros(1, dtype=np.int64)
    return SplitStats(name, len(split), int(sizes.min()), float(np.median(sizes)), int(sizes.max()),
                      split.label_counts())


def _plot(items: list[tuple[str, np.ndarray, np.ndarray]], class_names: list[str], path: Path, seed: int) -> None:
    """One 3D scatter per ``(title, (N, 3) points, (N,) labels)``, coloured by class (ignored: grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab20", max(len(class_names), 1))
    rng = np.random.default_rng(seed)
    fig = plt.figure(figsize=(4 * len(items), 4.4))
    for k, (title, points, labels) in enumerate(items, start=1):
        if len(points) > PLOT_POINTS:
            keep = rng.choice(len(points), PLOT_POINTS, replace=False)
            points, labels = points[keep], labels[keep]
        colours = np.where(labels[:, None] >= 0, cmap(np.maximum(labels, 0))[:, :3], 0.6)
        ax = fig.add_subplot(1, len(items), k, projection="3d")
        ax.scatter(points[:, 0], points[:, 1], points[:, 2], c=colours, s=2.0 if len(points) <= 4096 else 0.5,
                   linewidths=0)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def inspect_dataset(root: str | Path, dataset: str, png: str | Path | None = None, items: int = 4,
                    seed: int = 0) -> Inspection:
    """Inspect the ``dataset`` under ``root`` (module docstring).

    Args:
        root: the dataset directory.
        dataset: a registered dataset name (:func:`pointtune.data.dataset_names`).
        png: where to write the picture (``None``: none); ``items`` items of the first split are drawn.
        seed: which items are drawn and which points of a large scene.

    Returns:
        An :class:`Inspection`.

    Raises:
        DatasetError: an unknown dataset, or any error of its reader (naming the file at fault).
    """
    from pointtune.data import dataset_names, get_dataset_loader, is_scene_dataset
    from pointtune.data.config import DataConfig

    if dataset not in dataset_names():
        raise DatasetError(f"data inspect: unknown dataset {dataset!r} (expected one of {', '.join(dataset_names())})")
    root = Path(root).expanduser()
    layout = detect_layout(root, dataset)
    scenes = is_scene_dataset(dataset)
    cfg = DataConfig(name=dataset, root=str(root), val_fraction=0.0, **({"lazy": True} if scenes else {}))
    splits = get_dataset_loader(dataset)(cfg)
    names = ("train", "val", "test") if scenes else ("train", "test")
    pairs = [(n, s) for n, s in zip(names, splits) if n != "val" or len(s)]
    class_names = list(pairs[0][1].class_names)
    stats = [_scene_stats(n, s) if scenes else _cloud_stats(n, s, len(class_names)) for n, s in pairs]
    picture = None
    if png is not None:
        first = next((s for _, s in pairs if len(s)), pairs[0][1])
        chosen = sorted(np.random.default_rng(seed).choice(len(first), min(items, len(first)), replace=False))
        if scenes:
            drawn = [(first.names[i], scene["coord"], scene["segment"]) for i in chosen for scene in [first[i]]]
        else:
            drawn = [(class_names[first.labels[i]], first.points[i], np.full(first.points.shape[1], first.labels[i]))
                     for i in chosen]
        picture = Path(png).expanduser()
        picture.parent.mkdir(parents=True, exist_ok=True)
        _plot(drawn, class_names, picture, seed)
    return Inspection(dataset, root, layout, class_names, stats, picture)
