"""Keras classes chosen in the config by name (a callback, a learning-rate schedule): the base
of their pydantic models and the union that tells them apart by ``name``.

Each model has the Keras class's own argument names and ranges, frozen, and refuses an unknown
key in one line that names the valid ones (pydantic's "extra inputs" error names none).
``study.callbacks`` and ``study.schedules`` declare the models; ``study.config`` checks the
name. No TensorFlow import here.
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Option(BaseModel):
    """A Keras class's arguments; subclasses add ``name: Literal[...]`` and the arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown {value.get('name')} key {unknown[0]!r}"
                                 f"{cls._unknown_hint(unknown)}; valid: "
                                 f"{', '.join(k for k in cls.model_fields if k != 'name')}")
        return value

    @classmethod
    def _unknown_hint(cls, unknown: list[str]) -> str:
        """A word more on unknown keys a user is likely to try (``" (why)"``, or nothing)."""
        return ""


def union(models: tuple[type[Option], ...]) -> Any:
    """One pydantic type for any of ``models``, told apart by ``name``."""
    return Annotated[functools.reduce(operator.or_, models), Field(discriminator="name")]
