"""The platform's error types that every layer raises: a base module that imports nothing of pointtune, so that
low-level packages (the protocols) can raise them without importing the config machinery."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message is one line naming the key at fault."""
