"""The dataset registry: name -> loader. Two kinds share one namespace (``data.name``):

* point-cloud datasets (:func:`register_dataset`): the loader returns the official ``(train, test)``
  :class:`~pointtune.data.pointcloud.PointCloudSet` splits;
* scene datasets (:func:`register_scene_dataset`: ``s3dis``, ``scannet``): the loader returns
  ``(train, val, test)`` :class:`~pointtune.data.scenes.SceneSet` splits, and the registration carries the
  dataset's defaults for the null scene knobs of :class:`~pointtune.data.config.DataConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Union

from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet
from pointtune.registry import Registry

if TYPE_CHECKING:
    from pointtune.data.config import DataConfig
    from pointtune.data.scenes import SceneSet

__all__ = ["DatasetLoader", "SceneLoader", "SCENE_DEFAULT_KEYS", "register_dataset", "register_scene_dataset",
           "dataset_names", "scene_dataset_names", "is_scene_dataset", "scene_defaults", "get_dataset_loader"]

CloudLoader = Callable[["DataConfig"], tuple[PointCloudSet, PointCloudSet]]
SceneLoader = Callable[["DataConfig"], tuple["SceneSet", "SceneSet", "SceneSet"]]
DatasetLoader = Union[CloudLoader, SceneLoader]
_LOADERS: Registry[DatasetLoader] = Registry("dataset", DatasetError, key="data.name")
_SCENE_DEFAULTS: dict[str, dict[str, Any]] = {}

#: What a scene dataset's ``defaults`` must give: the values of the null scene knobs of ``DataConfig``
#: (``num_points``: the crop size; ``voxel_size``: metres; ``loop``; ``scale_low``, ``scale_high``, ``mirror``
#: (3 probabilities), ``jitter_sigma`` (metres): ``data.scene_augment``; ``color_norm``: the preset ``auto``
#: means) and ``reads``: which of ``DataConfig``'s S3DIS-style knobs (``test_area``, ``val_area``, ``layout``)
#: the loader reads (the others must stay at their defaults).
SCENE_DEFAULT_KEYS = ("num_points", "voxel_size", "loop", "scale_low", "scale_high", "mirror", "jitter_sigma",
                      "color_norm", "reads")


def register_dataset(name: str) -> Callable[[CloudLoader], CloudLoader]:
    """Decorator: register ``loader(cfg: DataConfig) -> (train, test)`` under ``name`` (``data.name``).

    The loader returns the dataset's official train and test splits as full-size
    :class:`~pointtune.data.pointcloud.PointCloudSet` objects (all classes, every point it read, normals if
    the data has them); :func:`pointtune.data.build_datasets` does class filtering, the validation split,
    sampling and transforms. It raises :class:`~pointtune.data.errors.DatasetError` for unusable data.

    Raises:
        ValueError: ``name`` already registered.
    """
    return _LOADERS.register(name)


def register_scene_dataset(name: str, defaults: Mapping[str, Any]) -> Callable[[SceneLoader], SceneLoader]:
    """Decorator: register ``loader(cfg: DataConfig) -> (train, val, test)`` under ``name`` as a scene dataset.

    The loader returns :class:`~pointtune.data.scenes.SceneSet` splits (``test`` may be empty; validation never
    overlaps test) and raises :class:`~pointtune.data.errors.DatasetError` for unusable data or settings;
    :func:`pointtune.data.build_datasets` wraps them in :class:`~pointtune.data.scene_dataset.SceneDataset`
    objects (no on-disk cache).

    Args:
        name: the ``data.name``.
        defaults: exactly the keys of :data:`SCENE_DEFAULT_KEYS`.

    Raises:
        ValueError: ``name`` already registered (as either kind), or ``defaults`` with missing or extra keys.
    """
    keys = set(defaults)
    if keys != set(SCENE_DEFAULT_KEYS):
        raise ValueError(f"scene dataset {name!r}: defaults need exactly {', '.join(SCENE_DEFAULT_KEYS)}; missing "
                         f"{sorted(set(SCENE_DEFAULT_KEYS) - keys)}, extra {sorted(keys - set(SCENE_DEFAULT_KEYS))}")
    register = _LOADERS.register(name)

    def wrap(loader: SceneLoader) -> SceneLoader:
        register(loader)
        _SCENE_DEFAULTS[name] = {**defaults, "mirror": list(defaults["mirror"]), "reads": tuple(defaults["reads"])}
        return loader

    return wrap


def dataset_names() -> list[str]:
    """Registered dataset names (both kinds), sorted."""
    return _LOADERS.names()


def scene_dataset_names() -> list[str]:
    """Registered scene dataset names, sorted."""
    return sorted(_SCENE_DEFAULTS)


def is_scene_dataset(name: str) -> bool:
    """Whether ``name`` is registered as a scene dataset (``False`` for point-cloud and unknown names)."""
    return name in _SCENE_DEFAULTS


def scene_defaults(name: str) -> dict[str, Any] | None:
    """A copy of the defaults scene dataset ``name`` was registered with (:data:`SCENE_DEFAULT_KEYS`), or
    ``None`` when ``name`` is not a scene dataset."""
    found = _SCENE_DEFAULTS.get(name)
    return None if found is None else {**found, "mirror": list(found["mirror"])}


def get_dataset_loader(name: str) -> DatasetLoader:
    """The loader registered as ``name`` (a scene loader when :func:`is_scene_dataset`).

    Raises:
        DatasetError: unknown name; the message lists the known names.
    """
    return _LOADERS.get(name)
