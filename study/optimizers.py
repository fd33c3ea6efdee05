"""Optimizer registry: the stock Keras optimizers a study may use, and the options each takes.

The batched trainer applies one Keras optimizer to the stacked weights of K arms. That is K
independent optimizers only if the update is elementwise: options that look across a whole
variable (norm clipping, loss scaling) would mix arms, so they are refused here, when the
config is read. Each arm's learning rate is its own (a [K] tensor the optimizer broadcasts).
No TensorFlow import here: a bad config must fail before it starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.errors import ConfigError

# Options every elementwise Keras optimizer takes.
COMMON = frozenset({"weight_decay", "clipvalue"})

# What each option may be: a flag, or a number in [low, high) (high None: no upper end).
RANGES: dict[str, tuple[float, float | None] | type] = {
    "momentum": (0.0, 1.0), "beta_1": (0.0, 1.0), "beta_2": (0.0, 1.0), "rho": (0.0, 1.0),
    "epsilon": (1e-300, None), "weight_decay": (0.0, None), "clipvalue": (1e-300, None),
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
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < low or (high is not None and value >= high):
        where = f"in [{low:g}, {high:g})" if high is not None else \
            ("> 0" if low > 0 else ">= 0")
        raise ConfigError(f"{optimizer} option {key!r} must be a number {where}, got {value!r}")


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
