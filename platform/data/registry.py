"""The dataset registry: name -> loader returning the official ``(train, test)`` splits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pointtune.data.errors import DatasetError
from pointtune.data.pointcloud import PointCloudSet
from pointtune.registry import Registry

if TYPE_CHECKING:
    from pointtune.data.config import DataConfig

__all__ = ["DatasetLoader", "register_dataset", "dataset_names", "get_dataset_loader"]

DatasetLoader = Callable[["DataConfig"], tuple[PointCloudSet, PointCloudSet]]
_LOADERS: Registry[DatasetLoader] = Registry("dataset", DatasetError, key="data.name")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator: register ``loader(cfg: DataConfig) -> (train, test)`` under ``name`` (``data.name``).

    The loader returns the dataset's official train and test splits as full-size
    :class:`~pointtune.data.pointcloud.PointCloudSet` objects (all classes, every point it read, normals if
    the data has them); :func:`pointtune.data.build_datasets` does class filtering, the validation split,
    sampling and transforms. It raises :class:`~pointtune.data.errors.DatasetError` for unusable data.

    Raises:
        ValueError: ``name`` already registered.
    """
    return _LOADERS.register(name)


def dataset_names() -> list[str]:
    """Registered dataset names, sorted."""
    return _LOADERS.names()


def get_dataset_loader(name: str) -> DatasetLoader:
    """The loader registered as ``name``.

    Raises:
        DatasetError: unknown name; the message lists the known names.
    """
    return _LOADERS.get(name)
