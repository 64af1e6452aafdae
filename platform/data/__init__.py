"""``pointtune.data``: readers, splits, transforms, the synthetic dataset and the torch datasets.

Public API::

    DatasetError                                  every data failure, one line naming the path or key
    PointCloudSet(points, labels, class_names, normals=None, seg=None)  in-memory (M, N, 3) clouds
    read_modelnet40_h5(root, split)               modelnet40_ply_hdf5_2048 layout
    read_modelnet40_resampled(root, split, num_points=None)           modelnet40_normal_resampled layout
    MODELNET10_CLASSES                            the ModelNet10 classes (dataset modelnet10)
    read_shapenetpart_txt(root, split, num_points=None)  shapenetcore_partanno_segmentation_benchmark_v0_normal
    read_shapenetpart_h5(root, split)             ShapeNetPart HDF5 layout (data, label, pid)
    SHAPENETPART_CLASSES, SHAPENETPART_SEG_CLASSES   the 16 categories and their global part ids 0..49
    read_scanobjectnn(root, variant, split)       ScanObjectNN h5_files (OBJ_BG, OBJ_ONLY, PB_T50_RS)
    make_synthetic(num_classes, per_class, num_points, seed, split)  the built-in synthetic shapes
    filter_classes(ds, classes), train_val_split(ds, val_fraction, seed)
    transforms: Compose, NormalizeUnitSphere, RandomScale, RandomTranslate, Jitter, RotateUp, Shuffle,
                Subsample, fps_subsample_set
    DataConfig, AugmentConfig, SceneAugmentConfig the data.* config section
    register_dataset(name), dataset_names()       the dataset registry
    register_scene_dataset(name, defaults), scene_dataset_names(), is_scene_dataset(name), scene_defaults(name)
    PointCloudDataset(pcs, transform, train, seed), DatasetBundle, build_datasets(cfg), build_transform
    build_scene_transform(cfg, train), describe_split(dataset)

Scenes (``s3dis``, ``scannet``): readers and splits in :mod:`pointtune.data.scenes` (``SceneSet``,
``IGNORE_INDEX`` = -1), dict-sample transforms in :mod:`pointtune.data.scene_transforms`, fixed-size items in
:mod:`pointtune.data.scene_dataset` (``SceneDataset``, ``collate_scenes``); ``build_datasets`` returns them
as a ``DatasetBundle`` with ``kind="scenes"``; Pointcept's preprocessed scenes are read as they are.

Getting the full datasets (the ``pointtune data`` command, :mod:`pointtune.data.command`): raw releases to these
layouts in :mod:`pointtune.data.prepare`, downloads in :mod:`pointtune.data.download`, a report of a dataset
directory in :mod:`pointtune.data.inspection`.
"""

from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet
from pointtune.data.modelnet import read_modelnet40_h5, read_modelnet40_resampled
from pointtune.data.scanobjectnn import SCANOBJECTNN_CLASSES, read_scanobjectnn
from pointtune.data.shapenetpart import (
    SHAPENETPART_CLASSES,
    SHAPENETPART_SEG_CLASSES,
    read_shapenetpart_h5,
    read_shapenetpart_txt,
)
from pointtune.data.synthetic import SYNTHETIC_CLASSES, make_synthetic
from pointtune.data.splits import filter_classes, train_val_split
from pointtune.data.transforms import (
    Compose,
    Jitter,
    NormalizeUnitSphere,
    RandomScale,
    RandomTranslate,
    RotateUp,
    Shuffle,
    Subsample,
    fps_subsample_set,
)
from pointtune.data.config import AugmentConfig, DataConfig, SceneAugmentConfig
from pointtune.data.registry import (
    dataset_names,
    get_dataset_loader,
    is_scene_dataset,
    register_dataset,
    register_scene_dataset,
    scene_dataset_names,
    scene_defaults,
)
from pointtune.data.dataset import PointCloudDataset
from pointtune.data.scenes import IGNORE_INDEX, SceneSet
from pointtune.data.scene_dataset import SceneDataset, collate_scenes
from pointtune.data import sources as _sources  # noqa: F401  (registers the built-in datasets)
from pointtune.data.sources import MODELNET10_CLASSES
from pointtune.data.build import (
    DatasetBundle,
    SplitSummary,
    build_datasets,
    build_scene_transform,
    build_transform,
    describe_split,
)

__all__ = [
    "DatasetError",
    "PointCloudSet",
    "read_modelnet40_h5",
    "read_modelnet40_resampled",
    "read_scanobjectnn",
    "SCANOBJECTNN_CLASSES",
    "MODELNET10_CLASSES",
    "read_shapenetpart_txt",
    "read_shapenetpart_h5",
    "SHAPENETPART_CLASSES",
    "SHAPENETPART_SEG_CLASSES",
    "make_synthetic",
    "SYNTHETIC_CLASSES",
    "filter_classes",
    "train_val_split",
    "Compose",
    "NormalizeUnitSphere",
    "RandomScale",
    "RandomTranslate",
    "Jitter",
    "RotateUp",
    "Shuffle",
    "Subsample",
    "fps_subsample_set",
    "AugmentConfig",
    "DataConfig",
    "SceneAugmentConfig",
    "register_dataset",
    "register_scene_dataset",
    "dataset_names",
    "scene_dataset_names",
    "is_scene_dataset",
    "scene_defaults",
    "get_dataset_loader",
    "PointCloudDataset",
    "IGNORE_INDEX",
    "SceneSet",
    "SceneDataset",
    "collate_scenes",
    "DatasetBundle",
    "SplitSummary",
    "build_datasets",
    "build_scene_transform",
    "build_transform",
    "describe_split",
]
