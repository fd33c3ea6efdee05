"""The one error type users see for bad input, and the helper that names valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad config or input: the CLI prints the message as one line and exits 2."""


def check_name(kind: str, name: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    if name not in valid:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
    return name
