"""The dataset registry: name -> loader returning the official ``(train, test)`` splits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet

if TYPE_CHECKING:
    from pointtune.data.config import DataConfig

__all__ = ["DatasetLoader", "register_dataset", "dataset_names", "get_dataset_loader"]

DatasetLoader = Callable[["DataConfig"], tuple[PointCloudSet, PointCloudSet]]
_LOADERS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: register ``loader(cfg: DataConfig) -> (train, test)`` under ``name`` (``data.name``).

    The loader returns the dataset's official train and test splits as full-size
    :class:`~pointtune.data.pointcloud.PointCloudSet` objects (all classes, every point it read, normals if
    the data has them); :func:`pointtune.data.build_datasets` does class filtering, the validation split,
    sampling and transforms. It raises :class:`~pointtune.data.errors.DatasetError` for unusable data.

    Raises:
        ValueError: ``name`` already registered.
    """

    def wrap(loader: DatasetLoader) -> DatasetLoader:
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} is already registered")
        _LOADERS[name] = loader
        return loader

    return wrap


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_LOADERS)


def get_dataset_loader(name: str) -> DatasetLoader:
    """The loader registered as ``name``.

    Raises:
        DatasetError: unknown name; the message lists the known names.
    """
    if name not in _LOADERS:
        raise DatasetError(f"data.name: unknown dataset {name!r} (known datasets: {', '.join(dataset_names())})")
    return _LOADERS[name]
