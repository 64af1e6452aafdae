"""Transforms of scene samples (dicts of row-aligned numpy arrays), in Pointcept / PointNeXt conventions.

Every transform is a small callable object::

    sample = transform(sample, rng)

``sample`` is a scene sample (:mod:`pointtune.data.scenes`): ``coord`` (N, 3) float32 metres, ``color``
(N, 3) float32 (0..255 until :class:`ChromaticNormalize`), ``segment`` (N,) int64 and optional per-point
keys; ``rng`` is a ``numpy.random.Generator``, the only source of randomness (a seeded generator gives a
reproducible result; deterministic transforms ignore it). A transform returns a new dict and never modifies
the arrays of its input.

Per-point keys are those of :data:`POINT_KEYS`. Transforms that drop, reorder or repeat rows (grid sampling,
crops, subsampling, shuffling, padding) apply the same row indices to every per-point key present
(:func:`select_points`) and record ``point_index`` (K,) int64: for every output row, the row of the *first*
input it came from (composed across such steps), which is how predictions are voted back to the original
points. Other keys are passed through unchanged.

Defaults follow the AMContrast3D / PointNeXt S3DIS recipe unless said otherwise (voxel 0.04 m, 24000 points,
auto-contrast p 0.2, scale 0.9..1.1, jitter 0.005 / 0.02, colour drop 0.2, S3DIS colour statistics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pointtune.data.scenes import IGNORE_INDEX
from pointtune.data.transforms import rotation_about_axis

__all__ = [
    "POINT_KEYS",
    "SceneTransform",
    "select_points",
    "SceneCompose",
    "GridSample",
    "SphereCrop",
    "RandomSubsample",
    "ShufflePoints",
    "CenterShift",
    "RotateZ",
    "ScaleMirror",
    "PointJitter",
    "ChromaticAutoContrast",
    "ChromaticDrop",
    "ChromaticNormalize",
    "HeightFeature",
    "PadPoints",
    "S3DIS_COLOR_MEAN",
    "S3DIS_COLOR_STD",
    "SCANNET_COLOR_MEAN",
    "SCANNET_COLOR_STD",
]

#: Keys holding one row per point; row-selecting transforms index all of those present.
POINT_KEYS = ("coord", "color", "normal", "segment", "instance", "height", "mask", "point_index")

#: Colour statistics (of colours scaled to [0, 1]) used by PointNeXt's S3DIS configs.
S3DIS_COLOR_MEAN = (0.5136457, 0.49523646, 0.44921124)
S3DIS_COLOR_STD = (0.18308958, 0.18415008, 0.19252081)
#: Colour statistics of AMContrast3D's ScanNet configs, to the 4 digits shared/specs/amcontrast3d.md gives.
SCANNET_COLOR_MEAN = (0.4626, 0.4625, 0.4625)
SCANNET_COLOR_STD = (0.6936, 0.6853, 0.6806)

Sample = dict[str, np.ndarray]


class SceneTransform(Protocol):
    """``(sample, rng) -> sample``: see the module docstring."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        ...


def _count(sample: Sample) -> int:
    return int(sample["coord"].shape[0])


def select_points(sample: Sample, idx: np.ndarray) -> Sample:
    """A new sample holding rows ``idx`` of every per-point key (:data:`POINT_KEYS`) of ``sample``.

    Args:
        sample: a scene sample with ``N`` rows.
        idx: ``(K,)`` integer row indices into ``[0, N)`` (repeats allowed).

    Returns:
        The new sample: per-point arrays ``(K, ...)``; ``point_index`` ``(K,)`` int64 is
        ``sample["point_index"][idx]`` when the input has one, else ``idx`` itself; other keys shared.
    """
    idx = np.asarray(idx, dtype=np.int64)
    out = {key: value for key, value in sample.items() if key not in POINT_KEYS}
    for key in POINT_KEYS:
        if key in sample:
            out[key] = sample[key][idx]
    if "point_index" not in sample:
        out["point_index"] = idx.copy()
    return out


class SceneCompose:
    """Apply ``transforms`` in order, threading the sample and the same ``rng`` through them."""

    def __init__(self, transforms: Sequence[SceneTransform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Run every transform on ``sample`` (module docstring for the keys)."""
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"SceneCompose({', '.join(map(repr, self.transforms))})"


# --------------------------------------------------------------------------------------------- sampling

GRID_MODES = ("train", "test")


class GridSample:
    """Grid (voxel) sampling: one point per occupied cubic voxel of side ``voxel_size`` metres.

    Voxels are ``floor((coord - coord.min(0)) / voxel_size)`` per axis.

    * ``mode='train'``: keeps one point chosen uniformly at random (by ``rng``) in every occupied voxel.
    * ``mode='test'``: deterministic; the call keeps the first point (in input order) of every voxel, i.e.
      pass 0 of :meth:`passes`, and adds ``inverse`` ``(N,)`` int64 (not a per-point key of the output): the
      output row of the voxel holding each *input* point, so ``pred[inverse]`` spreads the voxel predictions
      to every input point. :meth:`passes` gives the whole-scene passes that together keep every point.

    Output rows are in voxel order (sorted by the voxel's linear index); ``point_index`` is recorded
    (:func:`select_points`).

    Args:
        voxel_size: metres, > 0 (AMContrast3D: 0.04 on S3DIS, 0.02 on ScanNet).
        mode: ``'train'`` or ``'test'``.

    Raises:
        ValueError: ``voxel_size <= 0`` or an unknown mode.
    """

    def __init__(self, voxel_size: float = 0.04, mode: str = "train"):
        if not voxel_size > 0:
            raise ValueError(f"GridSample voxel_size must be > 0 metres, got {voxel_size}")
        if mode not in GRID_MODES:
            raise ValueError(f"GridSample mode must be one of {', '.join(GRID_MODES)}, got {mode!r}")
        self.voxel_size, self.mode = float(voxel_size), mode

    def voxel_keys(self, coord: np.ndarray) -> np.ndarray:
        """``(N,)`` int64 linear voxel index of every point of ``coord`` ``(N, 3)`` (equal for points in the
        same voxel, distinct otherwise)."""
        grid = np.floor((coord - coord.min(axis=0)) / self.voxel_size).astype(np.int64)
        dims = grid.max(axis=0) + 1
        return (grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]

    def _voxels(self, coord: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(order, start, counts, inverse)``: the points sorted stably by voxel, the start and size of every
        voxel's run in ``order`` (V,), and every point's voxel number (N,)."""
        keys = self.voxel_keys(coord)
        order = np.argsort(keys, kind="stable")
        _, start, counts = np.unique(keys[order], return_index=True, return_counts=True)
        inverse = np.empty(len(keys), dtype=np.int64)
        inverse[order] = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        return order, start, counts, inverse

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``N`` points -> ``V`` points, one per occupied voxel (see the class docstring).

        Raises:
            ValueError: an empty sample.
        """
        coord = sample["coord"]
        if len(coord) == 0:
            raise ValueError("GridSample needs at least one point")
        if self.mode == "train":
            perm = rng.permutation(len(coord))
            _, first = np.unique(self.voxel_keys(coord)[perm], return_index=True)
            return select_points(sample, perm[first])
        return self.passes(sample, max_passes=1)[0]

    def passes(self, sample: Sample, max_passes: int | None = None) -> list[Sample]:
        """Whole-scene test passes (the PointNeXt protocol): pass ``p`` keeps, in every voxel holding ``c``
        points (ranked in input order), the point of rank ``p mod c``. With ``max(c)`` passes every input
        point is kept by at least one pass (the point of rank ``r`` by pass ``r``), so voting the passes'
        predictions back through ``point_index`` predicts every point.

        Args:
            sample: the whole scene, ``N >= 1`` points.
            max_passes: at most this many passes (``None``: ``max(c)``, full coverage; fewer leave points of
                the most crowded voxels to ``inverse`` voting only).

        Returns:
            ``P`` samples of ``V`` rows each (one per voxel, voxel order), each with ``point_index`` (V,)
            and the shared ``inverse`` (N,) (class docstring).

        Raises:
            ValueError: an empty sample or ``max_passes < 1``.
        """
        if len(sample["coord"]) == 0:
            raise ValueError("GridSample needs at least one point")
        if max_passes is not None and max_passes < 1:
            raise ValueError(f"max_passes must be >= 1 or None, got {max_passes}")
        order, start, counts, inverse = self._voxels(sample["coord"])
        total = int(counts.max()) if max_passes is None else min(int(counts.max()), int(max_passes))
        out = []
        for p in range(total):
            part = select_points(sample, order[start + p % counts])
            part["inverse"] = inverse
            out.append(part)
        return out

    def __repr__(self) -> str:
        return f"GridSample({self.voxel_size:g}, {self.mode!r})"


CROP_CENTRES = ("random", "middle")


class SphereCrop:
    """Keep the ``max_points`` points nearest (Euclidean, 3-D) to a centre point; samples with at most
    ``max_points`` points are returned unchanged (rows and order kept).

    The PointNeXt ``crop_pc`` / Pointcept ``SphereCrop`` rule. The centre is a point of the sample:

    * ``center='random'`` (training): drawn uniformly with ``rng``;
    * ``center='middle'`` (evaluation): the point nearest to the centre of the bounding box.

    Kept rows are in input order; ``point_index`` is recorded. :meth:`cover` splits a whole sample into crops
    that together hold every point.

    Args:
        max_points: points kept, >= 1 (AMContrast3D: 24000 on S3DIS, 64000 on ScanNet).
        center: ``'random'`` or ``'middle'``.

    Raises:
        ValueError: ``max_points < 1`` or an unknown ``center``.
    """

    def __init__(self, max_points: int = 24000, center: str = "random"):
        if max_points < 1:
            raise ValueError(f"SphereCrop max_points must be >= 1, got {max_points}")
        if center not in CROP_CENTRES:
            raise ValueError(f"SphereCrop center must be one of {', '.join(CROP_CENTRES)}, got {center!r}")
        self.max_points, self.center = int(max_points), center

    def nearest(self, coord: np.ndarray, centre: np.ndarray) -> np.ndarray:
        """``(max_points,)`` int64 rows of ``coord`` ``(N, 3)`` nearest to ``centre`` ``(3,)``, sorted
        (``N > max_points``; distance ties broken arbitrarily)."""
        d2 = ((coord - centre) ** 2).sum(axis=1)
        return np.sort(np.argpartition(d2, self.max_points - 1)[: self.max_points])

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``N`` points -> ``min(N, max_points)`` points (class docstring)."""
        coord = sample["coord"]
        if len(coord) <= self.max_points:
            return dict(sample)
        if self.center == "random":
            centre = coord[rng.integers(len(coord))]
        else:
            mid = (coord.min(axis=0) + coord.max(axis=0)) / 2.0
            centre = coord[np.argmin(((coord - mid) ** 2).sum(axis=1))]
        return select_points(sample, self.nearest(coord, centre))

    def cover(self, sample: Sample) -> list[Sample]:
        """Deterministic crops of ``max_points`` points (fewer only for a sample of at most ``max_points``,
        returned whole) whose union is every point: repeatedly, the first point not yet covered in x-then-y
        order is the centre of the next crop (its nearest ``max_points`` points, centre included).

        Returns:
            Samples with ``point_index`` (rows of ``sample``; :func:`select_points`), in crop order.
        """
        coord = sample["coord"]
        n = len(coord)
        if n <= self.max_points:
            return [select_points(sample, np.arange(n))]
        sweep = np.lexsort((coord[:, 1], coord[:, 0]))
        covered = np.zeros(n, dtype=bool)
        crops, pos = [], 0
        while True:
            while pos < n and covered[sweep[pos]]:
                pos += 1
            if pos == n:
                return crops
            centre = int(sweep[pos])
            idx = self.nearest(coord, coord[centre])
            if centre not in idx:  # more than max_points points at distance 0 from it
                idx[-1] = centre
                idx.sort()
            covered[idx] = True
            crops.append(select_points(sample, idx))

    def __repr__(self) -> str:
        return f"SphereCrop({self.max_points}, {self.center!r})"


class RandomSubsample:
    """Keep ``max_points`` distinct points drawn uniformly with ``rng`` (kept in input order); samples with
    at most ``max_points`` points are returned unchanged. A random (non-spatial) alternative to
    :class:`SphereCrop`.

    Raises:
        ValueError: ``max_points < 1``.
    """

    def __init__(self, max_points: int = 24000):
        if max_points < 1:
            raise ValueError(f"RandomSubsample max_points must be >= 1, got {max_points}")
        self.max_points = int(max_points)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``N`` points -> ``min(N, max_points)`` points."""
        n = _count(sample)
        if n <= self.max_points:
            return dict(sample)
        return select_points(sample, np.sort(rng.choice(n, size=self.max_points, replace=False)))

    def __repr__(self) -> str:
        return f"RandomSubsample({self.max_points})"


class ShufflePoints:
    """Randomly permute the rows (every per-point key alike)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``N`` rows -> the same rows in a random order."""
        return select_points(sample, rng.permutation(_count(sample)))

    def __repr__(self) -> str:
        return "ShufflePoints()"


# ------------------------------------------------------------------------------------------------ geometry

XY_CENTRES = ("bbox", "mean", "min", "none")


class CenterShift:
    """Translate ``coord``: x and y to a centre, z so that its minimum is 0.

    Args:
        xy: ``'bbox'`` (subtract the bounding-box centre, Pointcept's ``CenterShift``), ``'mean'`` (the
            centroid, PointNeXt's ``PointCloudXYZAlign``), ``'min'`` (the minimum: ``coord -= coord.min(0)``
            with ``z_min``, PointNeXt's S3DIS loader) or ``'none'``.
        z_min: subtract the minimum z (floor at 0); ``False`` leaves z alone.

    Deterministic; normals unchanged.

    Raises:
        ValueError: unknown ``xy``.
    """

    def __init__(self, xy: str = "bbox", z_min: bool = True):
        if xy not in XY_CENTRES:
            raise ValueError(f"CenterShift xy must be one of {', '.join(XY_CENTRES)}, got {xy!r}")
        self.xy, self.z_min = xy, bool(z_min)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``coord`` (N, 3) -> translated (N, 3) float32 metres."""
        coord = sample["coord"]
        if len(coord) == 0:
            return dict(sample)
        shift = np.zeros(3)
        if self.xy == "bbox":
            shift[:2] = (coord[:, :2].min(axis=0) + coord[:, :2].max(axis=0)) / 2.0
        elif self.xy == "mean":
            shift[:2] = coord[:, :2].mean(axis=0)
        elif self.xy == "min":
            shift[:2] = coord[:, :2].min(axis=0)
        if self.z_min:
            shift[2] = coord[:, 2].min()
        return {**sample, "coord": (coord - shift).astype(np.float32)}

    def __repr__(self) -> str:
        return f"CenterShift(xy={self.xy!r}, z_min={self.z_min})"


class RotateZ:
    """Rotate ``coord`` (and ``normal``) about the z (gravity) axis through the origin by an angle drawn from
    ``U(-range_deg / 2, range_deg / 2)`` degrees; 360 (default) is a uniform rotation about z. Distances
    between points and z are preserved.

    Raises:
        ValueError: ``range_deg`` outside ``[0, 360]``.
    """

    def __init__(self, range_deg: float = 360.0):
        if not 0 <= range_deg <= 360:
            raise ValueError(f"RotateZ range_deg must be in [0, 360], got {range_deg}")
        self.range_deg = float(range_deg)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``coord`` (N, 3) -> rotated (N, 3) float32; ``normal`` rotated alike."""
        half = np.deg2rad(self.range_deg) / 2.0
        rot = rotation_about_axis(2, rng.uniform(-half, half))
        out = {**sample, "coord": (sample["coord"] @ rot.T).astype(np.float32)}
        if "normal" in sample:
            out["normal"] = (sample["normal"] @ rot.T).astype(np.float32)
        return out

    def __repr__(self) -> str:
        return f"RotateZ({self.range_deg:g})"


class ScaleMirror:
    """Scale ``coord`` about the origin by factors drawn from ``U(low, high)`` (one per axis if
    ``anisotropic``, else one for all), then flip axis ``i`` with probability ``mirror[i]``.

    PointNeXt's ``PointCloudScaling`` (S3DIS: 0.9..1.1, anisotropic, no mirror) and Pointcept's ScanNet
    ``RandomScale`` 0.8..1.2 with PointNeXt's mirror ``[0.2, -1, -1]`` (here ``(0.2, 0, 0)``: x flipped one
    time in five). Normals are divided by the factors and renormalised (which also flips them).

    Args:
        low, high: factor range, ``0 < low <= high``.
        anisotropic: an independent factor per axis.
        mirror: ``(3,)`` flip probabilities in ``[0, 1]``.

    Raises:
        ValueError: a bad range or probability.
    """

    def __init__(self, low: float = 0.9, high: float = 1.1, anisotropic: bool = True,
                 mirror: Sequence[float] = (0.0, 0.0, 0.0)):
        if low <= 0 or low > high:
            raise ValueError(f"ScaleMirror needs 0 < low <= high, got low={low}, high={high}")
        mirror = tuple(float(m) for m in mirror)
        if len(mirror) != 3 or not all(0.0 <= m <= 1.0 for m in mirror):
            raise ValueError(f"ScaleMirror mirror must be 3 probabilities in [0, 1], got {mirror}")
        self.low, self.high, self.anisotropic, self.mirror = float(low), float(high), bool(anisotropic), mirror

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``coord`` (N, 3) -> scaled (N, 3) float32 (unitless factors); ``normal`` kept perpendicular."""
        factors = rng.uniform(self.low, self.high, size=3 if self.anisotropic else 1) * np.ones(3)
        factors = np.where(rng.random(3) < np.asarray(self.mirror), -factors, factors)
        out = {**sample, "coord": (sample["coord"] * factors).astype(np.float32)}
        if "normal" in sample:
            normal = sample["normal"] / factors
            norm = np.linalg.norm(normal, axis=1, keepdims=True)
            out["normal"] = (normal / np.where(norm > 0, norm, 1.0)).astype(np.float32)
        return out

    def __repr__(self) -> str:
        return f"ScaleMirror({self.low:g}, {self.high:g}, anisotropic={self.anisotropic}, mirror={self.mirror})"


class PointJitter:
    """Add independent Gaussian noise ``N(0, sigma)`` metres to every coordinate, clipped to ``+-clip``
    (PointNeXt's S3DIS ``PointCloudJitter``: 0.005, 0.02).

    Raises:
        ValueError: ``sigma < 0`` or ``clip < 0``.
    """

    def __init__(self, sigma: float = 0.005, clip: float = 0.02):
        if sigma < 0 or clip < 0:
            raise ValueError(f"PointJitter needs sigma >= 0 and clip >= 0, got sigma={sigma}, clip={clip}")
        self.sigma, self.clip = float(sigma), float(clip)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``coord`` (N, 3) -> (N, 3) float32 with noise bounded by ``clip``."""
        coord = sample["coord"]
        noise = np.clip(rng.normal(0.0, self.sigma, size=coord.shape), -self.clip, self.clip)
        return {**sample, "coord": (coord + noise).astype(np.float32)}

    def __repr__(self) -> str:
        return f"PointJitter({self.sigma:g}, {self.clip:g})"


# -------------------------------------------------------------------------------------------------- colour


class ChromaticAutoContrast:
    """With probability ``p``, stretch every colour channel to the full ``[0, 255]`` range (per-channel
    min -> 0, max -> 255) and blend: ``color = (1 - b) * color + b * stretched``, with ``b = blend_factor``
    or, when ``None``, drawn from ``U(0, 1)``. A channel with a single value is left as it is.

    Expects colours in ``[0, 255]`` (before :class:`ChromaticNormalize`).

    Raises:
        ValueError: ``p`` or ``blend_factor`` outside ``[0, 1]``.
    """

    def __init__(self, p: float = 0.2, blend_factor: float | None = None):
        if not 0 <= p <= 1 or (blend_factor is not None and not 0 <= blend_factor <= 1):
            raise ValueError(f"ChromaticAutoContrast needs p and blend_factor in [0, 1], got {p}, {blend_factor}")
        self.p, self.blend_factor = float(p), blend_factor

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``color`` (N, 3) in [0, 255] -> (N, 3) float32 in [0, 255]."""
        if rng.random() >= self.p or len(sample["color"]) == 0:
            return dict(sample)
        color = sample["color"].astype(np.float64)
        lo, hi = color.min(axis=0), color.max(axis=0)
        span = hi - lo
        stretched = np.where(span > 0, (color - lo) * (255.0 / np.where(span > 0, span, 1.0)), color)
        blend = rng.random() if self.blend_factor is None else float(self.blend_factor)
        return {**sample, "color": ((1.0 - blend) * color + blend * stretched).astype(np.float32)}

    def __repr__(self) -> str:
        return f"ChromaticAutoContrast(p={self.p:g}, blend_factor={self.blend_factor})"


class ChromaticDrop:
    """With probability ``p`` set every colour of the sample to 0 (PointNeXt's ``ChromaticDropGPU``,
    Pointcept's ``RandomColorDrop``); apply it before :class:`ChromaticNormalize`, as both do.

    Raises:
        ValueError: ``p`` outside ``[0, 1]``.
    """

    def __init__(self, p: float = 0.2):
        if not 0 <= p <= 1:
            raise ValueError(f"ChromaticDrop p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``color`` (N, 3) -> unchanged, or zeros with probability ``p``."""
        if rng.random() >= self.p:
            return dict(sample)
        return {**sample, "color": np.zeros_like(sample["color"], dtype=np.float32)}

    def __repr__(self) -> str:
        return f"ChromaticDrop({self.p:g})"


class ChromaticNormalize:
    """``color = (color / scale - mean) / std`` per channel: colours 0..255 -> standardised values (no
    longer in [0, 255]; about zero mean, unit spread).

    Args:
        mean, std: ``(3,)`` statistics of colours in ``[0, 1]``; defaults :data:`S3DIS_COLOR_MEAN` /
            :data:`S3DIS_COLOR_STD` (:data:`SCANNET_COLOR_MEAN` / :data:`SCANNET_COLOR_STD` for ScanNet).
        scale: the colour range, 255.

    Raises:
        ValueError: not 3 means / stds, a std or ``scale`` <= 0.
    """

    def __init__(self, mean: Sequence[float] = S3DIS_COLOR_MEAN, std: Sequence[float] = S3DIS_COLOR_STD,
                 scale: float = 255.0):
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if mean.shape != (3,) or std.shape != (3,) or not (std > 0).all() or not scale > 0:
            raise ValueError(f"ChromaticNormalize needs 3 means, 3 positive stds and scale > 0, got "
                             f"{mean.tolist()}, {std.tolist()}, {scale}")
        self.mean, self.std, self.scale = mean, std, float(scale)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``color`` (N, 3) in [0, scale] -> (N, 3) float32 standardised."""
        color = (sample["color"] / self.scale - self.mean) / self.std
        return {**sample, "color": color.astype(np.float32)}

    def __repr__(self) -> str:
        return f"ChromaticNormalize(mean={self.mean.round(4).tolist()}, std={self.std.round(4).tolist()})"


# ------------------------------------------------------------------------------------------------ features


class HeightFeature:
    """Add ``height`` (N, 1) float32 metres: each point's z minus the sample's minimum z (PointNeXt's
    ``heights``, its fourth S3DIS input channel). Computed on the coordinates as they are when it runs, so
    put it after the geometric augmentation (with ``CenterShift(z_min=True)`` before it, it equals z
    shifted).
    """

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """Adds ``height``; ``coord`` unchanged."""
        z = sample["coord"][:, 2:3]
        base = z.min() if len(z) else 0.0
        return {**sample, "height": (z - base).astype(np.float32)}

    def __repr__(self) -> str:
        return "HeightFeature()"


class PadPoints:
    """Pad a sample to exactly ``num_points`` rows by repeating rows drawn uniformly (with replacement) by
    ``rng``; the repeated rows get ``segment = IGNORE_INDEX`` (and ``instance = -1``) and ``mask = False``,
    the original rows ``mask = True`` (kept if the sample already has a mask). A sample of exactly
    ``num_points`` rows only gains a mask. Padding rows are copies of real points (so they do not distort
    the neighbourhoods a backbone builds); only their labels and mask mark them.

    Raises:
        ValueError: ``num_points < 1`` (on construction); an empty sample or one with more than
            ``num_points`` rows (on call: crop first).
    """

    def __init__(self, num_points: int):
        if num_points < 1:
            raise ValueError(f"PadPoints num_points must be >= 1, got {num_points}")
        self.num_points = int(num_points)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        """``N <= num_points`` rows -> ``num_points`` rows with ``mask`` (num_points,) bool."""
        n = _count(sample)
        if n == 0 or n > self.num_points:
            raise ValueError(f"PadPoints({self.num_points}) cannot pad a sample of {n} points "
                             f"({'crop it first' if n else 'no point to repeat'})")
        if "mask" not in sample:
            sample = {**sample, "mask": np.ones(n, dtype=bool)}
        if n == self.num_points:
            return dict(sample)
        extra = rng.integers(n, size=self.num_points - n)
        out = select_points(sample, np.concatenate([np.arange(n), extra]))
        out["mask"] = out["mask"].copy()
        out["mask"][n:] = False
        if "segment" in out:
            out["segment"][n:] = IGNORE_INDEX  # fancy indexing made a copy: the input is untouched
        if "instance" in out:
            out["instance"][n:] = -1
        return out

    def __repr__(self) -> str:
        return f"PadPoints({self.num_points})"
