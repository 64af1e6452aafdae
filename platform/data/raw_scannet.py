"""Raw ScanNet v2 (Dai et al. 2017) to the per-scene arrays of :func:`pointtune.data.scenes.read_scannet_scene`.

Raw layout (the official release, ``scans/`` or the scene directories directly under ``--raw``)::

    scannetv2-labels.combined.tsv                 raw category -> NYU40 id (columns raw_category, nyu40id);
                                                  needed for the aggregation route below
    scannetv2_train.txt, scannetv2_val.txt        optional official split lists, copied beside the arrays
    <scene>/<scene>_vh_clean_2.ply                the annotated mesh: vertex x y z (metres) red green blue
    <scene>/<scene>_vh_clean_2.0.010000.segs.json segIndices: the over-segment of every vertex
    <scene>/<scene>.aggregation.json              segGroups: objectId, label (raw category), segments
        (or <scene>_vh_clean.aggregation.json)
    <scene>/<scene>_vh_clean_2.labels.ply         vertex property ``label``: the NYU40 id (no instances)

Per scene, the aggregation route (segments + aggregation + tsv) is taken when its two files exist: it gives
NYU40 ids and instance ids (``objectId + 1``; 0 = no object), as the ScanNet benchmark's export does; raw
categories missing from the tsv become 0 (unannotated). Otherwise ``labels.ply`` gives the NYU40 ids and no
instance file is written. A scene with neither (a test scene) is skipped with a printed line.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np

from pointtune.data.errors import DatasetError
from pointtune.data.staged import PrepareItem, PrepareReport, note, run_items, save_npy
from pointtune.data.scenes import SCANNET_SPLIT_FILES

__all__ = ["LABEL_MAP_FILE", "read_label_map", "read_ply_vertices", "read_scannet_raw_scene", "prepare_scannet"]

#: The official raw-category -> NYU40 table of the ScanNet release.
LABEL_MAP_FILE = "scannetv2-labels.combined.tsv"
_SCENE = re.compile(r"^scene\d{4}_\d{2}$")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def read_ply_vertices(path: Path, properties: tuple[str, ...]) -> np.ndarray:
    """``(N, len(properties))`` float64: the named vertex properties of a PLY file (ASCII or binary, read
    with ``plyfile``).

    Raises:
        DatasetError: a missing or unreadable file, no ``vertex`` element or no vertices, or a missing
            property (naming the file and the properties found).
    """
    try:
        from plyfile import PlyData
    except ImportError:
        raise DatasetError("data prepare scannet needs plyfile: pip install 'pointtune[data]'") from None
    if not path.is_file():
        raise DatasetError(f"{path}: missing file (expected a PLY mesh with vertex {' '.join(properties)})")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"].data
    except KeyError:
        raise DatasetError(f"{path}: PLY file without a 'vertex' element") from None
    except Exception as err:  # plyfile raises PlyParseError, ValueError, struct errors, EOFError ...
        raise DatasetError(f"{path}: cannot read PLY file ({_one_line(err)})") from None
    missing = [p for p in properties if p not in vertex.dtype.names]
    if missing:
        raise DatasetError(f"{path}: PLY vertex element lacks property {missing[0]!r} "
                           f"(has {', '.join(vertex.dtype.names)})")
    if len(vertex) == 0:
        raise DatasetError(f"{path}: PLY file with no vertices")
    return np.stack([np.asarray(vertex[p], dtype=np.float64) for p in properties], axis=1)


def read_label_map(path: Path) -> dict[str, int]:
    """``{raw_category: nyu40id}`` from ``scannetv2-labels.combined.tsv`` (tab-separated, a header row).

    Raises:
        DatasetError: a missing or unreadable file, no ``raw_category`` / ``nyu40id`` column, or an id that is
            not an integer in 0..40 (naming the line).
    """
    if not path.is_file():
        raise DatasetError(f"{path}: missing file (expected ScanNet's {LABEL_MAP_FILE}, raw category -> NYU40 id, "
                           "from the release or github.com/ScanNet/ScanNet Tasks/Benchmark)")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: cannot read the label table ({_one_line(err)})") from None
    if not rows or not {"raw_category", "nyu40id"} <= set(rows[0]):
        raise DatasetError(f"{path}: expected tab-separated columns raw_category and nyu40id")
    table = {}
    for number, row in enumerate(rows, start=2):
        value = (row["nyu40id"] or "").strip()
        if not value.isdigit() or int(value) > 40:
            raise DatasetError(f"{path}: line {number}: nyu40id {value[:20]!r} is not an integer in 0..40")
        table[row["raw_category"]] = int(value)
    return table


def _read_json(path: Path, key: str) -> object:
    """``json[key]`` of a file; DatasetError naming it when missing, unparsable or without ``key``."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)[key]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: cannot read JSON ({_one_line(err)})") from None
    except (KeyError, TypeError):
        raise DatasetError(f"{path}: JSON without the key {key!r}") from None


def _aggregation_labels(segs_path: Path, agg_path: Path, n: int,
                        label_map: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(nyu40, instance)`` ``(n,)`` uint32 per vertex from the over-segmentation and the aggregation."""
    seg_indices = np.asarray(_read_json(segs_path, "segIndices"))
    if seg_indices.shape != (n,) or not np.issubdtype(seg_indices.dtype, np.integer):
        raise DatasetError(f"{segs_path}: segIndices holds {seg_indices.shape} {seg_indices.dtype}, "
                           f"expected {n} integers (one per mesh vertex)")
    segments, vertex_segment = np.unique(seg_indices, return_inverse=True)
    seg_label = np.zeros(len(segments), dtype=np.uint32)
    seg_instance = np.zeros(len(segments), dtype=np.uint32)
    groups = _read_json(agg_path, "segGroups")
    for number, group in enumerate(groups if isinstance(groups, list) else [None]):
        try:
            label, object_id, members = str(group["label"]), int(group["objectId"]), np.asarray(group["segments"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{agg_path}: segGroups[{number}] lacks label, objectId or segments") from None
        at = np.searchsorted(segments, members)
        known = (at < len(segments)) & (segments[np.minimum(at, len(segments) - 1)] == members)
        seg_label[at[known]] = label_map.get(label, 0)
        seg_instance[at[known]] = object_id + 1
    return seg_label[vertex_segment], seg_instance[vertex_segment]


def read_scannet_raw_scene(scene_dir: Path, label_map_path: Path) -> dict[str, np.ndarray] | None:
    """One raw scene as ``{'vert': (N, 6) float32 x y z r g b, 'sem_label': (N,) uint32 NYU40 ids,
    'ins_label': (N,) uint32}`` (``ins_label`` only on the aggregation route; module docstring), or ``None``
    for a scene without annotations.

    Raises:
        DatasetError: an unreadable mesh, label PLY, JSON or label table, or files that disagree on the
            vertex count (naming the file).
    """
    scene = scene_dir.name
    mesh = scene_dir / f"{scene}_vh_clean_2.ply"
    segs = scene_dir / f"{scene}_vh_clean_2.0.010000.segs.json"
    agg = next((p for p in (scene_dir / f"{scene}.aggregation.json", scene_dir / f"{scene}_vh_clean.aggregation.json")
                if p.is_file()), None)
    labels_ply = scene_dir / f"{scene}_vh_clean_2.labels.ply"
    if not (segs.is_file() and agg is not None) and not labels_ply.is_file():
        return None
    vert = read_ply_vertices(mesh, ("x", "y", "z", "red", "green", "blue")).astype(np.float32)
    n = len(vert)
    if segs.is_file() and agg is not None:
        nyu40, instance = _aggregation_labels(segs, agg, n, read_label_map(label_map_path))
        return {"vert": vert, "sem_label": nyu40, "ins_label": instance}
    label = read_ply_vertices(labels_ply, ("label",))[:, 0]
    if len(label) != n:
        raise DatasetError(f"{labels_ply}: {len(label)} vertices, but {mesh.name} has {n}")
    bad = np.flatnonzero((label < 0) | (label > 40))
    if bad.size:
        raise DatasetError(f"{labels_ply}: vertex {bad[0]} has label {label[bad[0]]:g}, not a NYU40 id 0..40 (give "
                           "the scene its segs.json and aggregation.json to map raw categories instead)")
    return {"vert": vert, "sem_label": label.astype(np.uint32)}


def _scene_dirs(raw: Path) -> list[Path]:
    """The ``scene<NNNN>_<NN>`` directories of ``raw/scans/`` (when it exists) or of ``raw``, sorted."""
    base = raw / "scans" if (raw / "scans").is_dir() else raw
    return sorted(p for p in base.iterdir() if p.is_dir() and _SCENE.match(p.name))


def _labels_table(raw: Path) -> Path:
    """Where the label table is looked for: ``raw/`` first, then beside ``raw``."""
    return next((p for p in (raw / LABEL_MAP_FILE, raw.parent / LABEL_MAP_FILE) if p.is_file()), raw / LABEL_MAP_FILE)


def _write_scene(scene_dir: Path, out: Path, label_map_path: Path) -> bool:
    """Write one scene's arrays (the vertex file last: it marks the scene finished); False for a scene
    without annotations."""
    arrays = read_scannet_raw_scene(scene_dir, label_map_path)
    if arrays is None:
        note(f"{scene_dir}: no segs.json + aggregation.json and no _vh_clean_2.labels.ply (a test scene?), left out")
        return False
    for key in ("ins_label", "sem_label", "vert"):
        if key in arrays:
            save_npy(out / f"{scene_dir.name}_{key}.npy", arrays[key])
    return True


def prepare_scannet(raw: Path, out: Path, progress: bool = True) -> PrepareReport:
    """Write ``<scene>_vert.npy``, ``<scene>_sem_label.npy`` and (aggregation route) ``<scene>_ins_label.npy``
    for every scene under ``raw`` into ``out``, and copy the official split lists when ``raw`` has them.

    Raises:
        DatasetError: no scene directories under ``raw``, or any error of :func:`read_scannet_raw_scene`.
    """
    scenes = _scene_dirs(raw)
    if not scenes:
        raise DatasetError(f"{raw}: holds no scene<NNNN>_<NN> directories (expected ScanNet's scans/<scene>/)")
    table = _labels_table(raw)
    items = [PrepareItem(d.name, out / f"{d.name}_vert.npy", lambda d=d: _write_scene(d, out, table)) for d in scenes]
    counts = run_items(items, "scannet scenes", progress)
    for name in SCANNET_SPLIT_FILES.values():
        if (raw / name).is_file() and not (out / name).is_file():
            shutil.copyfile(raw / name, out / name)
    return PrepareReport("scannet", *counts, out, "scenes")
