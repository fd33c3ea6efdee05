"""Optimizer registry: the stock Keras optimizers a study may use, and the options each takes.

The batched trainer applies one Keras optimizer to the stacked weights of K arms. That is K
independent optimizers only if the update is elementwise: options that look across a whole
variable (norm clipping, loss scaling) would mix arms, so they are refused here, when the
config is read. Each arm's learning rate is its own (a [K] tensor the optimizer broadcasts).
The trainers compute in float32, so rates and options are checked as float32 holds them:
1e300 is inf there, 1e-300 is 0 and 0.99999999999 is 1.
No TensorFlow import here: a bad config must fail before it starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from study.errors import ConfigError

# The positive float32 numbers: from the smallest subnormal to the largest finite.
FLOAT32_RANGE = (float(np.finfo(np.float32).smallest_subnormal),
                 float(np.finfo(np.float32).max))


def in_float32(value: float) -> float:
    """``value`` as the trainers hold it: rounded to float32 (inf past its range)."""
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def check_rate(value: float) -> float:
    """A learning rate must be finite and positive in float32, not only in Python."""
    single = in_float32(value)
    if not math.isfinite(single) or single <= 0:
        low, high = FLOAT32_RANGE
        raise ValueError(f"{value:g} is {single:g} in float32, the precision the trainers "
                         f"compute in: use a rate from {low:.2g} to {high:.3g}")
    return value

# Options every elementwise Keras optimizer takes.
COMMON = frozenset({"weight_decay", "clipvalue"})

# What each option may be: a flag, or a number in [low, high) once in float32 (high None: up
# to float32's largest; low the smallest float32 above 0: positive in float32).
POSITIVE = FLOAT32_RANGE[0]
RANGES: dict[str, tuple[float, float | None] | type] = {
    "momentum": (0.0, 1.0), "beta_1": (0.0, 1.0), "beta_2": (0.0, 1.0), "rho": (0.0, 1.0),
    "epsilon": (POSITIVE, None), "weight_decay": (0.0, None), "clipvalue": (POSITIVE, None),
    "initial_accumulator_value": (0.0, None),
    "nesterov": bool, "amsgrad": bool, "centered": bool,
}

# Options that would mix arms in the stacked variables, and why.
MIXING = {
    "clipnorm": "it clips by the norm of a whole variable, which holds every arm of a group",
    "global_clipnorm": "it clips by the norm of all variables, which hold every arm of a group",
    "loss_scale_factor": "it scales the summed loss of every arm of a group",
    "gradient_accumulation_steps": "the trainer steps every arm on every minibatch",
    "use_ema": "arms are evaluated on their trained weights, not a moving average",
}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    keras_class: str
    options: frozenset[str]  # Keras keyword arguments beyond the learning rate
    summary: str

    def check_options(self, options: dict) -> None:
        for key, value in options.items():
            if key in MIXING:
                raise ConfigError(f"{self.name} option {key!r} is not allowed in a batched "
                                  f"study: {MIXING[key]}")
            if key not in self.options | COMMON:
                raise ConfigError(f"unknown {self.name} option {key!r}; valid: "
                                  f"{', '.join(sorted(self.options | COMMON))}")
            _check_value(self.name, key, value)

    def make(self, learning_rate, options: dict):
        """A fresh Keras optimizer; ``learning_rate`` a float or a callable."""
        import keras

        return getattr(keras.optimizers, self.keras_class)(learning_rate=learning_rate,
                                                          **options)


def _check_value(optimizer: str, key: str, value) -> None:
    allowed = RANGES[key]
    if allowed is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{optimizer} option {key!r} must be true or false, got {value!r}")
        return
    low, high = allowed
    number = isinstance(value, int | float) and not isinstance(value, bool)
    single = in_float32(value) if number else math.nan
    if not math.isfinite(single) or single < low or (high is not None and single >= high):
        where = f"in [{low:g}, {high:g})" if high is not None else \
            ("> 0" if low > 0 else ">= 0")
        rounded = f" ({single:g} in float32)" if number and single != value else ""
        raise ConfigError(f"{optimizer} option {key!r} must be a number {where} in float32 "
                          f"(the trainers' precision), got {value!r}{rounded}")


OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in [
        OptimizerSpec("sgd", "SGD", frozenset({"momentum", "nesterov"}),
                      "stochastic gradient descent, with optional (Nesterov) momentum"),
        OptimizerSpec("adam", "Adam", frozenset({"beta_1", "beta_2", "epsilon", "amsgrad"}),
                      "Adam: per-parameter steps from running moments of the gradient"),
        OptimizerSpec("adamw", "AdamW", frozenset({"beta_1", "beta_2", "epsilon", "amsgrad"}),
                      "Adam with decoupled weight decay (weight_decay, default 0.004)"),
        OptimizerSpec("rmsprop", "RMSprop",
                      frozenset({"rho", "momentum", "epsilon", "centered"}),
                      "RMSprop: steps scaled by a running mean of squared gradients"),
        OptimizerSpec("adagrad", "Adagrad",
                      frozenset({"initial_accumulator_value", "epsilon"}),
                      "Adagrad: steps scaled by the sum of past squared gradients"),
    ]
}
