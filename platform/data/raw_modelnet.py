"""Raw ModelNet40 meshes (Wu et al. 2015, ``ModelNet40.zip``) to the ``modelnet40_ply_hdf5_2048`` layout of
:func:`pointtune.data.modelnet.read_modelnet40_h5`.

Raw layout under ``--raw`` (or its ``ModelNet40/``): ``<class>/{train,test}/<class>_NNNN.off``, the official
split. Every mesh is sampled with area-weighted uniform surface sampling (``trimesh.sample.sample_surface``:
a face drawn with probability proportional to its area, a uniform point on it), ``num_points`` points with
their face normals, seeded per shape by ``[seed, crc32(shape id)]`` so a shape's points do not depend on the
order or on resuming. Points are then centred on their mean and scaled into the unit sphere, as in the
PointNet release.

Some ModelNet files have a malformed header, ``OFF`` glued to the counts (``OFF490 518 0`` on one line):
:func:`read_off` reads both forms.

Written under ``--out``: ``shape_names.txt`` (the class directories, sorted: the official order),
``{train,test}_files.txt``, ``ply_data_{split}<k>.h5`` with ``data`` (M, N, 3) float32, ``normal``
(M, N, 3) float32, ``label`` (M, 1) uint8, at most :data:`SHAPES_PER_H5` shapes a file, shapes in
(class, natural name) order; ``{split}_ids.txt`` (one shape id a line, in file order); and the per-shape
samples in ``shapes_<N>_seed<seed>/<class>/<id>.npy`` (N, 6), which make a rerun skip the shapes already
sampled (delete that directory once the HDF5 files are written to save space).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from pointtune.data._io import natural_key
from pointtune.data.errors import DatasetError
from pointtune.data.staged import PrepareItem, PrepareReport, run_items, save_npy

__all__ = ["SHAPES_PER_H5", "read_off", "sample_mesh", "prepare_modelnet40"]

#: Shapes per HDF5 file, as in the PointNet release.
SHAPES_PER_H5 = 2048
_SPLITS = ("train", "test")


def _tokens(line: str) -> list[str]:
    return line.split("#", 1)[0].split()


def read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF mesh: ``(V, 3)`` float64 vertices and ``(F, 3)`` int64 triangles (polygons with more
    than 3 corners are split into a fan).

    Accepts the standard header (``OFF`` on its own line, then ``V F E``) and ModelNet's malformed one
    (``OFFV F E`` on the first line). ``#`` comments and blank lines are ignored.

    Raises:
        DatasetError: a missing or unreadable file, no ``OFF`` header, wrong counts, a non-numeric value, a
            face with fewer than 3 corners or a vertex index out of range (naming the file and line).
    """
    try:
        lines = path.read_text(encoding="latin-1").splitlines()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({' '.join(str(err).split())})") from None
    numbered = [(i, _tokens(line)) for i, line in enumerate(lines, start=1)]
    numbered = [(i, t) for i, t in numbered if t]
    if not numbered or not numbered[0][1][0].startswith("OFF"):
        raise DatasetError(f"{path}: not an OFF mesh (the first line must start with OFF)")
    first = numbered[0][1]
    glued = first[0][3:]
    counts = ([glued] if glued else []) + first[1:]
    body = numbered[1:]
    if not counts:
        if not body:
            raise DatasetError(f"{path}: OFF header without the counts 'V F E'")
        (_, counts), body = body[0], body[1:]
    try:
        n_vert, n_face = int(counts[0]), int(counts[1])
    except (ValueError, IndexError):
        raise DatasetError(f"{path}: OFF counts {' '.join(counts)[:40]!r} are not 'V F E'") from None
    if n_vert < 3 or n_face < 1 or len(body) < n_vert + n_face:
        raise DatasetError(f"{path}: OFF header says {n_vert} vertices and {n_face} faces, "
                           f"the file has {len(body)} data lines")
    vertices = np.empty((n_vert, 3), dtype=np.float64)
    for row, (number, tokens) in enumerate(body[:n_vert]):
        try:
            vertices[row] = [float(v) for v in tokens[:3]]
        except ValueError:
            raise DatasetError(f"{path}: line {number}: vertex {' '.join(tokens)[:40]!r} is not 3 numbers") from None
        if not np.isfinite(vertices[row]).all():
            raise DatasetError(f"{path}: line {number}: vertex {' '.join(tokens)[:40]!r} is not finite")
    triangles = []
    for number, tokens in body[n_vert:n_vert + n_face]:
        try:
            corners = [int(v) for v in tokens[1:1 + int(tokens[0])]]
        except ValueError:
            raise DatasetError(f"{path}: line {number}: face is not 'k i1 ... ik'") from None
        if len(corners) < 3 or min(corners) < 0 or max(corners) >= n_vert:
            raise DatasetError(f"{path}: line {number}: face {' '.join(tokens)[:40]!r} needs at least 3 vertex "
                               f"indices in 0..{n_vert - 1}")
        triangles.extend((corners[0], corners[k], corners[k + 1]) for k in range(1, len(corners) - 1))
    return vertices, np.asarray(triangles, dtype=np.int64)


def sample_mesh(path: Path, num_points: int, seed: int, shape_id: str) -> np.ndarray:
    """``(num_points, 6)`` float32 ``x y z nx ny nz``: area-weighted surface samples of the OFF mesh at
    ``path`` with unit face normals, centred on their mean and scaled into the unit sphere (module docstring).

    Raises:
        DatasetError: any error of :func:`read_off`, or a mesh of zero area (naming the file).
    """
    try:
        import trimesh
    except ImportError:
        raise DatasetError("data prepare modelnet40 needs trimesh: pip install 'pointtune[data]'") from None
    vertices, faces = read_off(path)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)
    if not mesh.area > 0:
        raise DatasetError(f"{path}: mesh of zero surface area, nothing to sample")
    points, face_index = trimesh.sample.sample_surface(mesh, num_points, seed=[seed, zlib.crc32(shape_id.encode())])
    normals = mesh.face_normals[face_index]
    points = points - points.mean(axis=0)
    points /= max(float(np.linalg.norm(points, axis=1).max()), 1e-12)
    return np.concatenate([points, normals], axis=1).astype(np.float32)


def _shapes(base: Path, classes: list[str], split: str) -> list[tuple[str, int, Path]]:
    """``(shape id, label, path)`` of every ``<class>/<split>/*.off``, in (class, natural name) order."""
    return [(p.stem, label, p) for label, cls in enumerate(classes)
            for p in sorted((base / cls / split).glob("*.off"), key=natural_key)]


def _write_h5(out: Path, split: str, clouds: list[Path], labels: list[int]) -> list[str]:
    """The split's HDF5 files (each written to ``.part`` and renamed); returns their names."""
    import h5py

    names = []
    for k, start in enumerate(range(0, len(clouds), SHAPES_PER_H5)):
        chunk = np.stack([np.load(p) for p in clouds[start:start + SHAPES_PER_H5]])
        name = f"ply_data_{split}{k}.h5"
        part = out / f"{name}.part"
        with h5py.File(part, "w") as f:
            f.create_dataset("data", data=chunk[..., :3])
            f.create_dataset("normal", data=chunk[..., 3:])
            f.create_dataset("label", data=np.asarray(labels[start:start + SHAPES_PER_H5], dtype=np.uint8)[:, None])
        os.replace(part, out / name)
        names.append(name)
    return names


def _sample_to(target: Path, mesh: Path, num_points: int, seed: int, shape_id: str) -> bool:
    """Sample one mesh into its cache file (:func:`sample_mesh`)."""
    save_npy(target, sample_mesh(mesh, num_points, seed, shape_id))
    return True


def _write_text(path: Path, lines: list[str]) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text("".join(f"{line}\n" for line in lines))
    os.replace(part, path)


def prepare_modelnet40(raw: Path, out: Path, progress: bool = True, num_points: int = 2048,
                       seed: int = 0) -> PrepareReport:
    """Sample every mesh under ``raw`` and write the ``modelnet40_ply_hdf5_2048`` layout into ``out``
    (module docstring).

    Args:
        num_points: points per shape (the release's 2048).
        seed: the sampling seed.

    Raises:
        DatasetError: ``num_points < 1``, no class directories with ``train/`` or ``test/`` meshes, more than
            256 classes, or any error of :func:`sample_mesh`.
    """
    if num_points < 1:
        raise DatasetError(f"data prepare modelnet40: points per shape (--points) must be >= 1, got {num_points}")
    base = raw / "ModelNet40" if (raw / "ModelNet40").is_dir() else raw
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and any((p / s).is_dir() for s in _SPLITS))
    if not classes or len(classes) > 256:
        raise DatasetError(f"{base}: holds {len(classes)} <class>/{{train,test}}/ directories, expected 1..256 "
                           "(ModelNet40: 40)")
    splits = {split: _shapes(base, classes, split) for split in _SPLITS}
    samples = out / f"shapes_{num_points}_seed{seed}"
    cache = {sid: samples / classes[label] / f"{sid}.npy" for shapes in splits.values() for sid, label, _ in shapes}
    for cls in classes:
        (samples / cls).mkdir(parents=True, exist_ok=True)
    items = [PrepareItem(sid, cache[sid], lambda p=p, sid=sid: _sample_to(cache[sid], p, num_points, seed, sid))
             for shapes in splits.values() for sid, _, p in shapes]
    counts = run_items(items, "modelnet40 shapes", progress)
    _write_text(out / "shape_names.txt", classes)
    for split, shapes in splits.items():
        if not shapes:
            continue
        names = _write_h5(out, split, [cache[sid] for sid, _, _ in shapes], [label for _, label, _ in shapes])
        _write_text(out / f"{split}_ids.txt", [sid for sid, _, _ in shapes])
        _write_text(out / f"{split}_files.txt", names)
    return PrepareReport("modelnet40", *counts, out, "shapes")
