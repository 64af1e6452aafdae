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


def check_non_negative_int(owner: str, name: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is an int ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{owner}: {name} must be a non-negative int, got {value!r}")


def check_features(name: str, xyz: Tensor, features: Tensor | None, in_features: int) -> None:
    """Raise ``ValueError`` unless ``features`` fits a backbone built with ``in_features`` extra channels:
    ``None`` when ``in_features == 0``, else a floating ``(B, N, in_features)`` tensor matching ``xyz``
    ``(B, N, 3)``."""
    if in_features == 0:
        if features is not None:
            raise ValueError(
                f"{name}: got per-point features but the backbone was built with in_features=0 "
                f"(set in_features to their channel count)"
            )
        return
    if features is None:
        raise ValueError(f"{name}: built with in_features={in_features} but called without features")
    if (
        not isinstance(features, Tensor)
        or not features.is_floating_point()
        or tuple(features.shape) != (*xyz.shape[:2], in_features)
    ):
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(
            f"{name}: expected floating point features of shape (B, N, in_features) = "
            f"{(*xyz.shape[:2], in_features)}, got {got}"
        )
