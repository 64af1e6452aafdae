"""Small helpers shared by the backbones."""

from __future__ import annotations

from torch import Tensor


def check_xyz(name: str, xyz: Tensor) -> None:
    """Raise ``ValueError`` unless ``xyz`` is a floating ``(B, N, 3)`` tensor (the backbone input)."""
    if not isinstance(xyz, Tensor) or xyz.dim() != 3 or xyz.shape[-1] != 3 or not xyz.is_floating_point():
        got = tuple(xyz.shape) if isinstance(xyz, Tensor) else type(xyz).__name__
        raise ValueError(f"{name}: expected floating point coordinates of shape (B, N, 3), got {got}")


def check_positive_int(owner: str, name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
