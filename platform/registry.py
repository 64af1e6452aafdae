"""A name -> object registry filled by a decorator: the one mechanism behind the method, backbone, protocol
and dataset registries.

A registry imports nothing it registers (as Pointcept's registries): its entries register themselves when
their module is imported. A registry with a ``plugins`` group also finds modules declared as package entry
points of that group (``[project.entry-points."pointtune.methods"]`` in a ``pyproject.toml``): pointtune's own
methods are declared so, and a method in another installed package registers the same way. They are imported
the first time a name is missing or the names are listed.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one ``kind`` (``"method"``, ``"backbone"``, ``"dataset"``) by name.

    Args:
        kind: what is registered, for error messages.
        error: exception type raised for an unknown name (``KeyError`` by default).
        key: config key named in the unknown-name message (e.g. ``data.name``), if any.
        plugins: an entry-point group whose modules register entries (e.g. ``pointtune.methods``), or ``None``.
    """

    def __init__(self, kind: str, error: type[Exception] = KeyError, key: str | None = None,
                 plugins: str | None = None):
        self.kind = kind
        self.error = error
        self.key = key
        self.plugins = plugins
        self._items: dict[str, T] = {}
        self._loaded: set[str] = set()  # entry points already imported

    def _discover(self) -> None:
        """Import every module of the ``plugins`` entry-point group not imported yet.

        Raises:
            ImportError: a declared module cannot be imported; one line naming the entry point and the cause.
        """
        if self.plugins is None:
            return
        for entry in metadata.entry_points(group=self.plugins):
            if entry.value in self._loaded:
                continue
            self._loaded.add(entry.value)
            try:
                entry.load()
            except Exception as err:  # noqa: BLE001 - any failure of a plugin's import is reported in one line
                raise ImportError(f"{self.kind} plugin {entry.name} = {entry.value} (entry point group "
                                  f"{self.plugins}) cannot be imported: {type(err).__name__}: {err}") from err

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
        """Registered names, sorted (the ``plugins`` group's modules imported first)."""
        self._discover()
        return sorted(self._items)

    def get(self, name: str) -> T:
        """The object registered as ``name``.

        Raises:
            ``self.error``: unknown name; the one-line message lists the known names.
        """
        if name not in self._items:
            self._discover()
        if name not in self._items:
            where = f"{self.key}: " if self.key else ""
            raise self.error(f"{where}unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(self.names())}")
        return self._items[name]
