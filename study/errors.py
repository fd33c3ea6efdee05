"""The one error type users see for bad input, and the helper that names valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad config or input: the CLI prints the message as one line and exits 2."""


def quote(value: object, limit: int = 80, quoted: bool = True) -> str:
    """``repr(value)`` (or ``str`` if not ``quoted``) cut to ``limit`` characters: an error
    message quotes the user's input, not a megabyte of it."""
    try:
        text = repr(value) if quoted else str(value)
    except ValueError:  # an int of more than 4,300 digits has no repr
        text = f"<a number of {value.bit_length():,} bits>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_name(kind: str, name: str, valid: Iterable[str]) -> str:
    valid = list(valid)
    if name not in valid:
        raise ConfigError(f"unknown {kind} {quote(name)}; valid: {', '.join(valid)}")
    return name


class ChunkFailed(RuntimeError):
    """A chunk of arms failed for good on a cluster: the CLI prints one line and exits 1."""


class StoreUnreachable(RuntimeError):
    """The MLflow tracking server stopped answering mid-study and did not come back within the
    study's store timeout. The CLI prints one line (what is stored, what a rerun will train)
    and exits 3; the arms it trained but could not write are retrained by the rerun."""

    def __init__(self, uri: str, seconds: float, reason: str):
        super().__init__(f"the MLflow tracking server at {uri} has not answered for "
                         f"{seconds:g} s ({reason})")
        self.uri, self.seconds, self.reason = uri, seconds, reason
        self.arms_stored: int | None = None  # filled in by run_study, which knows the study
        self.arms_total: int | None = None
