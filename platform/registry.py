"""A name -> object registry filled by a decorator: the one mechanism behind the method, backbone and
dataset registries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one ``kind`` (``"method"``, ``"backbone"``, ``"dataset"``) by name.

    Args:
        kind: what is registered, for error messages.
        error: exception type raised for an unknown name (``KeyError`` by default).
        key: config key named in the unknown-name message (e.g. ``data.name``), if any.
    """

    def __init__(self, kind: str, error: type[Exception] = KeyError, key: str | None = None):
        self.kind = kind
        self.error = error
        self.key = key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering its target under ``name``.

        Raises:
            ValueError: ``name`` is already registered.
        """

        def wrap(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return wrap

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            ``self.error``: unknown name; the one-line message lists the known names.
        """
        if name not in self._items:
            where = f"{self.key}: " if self.key else ""
            raise self.error(f"{where}unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
        return self._items[name]
