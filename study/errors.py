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


class ChunkFailed(RuntimeError):
    """A chunk of arms failed for good on a cluster: the CLI prints one line and exits 1."""
