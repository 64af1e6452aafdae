"""The ``scene_seg`` protocol: semantic segmentation of indoor scenes (S3DIS, ScanNet), scored as PointNeXt and
Pointcept score it, and the pictures of it a researcher looks at.

Metrics (:func:`pointtune.metrics.semantic_seg_metrics`): one ``(K, K)`` confusion matrix over the labelled
points of the scored split (``seg != -1``, ``mask`` True), summed over the data-parallel workers (each scores
its shard of the scenes, :func:`~pointtune.protocols.base.shard_indices`; integer counts, so the merged figures
are exactly a single process's), then ``mIoU`` (the mean IoU over the classes present in the split's ground
truth: the default objective ``val/mIoU``), ``OA``, ``mAcc`` and ``iou/<class>`` for every present class.

How a split is scored (the modes of :func:`scoring_mode`):

* ``whole`` (the test split, ``protocol.whole: true``): PointNeXt's whole-scene testing. Every grid pass
  of every scene (:meth:`~pointtune.data.scene_dataset.SceneDataset.test_items`), split into fixed-size crops
  that cover it, goes through ``method.predict``; the softmax probabilities are summed per original point
  (:func:`vote_scene`), the argmax is the point's prediction, and the metric is on the scene's original
  points, every one of which must have been predicted at least once (checked: a scene with an unpredicted
  point is an error).
* ``pass`` (the validation default, ``protocol.val: pass``): the same on the first grid pass only, scored
  on the points of that pass (one per voxel): PointNeXt's validation on the voxelised scene. Every region of
  every scene counts, at ``1 / passes`` of the test cost (a ScanNet scene at 2 cm has tens of points in its
  most crowded voxels, so tens of passes).
* ``crops`` (``protocol.val: crops``): the split's own fixed items (for a SceneDataset one middle sphere
  crop per scene and loop), scored on their real points: the cheapest, and a partial view of each scene.

Validation is scored at every evaluated epoch of every trial and only selects models, so it defaults to
``pass``; the test split, scored once on the selected weights, is what a run reports, so it defaults to
``whole``. :func:`pointtune.protocols.evaluate` names the split (``split="val"`` / ``"test"``, through
:meth:`SceneSegmentation.run_split`); an unnamed split is scored as the test split.

Pictures: the first ``protocol.render`` scenes of the scored split keep a seeded subset of
``protocol.render_points`` of their scored points (original coordinates, truth, prediction) as the
arrays ``scene_coord``, ``scene_gt``, ``scene_pred``, ``scene_index``, ``scene_names`` (saved into each
checkpoint as ``<name>.npy`` by the training loop, like ``spectrum``). They are rendered only for the best
checkpoint, when its MLflow artifacts are logged (:func:`pointtune.train.artifacts.log_checkpoint_artifacts`
calls :func:`render_checkpoint_scenes`): the protocol does not know the checkpoint directory, rendering every
evaluated epoch would cost matplotlib time that only the best epoch's pictures repay, and the arrays keep any
checkpoint re-renderable. :func:`render_scene` draws ground truth, prediction and errors side by side, top-down
(and optionally oblique), in the dataset's class colours (:func:`class_colors`: the standard S3DIS and
ScanNet-20 palettes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from pointtune import distributed as dist
from pointtune.data.scene_dataset import collate_scenes
from pointtune.data.scenes import IGNORE_INDEX
from pointtune.errors import ConfigError
from pointtune.method import Method, Task
from pointtune.metrics import confusion_matrix, semantic_seg_metrics
from pointtune.protocols.base import (
    Protocol,
    ProtocolConfig,
    Result,
    as_dataset,
    register_protocol,
    seed_field,
    shard_indices,
    shard_loader,
    to_device,
)

__all__ = [
    "SceneSegmentation", "SceneSegConfig", "SCORING_MODES", "scoring_mode", "vote_scene", "render_points",
    "S3DIS_COLORS", "SCANNET20_COLORS", "IGNORE_COLOR", "class_colors", "render_scene", "render_checkpoint_scenes",
    "RENDER_ARRAYS",
]

SCORING_MODES = ("whole", "pass", "crops")

#: The S3DIS class colours (RGB 0..255) of PointNet's ``sem_seg/indoor3d_util.py`` (``g_class2color``), the
#: palette the S3DIS literature and PointNeXt's visualisations use.
S3DIS_COLORS = {
    "ceiling": (0, 255, 0), "floor": (0, 0, 255), "wall": (0, 255, 255), "beam": (255, 255, 0),
    "column": (255, 0, 255), "window": (100, 100, 255), "door": (200, 200, 100), "table": (170, 120, 200),
    "chair": (255, 0, 0), "sofa": (200, 100, 100), "bookcase": (10, 200, 100), "board": (200, 200, 200),
    "clutter": (50, 50, 50),
}
#: The ScanNet-20 class colours (RGB 0..255): the NYU40 palette of the ScanNet benchmark scripts
#: (``util.create_color_palette``) at the 20 benchmark ids, as Pointcept's ``SCANNET_COLOR_MAP_20``.
SCANNET20_COLORS = {
    "wall": (174, 199, 232), "floor": (152, 223, 138), "cabinet": (31, 119, 180), "bed": (255, 187, 120),
    "chair": (188, 189, 34), "sofa": (140, 86, 75), "table": (255, 152, 150), "door": (214, 39, 40),
    "window": (197, 176, 213), "bookshelf": (148, 103, 189), "picture": (196, 156, 148),
    "counter": (23, 190, 207), "desk": (247, 182, 210), "curtain": (219, 219, 141),
    "refrigerator": (255, 127, 14), "shower curtain": (158, 218, 229), "toilet": (44, 160, 44),
    "sink": (112, 128, 144), "bathtub": (227, 119, 194), "otherfurniture": (82, 84, 163),
}
#: Colour (RGB in [0, 1]) of ground-truth points with the ignore label.
IGNORE_COLOR = (0.72, 0.72, 0.72)
_CORRECT_COLOR, _WRONG_COLOR, _UNSCORED_COLOR = (0.82, 0.82, 0.82), (0.85, 0.1, 0.1), (0.94, 0.94, 0.94)

#: The checkpoint arrays behind the renders (see the module docstring).
RENDER_ARRAYS = ("scene_coord", "scene_gt", "scene_pred", "scene_index", "scene_names")
# Salt of the seeded subset of rendered points (protocol.seed, scene position, salt).
_RENDER_STREAM = 4


class SceneSegConfig(ProtocolConfig):
    """Settings of the ``scene_seg`` protocol (``protocol.*`` with ``protocol.name: scene_seg``, the default of
    segmentation methods), besides ``name`` and ``data`` (:class:`~pointtune.protocols.base.ProtocolConfig`).

    Fields:
        whole: score the test split on every original point of every scene (the crops of all grid passes,
            softmax votes per point: PointNeXt's whole-scene testing); ``false``: score it as the validation
            split (``val``).
        val: how the validation split is scored at evaluated epochs: ``pass`` (one grid pass per scene, covered
            by crops, scored on its one point per voxel: PointNeXt's validation), ``crops`` (the split's own
            fixed crops, cheapest) or ``whole`` (as the test split).
        render, render_points, render_oblique: the first ``render`` scenes of the scored split keep a seeded
            subset of ``render_points`` scored points (coordinates, truth, prediction) as checkpoint arrays,
            rendered for the best checkpoint's MLflow artifacts (top-down, and oblique when set).
        seed: seed of those subsets.
    """

    whole: bool = Field(
        True, description="score the test split on every original point (votes over the crops of all grid "
        "passes); false: as val")
    val: Literal["pass", "crops", "whole"] = Field(
        "pass", description="validation scoring: pass (one grid pass per scene, covered by crops), crops (the "
        "split's fixed crops) or whole (every original point)")
    render: int = Field(
        4, ge=0, description="scenes of the scored split kept for the best checkpoint's renders (0: none)")
    render_points: int = Field(20000, ge=1, description="scored points per rendered scene (a seeded subset)")
    render_oblique: bool = Field(True, description="renders add an oblique view below the top-down one")
    seed: int = seed_field("the points kept of each rendered scene")


def scoring_mode(cfg: SceneSegConfig, split: str | None) -> str:
    """How ``split`` is scored (module docstring): ``cfg.val`` for ``"val"``; for ``"test"`` and an unnamed
    split ``"whole"`` when ``cfg.whole``, else ``cfg.val``.

    Returns:
        ``"whole"``, ``"pass"`` or ``"crops"``.

    Raises:
        ValueError: ``split`` is not ``"val"``, ``"test"`` or None.
    """
    if split not in ("val", "test", None):
        raise ValueError(f"scene_seg: split must be 'val', 'test' or None, got {split!r}")
    if split == "val":
        return cfg.val
    return "whole" if cfg.whole else cfg.val


def _logits(method: Method, batch: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
    """``method.predict(batch)`` checked to be ``(B, N, K)`` for the batch's ``(B, N)`` points; ValueError naming
    the shapes otherwise."""
    logits = method.predict(batch)
    b, n = batch["points"].shape[:2]
    if logits.dim() != 3 or tuple(logits.shape) != (b, n, num_classes):
        raise ValueError(f"scene_seg: predict returned shape {tuple(logits.shape)} for a batch of points "
                         f"{tuple(batch['points'].shape)}; expected (B, N, K) = {(b, n, num_classes)}")
    return logits


def _same_size_batches(items: Sequence[dict[str, torch.Tensor]], batch_size: int) -> Iterator[list]:
    """Consecutive runs of at most ``batch_size`` items with the same number of points (items of a dataset
    without ``max_points`` differ in size and go one by one when they do)."""
    run: list = []
    for item in items:
        if run and (len(run) == batch_size or item["points"].shape[0] != run[0]["points"].shape[0]):
            yield run
            run = []
        run.append(item)
    if run:
        yield run


@torch.no_grad()
def vote_scene(method: Method, items: Sequence[dict[str, torch.Tensor]], num_points: int, num_classes: int,
               device: torch.device, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vote the predictions on a scene's crops back to its original points (PointNeXt's whole-scene testing).

    The items go through ``method.predict`` in batches (the caller sets eval mode); for every real point of
    every item (``mask`` True) the softmax of its logits is added to the row ``point_index`` of the scene:
    ``votes[item["point_index"][mask]] += softmax(logits)[mask]`` (float32 on the CPU, so the sums are the same
    on every device and world size). The ground truth of a point is the ``seg`` of an item holding it.

    Args:
        method: a segmentation method: ``predict`` returns ``(B, N, K)`` logits.
        items: :class:`~pointtune.data.scene_dataset.SceneDataset` items of one scene (``points``, ``seg``,
            ``mask``, ``point_index``), e.g. its ``test_items``.
        num_points: ``N0``, the scene's original points (``point_index`` values lie in ``[0, N0)``).
        num_classes: ``K``.
        device: where the method runs.
        batch_size: items per ``predict`` call (consecutive items of the same size).

    Returns:
        ``(probs, votes, gt)``: ``(N0, K)`` float32 summed probabilities, ``(N0,)`` int64 number of crops that
        predicted each point (0: never predicted), ``(N0,)`` int64 ground truth (``IGNORE_INDEX`` where unlabelled
        or never in an item).

    Raises:
        ValueError: no items, a ``point_index`` outside ``[0, N0)``, or ``predict`` output that is not
            ``(B, N, K)``.
    """
    if not items:
        raise ValueError("scene_seg: a scene without test items cannot be voted")
    probs = torch.zeros((num_points, num_classes), dtype=torch.float32)
    votes = torch.zeros(num_points, dtype=torch.int64)
    gt = torch.full((num_points,), IGNORE_INDEX, dtype=torch.int64)
    for chunk in _same_size_batches(items, batch_size):
        batch = collate_scenes(chunk)
        mask = batch["mask"] if "mask" in batch else torch.ones(batch["seg"].shape, dtype=torch.bool)
        index = batch["point_index"][mask]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_points):
            raise ValueError(f"scene_seg: point_index outside [0, {num_points}) (min {int(index.min())}, max "
                             f"{int(index.max())}): the items are not of a scene of {num_points} points")
        logits = _logits(method, to_device(batch, device), num_classes)
        p = logits.float().softmax(-1)[mask.to(logits.device)].cpu()
        probs.index_add_(0, index, p)
        votes += torch.bincount(index, minlength=num_points)
        gt[index] = batch["seg"][mask]
    return probs.numpy(), votes.numpy(), gt.numpy()


def render_points(count: int, keep: int, seed: int, position: int) -> np.ndarray:
    """``(min(count, keep),)`` sorted rows of a scene's ``count`` scored points kept for its render: all of them
    when ``count <= keep``, else ``keep`` drawn without replacement by ``default_rng([seed, position, 4])``
    (``position``: the scene's place in the split), the same on every worker and world size."""
    if count <= keep:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng([seed, int(position), _RENDER_STREAM])
    return np.sort(rng.choice(count, size=keep, replace=False)).astype(np.int64)


def _render_rows(coord: np.ndarray, gt: np.ndarray, pred: np.ndarray, position: int,
                 cfg: SceneSegConfig) -> np.ndarray:
    """``(R, 6)`` float64 rows ``x y z gt pred position`` of the kept points (:func:`render_points`); float64
    holds float32 coordinates and labels exactly, so the rows survive the gather unchanged."""
    keep = render_points(len(coord), cfg.render_points, cfg.seed, position)
    out = np.empty((len(keep), 6), dtype=np.float64)
    out[:, :3], out[:, 3], out[:, 4], out[:, 5] = coord[keep], gt[keep], pred[keep], position
    return out


def _gather_render_rows(rows: list[np.ndarray], names: list[str], device: torch.device) -> dict[str, np.ndarray]:
    """Every worker's render rows on every worker (one ``all_gather_rows``: a collective), ordered by scene
    position (a scene's rows come from the one worker that scored it, in order), as the render arrays."""
    local = torch.from_numpy(np.concatenate(rows) if rows else np.zeros((0, 6), dtype=np.float64))
    if dist.world_size() > 1:
        local, _ = dist.all_gather_rows(local.to(device).contiguous())
    table = local.cpu().numpy()
    table = table[np.argsort(table[:, 5], kind="stable")]
    positions = table[:, 5].astype(np.int64)
    shown = np.unique(positions)
    if shown.size == 0:
        return {}
    return {
        "scene_coord": table[:, :3].astype(np.float32),
        "scene_gt": table[:, 3].astype(np.int64),
        "scene_pred": table[:, 4].astype(np.int64),
        "scene_index": np.searchsorted(shown, positions).astype(np.int64),
        "scene_names": np.asarray([names[p] for p in shown], dtype=str),
    }


def _merge(local: np.ndarray, device: torch.device) -> np.ndarray:
    """The confusion matrices of every worker summed (exact: int64)."""
    if dist.world_size() == 1:
        return local
    return dist.all_reduce_sum(torch.from_numpy(local).to(device)).cpu().numpy()


@register_protocol("scene_seg", default_for=[Task.SEGMENTATION])
class SceneSegmentation(Protocol):
    """Semantic segmentation of scenes by a segmentation method's own ``predict`` (``(B, N, K)`` logits): mIoU,
    OA, mAcc and per-class IoU of a confusion matrix summed over the workers; whole-scene testing with votes
    per original point; the points of the best checkpoint's renders. See the module docstring.

    The scored split is a :class:`~pointtune.data.scene_dataset.SceneDataset` (the ``whole`` and ``pass`` modes
    read its ``scenes`` and ``test_items``); the ``crops`` mode scores any dataset of fixed-size items with
    ``points``, ``seg`` (and ``mask``). Settings: :class:`SceneSegConfig`.
    """

    Config = SceneSegConfig
    tasks = frozenset({Task.SEGMENTATION})
    splits = ("eval",)
    per_class = False  # iou/<class> instead of acc/<class>
    own_data = False   # it scores the method's own classifier, on the classes it was trained on
    fast = {"whole": False, "val": "crops", "render": 1}  # --fast-dev-run: the split's own crops, one render

    def metrics(self, cfg: SceneSegConfig) -> tuple[str, ...]:
        """``("mIoU", "OA", "mAcc")`` (``iou/<class>`` for every class present besides)."""
        return ("mIoU", "OA", "mAcc")

    def check_output(self, method: Method, batch: dict[str, torch.Tensor], num_classes: int) -> None:
        """The judged items must carry ``seg`` and ``predict`` must return ``(1, N, K)`` for a 1-scene batch.

        Raises:
            ConfigError: the judged data has no per-point labels.
            ValueError: ``predict`` returned another shape.
        """
        if "seg" not in batch:
            raise ConfigError("protocol.name: the scene_seg protocol needs per-point labels ('seg') and the judged "
                              "data has none; judge a scene dataset (data.name: s3dis, scannet)")
        _logits(method, batch, num_classes)

    def run(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
            cfg: SceneSegConfig, batch_size: int = 64, num_workers: int = 0) -> Result:
        """Score ``splits["eval"]`` as an unnamed split (:meth:`run_split` with ``split=None``: as the test split)."""
        return self.run_split(method, splits, device, class_names, cfg, batch_size, num_workers, None)

    def run_split(self, method: Method, splits: Mapping[str, Dataset], device: torch.device, class_names: list[str],
                  cfg: SceneSegConfig, batch_size: int = 64, num_workers: int = 0, split: str | None = None) -> Result:
        """Score ``splits["eval"]`` in the mode of :func:`scoring_mode` (``cfg``, ``split``).

        Returns:
            ``(metrics, confusion (K, K) int64, arrays)``: ``mIoU``, ``OA``, ``mAcc``, ``iou/<class>``; the
            render arrays :data:`RENDER_ARRAYS` (``{}`` when ``cfg.render`` is 0): ``scene_coord``
            ``(M, 3)`` float32 (metres, the scene's frame; in ``crops`` mode the items' frame), ``scene_gt``
            ``(M,)`` int64 (-1: ignore), ``scene_pred`` ``(M,)`` int64, ``scene_index`` ``(M,)`` int64 into
            ``scene_names`` ``(R,)`` str.

        Raises:
            ValueError: ``whole`` / ``pass`` mode on a split that is not a SceneDataset, ``K`` different from its
                classes, items without ``seg``, labels outside ``[-1, K)``, ``predict`` output that is not
                ``(B, N, K)``.
            RuntimeError: ``whole`` mode and a scene point that no crop predicted.
        """
        mode = scoring_mode(cfg, split)
        dataset = as_dataset(splits["eval"])
        method.eval()
        with torch.no_grad():
            if mode == "crops":
                local, rows, names = self._score_crops(method, dataset, device, len(class_names), cfg, batch_size,
                                                       num_workers)
            else:
                local, rows, names = self._score_scenes(method, dataset, device, len(class_names), cfg, batch_size,
                                                        whole=mode == "whole")
        cm = _merge(local, device)
        arrays = _gather_render_rows(rows, names, device) if cfg.render > 0 else {}
        return semantic_seg_metrics(cm, class_names), cm, arrays

    def _score_scenes(self, method: Method, dataset, device: torch.device, k: int, cfg: SceneSegConfig,
                      batch_size: int, whole: bool) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
        """This worker's confusion matrix and render rows over its shard of the scenes: every grid pass
        (``whole``) or the first, voted per original point (:func:`vote_scene`)."""
        scenes = getattr(dataset, "scenes", None)
        if scenes is None or not hasattr(dataset, "test_items"):
            raise ValueError(f"protocol.whole / protocol.val: scoring whole scenes or grid passes needs "
                             f"a SceneDataset (scenes and test_items), got a {type(dataset).__name__}; score its "
                             "fixed crops instead (protocol.val=crops, protocol.whole=false)")
        if scenes.num_classes != k:
            raise ValueError(f"scene_seg: the scenes have {scenes.num_classes} classes, the run {k}")
        local = np.zeros((k, k), dtype=np.int64)
        rows: list[np.ndarray] = []
        for s in shard_indices(len(scenes), dist.rank(), dist.world_size()):
            coord = scenes[s]["coord"]
            items = dataset.test_items(s, None if whole else 1)
            probs, votes, gt = vote_scene(method, items, len(coord), k, device, batch_size)
            scored = votes > 0
            if whole and not scored.all():
                missing = int((~scored).sum())
                raise RuntimeError(f"scene_seg: scene {scenes.names[s]}: {missing} of {len(coord)} points got no "
                                   "prediction from the crops of SceneDataset.test_items; whole-scene testing "
                                   "needs every original point predicted at least once")
            pred = probs.argmax(1)
            labelled = scored & (gt != IGNORE_INDEX)
            local += confusion_matrix(gt[labelled], pred[labelled], k)
            if s < cfg.render:
                idx = np.flatnonzero(scored)
                rows.append(_render_rows(coord[idx], gt[idx], pred[idx], s, cfg))
        return local, rows, list(scenes.names)

    def _score_crops(self, method: Method, dataset, device: torch.device, k: int, cfg: SceneSegConfig,
                     batch_size: int, num_workers: int) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
        """This worker's confusion matrix and render rows over its shard of the split's own items, scored on
        their real labelled points."""
        n = len(dataset)
        mine = np.asarray(shard_indices(n, dist.rank(), dist.world_size()), dtype=np.int64)
        scenes = getattr(dataset, "scenes", None)
        names = [scenes.names[i % len(scenes)] if scenes is not None and len(scenes) else f"item {i}"
                 for i in range(min(n, cfg.render))]
        local = np.zeros((k, k), dtype=np.int64)
        rows: list[np.ndarray] = []
        done = 0
        for batch in shard_loader(dataset, batch_size, num_workers):
            if "seg" not in batch:
                raise ValueError("scene_seg: the scored items have no per-point labels 'seg'")
            pred = _logits(method, to_device(batch, device), k).argmax(-1).cpu().numpy()
            seg = batch["seg"].numpy()
            mask = batch["mask"].numpy() if "mask" in batch else np.ones(seg.shape, dtype=bool)
            labelled = mask & (seg != IGNORE_INDEX)
            local += confusion_matrix(seg[labelled], pred[labelled], k)
            for j in range(len(pred)):
                position = int(mine[done + j])
                if position < cfg.render:
                    real = mask[j]
                    rows.append(_render_rows(batch["points"][j].numpy()[real], seg[j][real], pred[j][real],
                                             position, cfg))
            done += len(pred)
        return local, rows, names


# ---- pictures ----------------------------------------------------------------------------------------------

def class_colors(class_names: Sequence[str]) -> np.ndarray:
    """The dataset's colour of every class, ``(K, 3)`` float64 RGB in ``[0, 1]``.

    S3DIS and ScanNet share names such as ``wall`` with other colours, so the whole class list decides: every
    name of :data:`S3DIS_COLORS` (the 13 S3DIS classes or a subset) takes the S3DIS palette; otherwise each
    name takes its :data:`SCANNET20_COLORS` colour, else its S3DIS one, else the ``tab20`` colour of its
    position (a class of neither dataset).
    """
    import matplotlib

    names = [str(n) for n in class_names]
    s3dis = all(n in S3DIS_COLORS for n in names)
    palettes = (S3DIS_COLORS, SCANNET20_COLORS) if s3dis else (SCANNET20_COLORS, S3DIS_COLORS)
    tab20 = matplotlib.colormaps["tab20"]
    out = np.empty((len(names), 3), dtype=np.float64)
    for k, name in enumerate(names):
        rgb = next((p[name] for p in palettes if name in p), None)
        out[k] = np.asarray(rgb, dtype=np.float64) / 255.0 if rgb is not None else tab20(k % 20)[:3]
    return out


def _oblique(coord: np.ndarray, azimuth: float = -55.0, elevation: float = 35.0) -> tuple[np.ndarray, np.ndarray]:
    """Screen coordinates ``(M, 2)`` of a view from azimuth / elevation (degrees) above the scene and a drawing
    order, far points first (the painter's algorithm)."""
    a, e = np.radians(azimuth), np.radians(elevation)
    x, y, z = coord[:, 0], coord[:, 1], coord[:, 2]
    u = x * np.cos(a) + y * np.sin(a)
    d = -x * np.sin(a) + y * np.cos(a)          # horizontal distance away from the camera
    v = d * np.sin(e) + z * np.cos(e)
    depth = d * np.cos(e) - z * np.sin(e)
    return np.stack([u, v], axis=1), np.argsort(-depth, kind="stable")


def render_scene(coord: np.ndarray, gt: np.ndarray, pred: np.ndarray, class_names: Sequence[str],
                 colors: np.ndarray | None, path: str | Path, *, title: str = "", oblique: bool = False,
                 hide: Sequence[str] = ("ceiling",)) -> Path:
    """Save a PNG of a scene's ground truth beside its prediction, and where they differ (matplotlib Agg).

    Row 1, top-down (x right, y up, points drawn low to high so tabletops cover the floor): ground truth in the
    class colours (ignore-labelled points grey), prediction, errors (correct light grey, wrong red, unlabelled
    pale). Row 2 with ``oblique``: the same seen from above at an angle (azimuth -55 deg, elevation 35 deg, far
    points drawn first). Points whose ground truth is a class in ``hide`` (the ceiling, which covers every
    top-down view of an S3DIS room) are left out, unless that leaves none. A legend lists the classes shown.

    Args:
        coord: ``(M, 3)`` coordinates in metres.
        gt: ``(M,)`` int ground truth in ``[0, K)`` or -1 (ignore).
        pred: ``(M,)`` int predictions in ``[0, K)``.
        class_names: ``K`` names in label order.
        colors: ``(K, 3)`` RGB in ``[0, 1]`` (or ``0..255``), e.g. :func:`class_colors`; None: ``class_colors``.
        path: the PNG to write.
        title: the figure's title.
        oblique: add the oblique row.
        hide: class names left out of the pictures.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no point, arrays of mismatched lengths, labels outside their ranges, or ``colors`` not
            ``(K, 3)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    coord = np.asarray(coord, dtype=np.float64)
    gt, pred = np.asarray(gt, dtype=np.int64).ravel(), np.asarray(pred, dtype=np.int64).ravel()
    k = len(class_names)
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0 or gt.shape != (len(coord),) \
            or pred.shape != gt.shape:
        raise ValueError(f"render_scene: coord {coord.shape}, gt {gt.shape}, pred {pred.shape}; expected (M, 3), "
                         "(M,), (M,) with M >= 1")
    if gt.min() < IGNORE_INDEX or gt.max() >= k or pred.min() < 0 or pred.max() >= k:
        raise ValueError(f"render_scene: labels outside their ranges for {k} classes (gt {gt.min()}..{gt.max()} in "
                         f"[-1, {k}), pred {pred.min()}..{pred.max()} in [0, {k}))")
    palette = class_colors(class_names) if colors is None else np.asarray(colors, dtype=np.float64)
    if palette.shape != (k, 3):
        raise ValueError(f"render_scene: colors of shape {palette.shape}, expected ({k}, 3)")
    if palette.max() > 1.0:
        palette = palette / 255.0
    hidden = [class_names.index(h) for h in hide if h in class_names]
    keep = ~np.isin(gt, hidden)
    if keep.any():
        coord, gt, pred = coord[keep], gt[keep], pred[keep]
    else:
        hidden = []
    labelled = gt != IGNORE_INDEX
    wrong = labelled & (gt != pred)
    truth_rgb = np.where(labelled[:, None], palette[np.clip(gt, 0, None)], IGNORE_COLOR)
    pred_rgb = palette[pred]
    error_rgb = np.where(wrong[:, None], _WRONG_COLOR, np.where(labelled[:, None], _CORRECT_COLOR, _UNSCORED_COLOR))
    accuracy = 1.0 - wrong.sum() / labelled.sum() if labelled.any() else float("nan")
    size = float(np.clip(100000.0 / len(coord), 0.3, 16.0))
    views = [("top-down", coord[:, :2], np.argsort(coord[:, 2], kind="stable"))]
    if oblique:
        views.append(("oblique", *_oblique(coord)))
    span = np.ptp(coord[:, :2], axis=0) + 1e-6
    width = float(np.clip(span[0] / span[1], 0.5, 2.5)) * 4.2
    fig, axes = plt.subplots(len(views), 3, figsize=(3 * width, 4.2 * len(views) + 1.0), squeeze=False,
                             layout="constrained")
    panels = [("ground truth", truth_rgb), ("prediction", pred_rgb),
              (f"errors ({accuracy:.1%} of labelled points correct)", error_rgb)]
    for row, (view, xy, order) in enumerate(views):
        for col, (name, rgb) in enumerate(panels):
            ax = axes[row, col]
            ax.scatter(xy[order, 0], xy[order, 1], c=rgb[order], s=size, marker=".", linewidths=0, rasterized=True)
            ax.set_aspect("equal")
            ax.set_axis_off()
            ax.set_title(f"{name}, {view}" if col == 0 else name, fontsize=9)
    shown = np.union1d(gt[labelled], pred)
    handles = [Patch(color=palette[c], label=class_names[c]) for c in shown]
    if (~labelled).any():
        handles.append(Patch(color=IGNORE_COLOR, label="ignored (truth)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    note = f"{len(coord)} points" + (f", {' and '.join(class_names[h] for h in hidden)} hidden" if hidden else "")
    fig.suptitle(f"{title} ({note})" if title else note, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_checkpoint_scenes(directory: str | Path, class_names: Sequence[str], out_dir: str | Path, *,
                             title: str = "", oblique: bool = True) -> list[Path]:
    """Render every scene whose points a checkpoint holds (the :data:`RENDER_ARRAYS` ``.npy`` files the
    ``scene_seg`` protocol returned and the loop saved) with :func:`render_scene`, in the dataset's colours.

    Args:
        directory: the checkpoint directory.
        class_names: the run's classes (the checkpoint state's ``class_names``).
        out_dir: where the PNGs go (created), ``<i>_<scene name>.png`` in split order.
        title: prefix of every figure's title (the scene's name follows).
        oblique: add the oblique views (``protocol.render_oblique``).

    Returns:
        The PNG paths; ``[]`` when the checkpoint holds no scene points.

    Raises:
        ValueError: the arrays disagree in length or hold labels outside the class list.
    """
    directory = Path(directory)
    if not all((directory / f"{name}.npy").is_file() for name in RENDER_ARRAYS):
        return []
    data = {name: np.load(directory / f"{name}.npy") for name in RENDER_ARRAYS}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    colors = class_colors(class_names)
    paths = []
    for r, scene in enumerate(data["scene_names"]):
        rows = data["scene_index"] == r
        if not rows.any():
            continue
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(scene))
        paths.append(render_scene(data["scene_coord"][rows], data["scene_gt"][rows], data["scene_pred"][rows],
                                  list(class_names), colors, out_dir / f"{r:02d}_{safe}.png",
                                  title=f"{title}: {scene}" if title else str(scene), oblique=oblique))
    return paths
