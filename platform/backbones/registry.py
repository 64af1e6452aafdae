"""Backbone registry: build an encoder by name with keyword arguments from a config.

Every registered backbone is an ``nn.Module`` with ``forward(xyz: (B, N, 3), features=None) -> (B, out_dim)``
and an int attribute ``out_dim``; the built-in ones are :class:`~pointtune.backbones.base.Backbone` subclasses,
which add ``forward_features`` (per-point and global features), ``point_dim`` and ``in_features``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from pointtune.registry import Registry

__all__ = ["register_backbone", "build_backbone", "backbone_names", "backbone_factory"]

_BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")

#: Class decorator that makes a backbone buildable as ``build_backbone(name, **kwargs)``.
register_backbone = _BACKBONES.register
#: Names of every registered backbone, sorted.
backbone_names = _BACKBONES.names
#: The class (or factory) registered as a name; ``KeyError`` listing the known names for an unknown one.
backbone_factory = _BACKBONES.get


def build_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Construct the backbone registered as ``name`` with constructor keyword arguments ``kwargs``.

    Raises:
        KeyError: unknown ``name``; the message lists the known ones.
        TypeError: an argument the backbone does not accept; the message names the backbone and argument.
        ValueError: an accepted argument with an invalid value (raised by the backbone's constructor).
    """
    factory = _BACKBONES.get(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [
            p_name
            for p_name, p in params.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"backbone {name!r} got unexpected argument(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(accepted)}"
            )
    return factory(**kwargs)
