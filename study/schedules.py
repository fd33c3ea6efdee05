"""Learning-rate schedules: Keras' own schedule classes, from ``optimizer.schedule``.

``schedule: {name: cosine_decay, decay_steps: 1000, warmup_target: 0.1, warmup_steps: 50}``
takes the Keras class's own keyword arguments, except ``initial_learning_rate``: that is the
arm's ``lr``, so the study's rate grid still sweeps it. Piecewise-constant decay has no
initial rate in Keras; here its ``factors`` multiply the arm's rate (Keras' ``values`` are
the arm's rate times them), so it too sweeps with the grid.

Each arm has its own schedule. The batched trainer builds the Keras schedule once for all the
slots of a group, with the slots' rates as a tensor where Keras takes the initial rate (and
warmup_target broadcast to its shape): every slot's rate is then Keras' arithmetic on its
own numbers, and whatever Keras computes from the step alone (a cosine, a power) is one
scalar shared by every slot, so no op mixes arms. The reference trainer builds it per arm
with the arm's rate as a float.

Each model is one pydantic model with the Keras arguments' names and ranges
(``study.options``); ``Schedule`` is their union, told apart by ``name``. No TensorFlow import
here: a bad config must fail before it starts.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, Strict, model_validator

from study.options import Option, union

Steps = Annotated[int, Strict(), Field(gt=0)]
NonNegativeSteps = Annotated[int, Strict(), Field(ge=0)]
Positive = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]


class _Schedule(Option):
    keras_class: ClassVar[str] = ""  # the class in keras.optimizers.schedules

    @classmethod
    def _unknown_hint(cls, unknown: list[str]) -> str:
        return " (the arm's lr is the initial rate)" if "initial_learning_rate" in unknown else ""

    def arguments(self, rate) -> dict[str, Any]:
        """The Keras class's keyword arguments for an arm at ``rate`` (a float, or a tensor
        of the slots' rates)."""
        return {"initial_learning_rate": rate, **self.model_dump(exclude={"name"})}

    def make(self, rate):
        """The Keras schedule of an arm at ``rate``; for a tensor of rates, zero where a
        rate is zero (a frozen arm or a spare slot stays still whatever the schedule)."""
        import keras

        schedule = getattr(keras.optimizers.schedules, self.keras_class)(
            **self.arguments(rate))
        if isinstance(rate, float | int):
            return schedule
        return lambda step: keras.ops.where(rate > 0, schedule(step), 0.0)

    @property
    def label(self) -> str:
        """How an optimizer's key names it: cosine_decay(decay_steps=1000)."""
        values = self.model_dump(exclude={"name"}, exclude_defaults=True)
        text = ",".join(f"{k}={_short(v)}" for k, v in values.items())
        return f"{self.name}({text})"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return "[" + ",".join(map(_short, value)) + "]"
    return str(value)


class CosineDecay(_Schedule):
    keras_class: ClassVar[str] = "CosineDecay"
    name: Literal["cosine_decay"]
    decay_steps: Steps
    alpha: Fraction = 0.0
    # a linear warmup from the arm's lr to warmup_target over warmup_steps, then the decay
    # from warmup_target
    warmup_target: Positive | None = None
    warmup_steps: NonNegativeSteps = 0

    @model_validator(mode="after")
    def _warmup_has_a_target(self) -> CosineDecay:
        if self.warmup_steps and self.warmup_target is None:
            raise ValueError("warmup_steps needs warmup_target, the rate the warmup climbs to")
        return self

    def arguments(self, rate) -> dict[str, Any]:
        arguments = super().arguments(rate)
        if self.warmup_target is not None and not isinstance(rate, float | int):
            import keras

            # Keras picks the warmup or the decay with a cond whose branches must have one
            # shape: the target as a tensor shaped like the rates.
            arguments["warmup_target"] = keras.ops.full_like(rate, self.warmup_target)
        return arguments


class CosineDecayRestarts(_Schedule):
    keras_class: ClassVar[str] = "CosineDecayRestarts"
    name: Literal["cosine_decay_restarts"]
    first_decay_steps: Steps
    t_mul: Positive = 2.0
    m_mul: NonNegative = 1.0
    alpha: Fraction = 0.0


class ExponentialDecay(_Schedule):
    keras_class: ClassVar[str] = "ExponentialDecay"
    name: Literal["exponential_decay"]
    decay_steps: Steps
    decay_rate: Positive
    staircase: Annotated[bool, Strict()] = False


class InverseTimeDecay(_Schedule):
    keras_class: ClassVar[str] = "InverseTimeDecay"
    name: Literal["inverse_time_decay"]
    decay_steps: Steps
    decay_rate: NonNegative
    staircase: Annotated[bool, Strict()] = False


class PolynomialDecay(_Schedule):
    keras_class: ClassVar[str] = "PolynomialDecay"
    name: Literal["polynomial_decay"]
    decay_steps: Steps
    end_learning_rate: NonNegative = 0.0001
    power: Positive = 1.0
    cycle: Annotated[bool, Strict()] = False


class PiecewiseConstantDecay(_Schedule):
    keras_class: ClassVar[str] = "PiecewiseConstantDecay"
    name: Literal["piecewise_constant_decay"]
    boundaries: tuple[Steps, ...]
    factors: tuple[Positive, ...]  # the arm's lr times these, one more than boundaries

    @model_validator(mode="after")
    def _one_more_factor(self) -> PiecewiseConstantDecay:
        if not self.boundaries or list(self.boundaries) != sorted(set(self.boundaries)):
            raise ValueError(f"boundaries must be steps in increasing order, got "
                             f"{list(self.boundaries)}")
        if len(self.factors) != len(self.boundaries) + 1:
            raise ValueError(f"factors needs one more entry than boundaries "
                             f"({len(self.boundaries) + 1}), got {len(self.factors)}")
        return self

    def arguments(self, rate) -> dict[str, Any]:
        import numpy as np

        if isinstance(rate, float | int):  # as float32 multiplies them in the batched one
            values = [float(np.float32(rate) * np.float32(f)) for f in self.factors]
            return {"boundaries": list(self.boundaries), "values": values}
        return {"boundaries": list(self.boundaries), "values": list(self.factors)}

    def make(self, rate):
        if isinstance(rate, float | int):
            return super().make(rate)
        factor = super().make(1.0)  # the factor the step selects, times each slot's rate
        return lambda step: rate * factor(step)


SCHEDULES = (CosineDecay, CosineDecayRestarts, ExponentialDecay, InverseTimeDecay,
             PolynomialDecay, PiecewiseConstantDecay)
Schedule = union(SCHEDULES)
