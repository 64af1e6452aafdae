"""The built-in SYNTHETIC dataset: procedurally generated, labelled shapes, for runs with no download.

Nothing here is real data. Each class is one parametric surface (sphere, cube, cylinder, cone, torus, ...)
in a canonical pose, roughly inside the unit sphere; every sample of it is then

1. sampled at ``2 * num_points`` points (area-uniform, except the ellipsoid and the helix tube, whose
   densities follow their parametrisation), with analytic unit normals;
2. scaled anisotropically by factors ``U(0.8, 1.25)`` per axis (normals by the inverse, renormalised);
3. perturbed along the normal by Gaussian surface noise of a per-sample sigma ``U(0.005, 0.02)``;
4. partially occluded: the points beyond a random plane are dropped (the plane is perpendicular to a
   random direction and keeps a fraction ``U(0.6, 1.0)`` of the points), as a one-sided scan would;
5. resampled to ``num_points`` of the remaining points (without replacement, random order);
6. rotated by a uniformly random 3-D rotation (the class is rotation-invariant).

The clouds are not centred or normalised: the data pipeline's ``NormalizeUnitSphere`` does that. Random
pose, occlusion and near-neighbour classes (sphere / ellipsoid, cylinder / cone, cube / pyramid /
octahedron) make the task learnable but not trivial.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pointtune.data.pointcloud import PointCloudSet

__all__ = ["make_synthetic", "SYNTHETIC_CLASSES"]

Generator = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]

_SPLIT_CODES = {"train": 0, "test": 1}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _sphere_dirs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return _unit(rng.normal(size=(*shape, 3)))


def _sphere(rng, count, n):
    d = _sphere_dirs(rng, (count, n))
    return 0.9 * d, d


def _ellipsoid(rng, count, n, axes=(1.0, 0.6, 0.35)):
    a = np.asarray(axes)
    d = _sphere_dirs(rng, (count, n))
    return d * a, _unit(d / a)


def _cylinder(rng, count, n, radius=0.5, half_height=0.8):
    side, cap = 2 * np.pi * radius * 2 * half_height, np.pi * radius**2
    part = rng.choice(3, size=(count, n), p=np.array([side, cap, cap]) / (side + 2 * cap))
    theta = rng.uniform(0, 2 * np.pi, (count, n))
    rho = np.where(part == 0, radius, radius * np.sqrt(rng.random((count, n))))
    y = np.select([part == 0, part == 1], [rng.uniform(-half_height, half_height, (count, n)), half_height],
                  -half_height)
    pts = np.stack([rho * np.cos(theta), y, rho * np.sin(theta)], -1)
    radial = np.stack([np.cos(theta), np.zeros_like(theta), np.sin(theta)], -1)
    axial = np.zeros_like(pts)
    axial[..., 1] = np.where(part == 1, 1.0, -1.0)
    return pts, np.where((part == 0)[..., None], radial, axial)


def _cone(rng, count, n, radius=0.6, height=1.4):
    lateral, base = np.pi * radius * np.hypot(radius, height), np.pi * radius**2
    on_side = rng.random((count, n)) < lateral / (lateral + base)
    theta = rng.uniform(0, 2 * np.pi, (count, n))
    f = np.sqrt(rng.random((count, n)))  # distance from the apex (side) or the axis (base), area-uniform
    rho = radius * f
    y = np.where(on_side, height / 2 - height * f, -height / 2)
    pts = np.stack([rho * np.cos(theta), y, rho * np.sin(theta)], -1)
    side_n = _unit(np.stack([height * np.cos(theta), np.full_like(theta, radius), height * np.sin(theta)], -1))
    base_n = np.broadcast_to(np.array([0.0, -1.0, 0.0]), pts.shape)
    return pts, np.where(on_side[..., None], side_n, base_n)


def _torus(rng, count, n, major=0.7, minor=0.25):
    # tube angle phi has density (major + minor cos phi): inverse CDF by interpolation
    grid = np.linspace(0, 2 * np.pi, 1025)
    cdf = (major * grid + minor * np.sin(grid)) / (2 * np.pi * major)
    phi = np.interp(rng.random((count, n)), cdf, grid)
    theta = rng.uniform(0, 2 * np.pi, (count, n))
    ring = major + minor * np.cos(phi)
    pts = np.stack([ring * np.cos(theta), minor * np.sin(phi), ring * np.sin(theta)], -1)
    nrm = np.stack([np.cos(phi) * np.cos(theta), np.sin(phi), np.cos(phi) * np.sin(theta)], -1)
    return pts, nrm


def _sheet(rng, count, n, half=0.85):
    xz = rng.uniform(-half, half, (count, n, 2))
    pts = np.stack([xz[..., 0], np.zeros((count, n)), xz[..., 1]], -1)
    nrm = np.zeros_like(pts)
    nrm[..., 1] = 1.0
    return pts, nrm


def _helix_tube(rng, count, n, radius=0.55, turns=2.5, half_height=0.8, tube=0.12):
    span = 2 * np.pi * turns
    pitch = 2 * half_height / span
    t = rng.uniform(0, span, (count, n))
    psi = rng.uniform(0, 2 * np.pi, (count, n))
    centre = np.stack([radius * np.cos(t), pitch * t - half_height, radius * np.sin(t)], -1)
    tangent = _unit(np.stack([-radius * np.sin(t), np.full_like(t, pitch), radius * np.cos(t)], -1))
    normal = np.stack([-np.cos(t), np.zeros_like(t), -np.sin(t)], -1)
    binormal = np.cross(tangent, normal)
    out = np.cos(psi)[..., None] * normal + np.sin(psi)[..., None] * binormal
    return centre + tube * out, out


def _mesh(vertices: list, faces: list) -> Generator:
    """Area-uniform sampler of a convex triangle mesh, with outward face normals."""
    v = np.asarray(vertices, dtype=np.float64)
    tri = v[np.asarray(faces)]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    face_n = _unit(cross)
    outward = np.einsum("fi,fi->f", face_n, tri.mean(1) - v.mean(0)) >= 0
    face_n = np.where(outward[:, None], face_n, -face_n)

    def sample(rng, count, n):
        f = rng.choice(len(tri), size=(count, n), p=area / area.sum())
        r1 = np.sqrt(rng.random((count, n, 1)))
        r2 = rng.random((count, n, 1))
        a, b, c = tri[f, 0], tri[f, 1], tri[f, 2]
        return (1 - r1) * a + r1 * (1 - r2) * b + r1 * r2 * c, face_n[f]

    return sample


_h = 0.6
_CUBE = _mesh(
    [[x, y, z] for x in (-_h, _h) for y in (-_h, _h) for z in (-_h, _h)],
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]],
)
_PYRAMID = _mesh(
    [[-0.7, -0.5, -0.7], [0.7, -0.5, -0.7], [0.7, -0.5, 0.7], [-0.7, -0.5, 0.7], [0.0, 0.8, 0.0]],
    [[0, 1, 2], [0, 2, 3], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]],
)
_OCTAHEDRON = _mesh(
    [[0.9, 0, 0], [-0.9, 0, 0], [0, 0.9, 0], [0, -0.9, 0], [0, 0, 0.9], [0, 0, -0.9]],
    [[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)],
)

# Class order = label order; make_synthetic(num_classes=k) uses the first k.
_SHAPES: list[tuple[str, Generator]] = [
    ("sphere", _sphere),
    ("cube", _CUBE),
    ("capped_cylinder", _cylinder),
    ("cone", _cone),
    ("torus", _torus),
    ("ellipsoid_1_0.6_0.35", _ellipsoid),
    ("square_sheet", _sheet),
    ("square_pyramid", _PYRAMID),
    ("octahedron", _OCTAHEDRON),
    ("helix_tube", _helix_tube),
]
SYNTHETIC_CLASSES = [name for name, _ in _SHAPES]


def _random_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 3, 3)`` rotations uniform on SO(3) (unit quaternions from a 4-D Gaussian)."""
    w, x, y, z = _unit(rng.normal(size=(count, 4))).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def _make_class(gen: Generator, rng: np.random.Generator, count: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` posed, scaled, noisy, occluded clouds ``(count, n, 3)`` of one shape, and their normals."""
    pool = 2 * n
    pts, nrm = gen(rng, count, pool)
    scale = rng.uniform(0.8, 1.25, (count, 1, 3))
    pts, nrm = pts * scale, _unit(nrm / scale)
    sigma = rng.uniform(0.005, 0.02, (count, 1, 1))
    pts = pts + nrm * sigma * rng.normal(size=(count, pool, 1))
    # occlusion: keep the points on the near side of a random plane, a fraction in [0.6, 1.0]
    heights = (pts @ _sphere_dirs(rng, (count,))[:, :, None])[..., 0]
    kept = np.floor(rng.uniform(0.6, 1.0, count) * pool).astype(np.int64)
    cut = np.sort(heights, axis=1)[np.arange(count), kept - 1]
    keys = rng.random((count, pool))
    keys[heights > cut[:, None]] = 2.0  # dropped points sort last
    order = np.argsort(keys, axis=1)[:, :n]
    pts = np.take_along_axis(pts, order[..., None], axis=1)
    nrm = np.take_along_axis(nrm, order[..., None], axis=1)
    rot = _random_rotations(rng, count)
    rot_t = rot.transpose(0, 2, 1)
    return pts @ rot_t, nrm @ rot_t


def make_synthetic(
    num_classes: int = 8, per_class: int = 48, num_points: int = 1024, seed: int = 0, split: str = "train"
) -> PointCloudSet:
    """Generate the SYNTHETIC labelled shape dataset (see the module docstring for the recipe).

    Args:
        num_classes: how many of :data:`SYNTHETIC_CLASSES` to use (the first ``num_classes``), 2 to 10.
        per_class: clouds per class (>= 1).
        num_points: points per cloud (>= 1).
        seed: with ``split``, determines every number drawn; class ``c`` of a split comes from
            ``np.random.default_rng([seed, split code, c])``, so it does not depend on ``num_classes``.
        split: ``'train'`` or ``'test'``; the two splits are independent draws of the same distribution.

    Returns:
        A :class:`PointCloudSet` with ``points`` and unit ``normals`` ``(num_classes * per_class,
        num_points, 3)`` float32 (unitless, within radius ~1.2 of the origin), ``labels`` int64 in class
        blocks ``0, 0, ..., 1, 1, ...``, and ``class_names`` the shape names. About 0.4 s for 8 x 64 clouds
        of 1024 points on one CPU core.

    Raises:
        ValueError: arguments out of range or an unknown split.
    """
    if not 2 <= num_classes <= len(_SHAPES):
        raise ValueError(f"num_classes must be in [2, {len(_SHAPES)}], got {num_classes}")
    if per_class < 1 or num_points < 1:
        raise ValueError(f"per_class and num_points must be >= 1, got {per_class} and {num_points}")
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r} (expected train or test)")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    points, normals = [], []
    for c, (_, gen) in enumerate(_SHAPES[:num_classes]):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], c])
        p, n = _make_class(gen, rng, per_class, num_points)
        points.append(p)
        normals.append(n)
    return PointCloudSet(
        points=np.concatenate(points).astype(np.float32),
        labels=np.repeat(np.arange(num_classes), per_class),
        class_names=SYNTHETIC_CLASSES[:num_classes],
        normals=_unit(np.concatenate(normals)).astype(np.float32),
    )
