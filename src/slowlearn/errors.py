"""The errors a person sees as one line, not a traceback."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that is not allowed: one line naming the key, the value and the choices."""
