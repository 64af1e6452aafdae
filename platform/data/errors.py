"""The one exception type of :mod:`pointtune.data`."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset cannot be found, read or used as configured.

    The message is a single line that names the path (or config key) at fault and what was expected, e.g.
    ``"/x/ply_data_train0.h5: missing HDF5 key 'label' (expected keys data, label)"``. The CLI prints it as
    is and exits with status 2.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
