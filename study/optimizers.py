"""Optimizer registry: the stock Keras optimizers a study may use, and the options each takes.

The batched trainer applies one Keras optimizer to the stacked weights of K arms. That is K
independent optimizers only if the update is elementwise: options that look across a whole
variable (norm clipping, loss scaling) would mix arms, so they are refused here, when the
config is read. Each arm's learning rate is its own (a [K] tensor the optimizer broadcasts).
No TensorFlow import here: a bad config must fail before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from study.errors import ConfigError

# Options every elementwise Keras optimizer takes.
COMMON = frozenset({"weight_decay", "clipvalue"})

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
            if not isinstance(value, bool | int | float) or value is None:
                raise ConfigError(f"{self.name} option {key!r} must be a number or "
                                  f"true/false, got {value!r}")

    def make(self, learning_rate, options: dict):
        """A fresh Keras optimizer; ``learning_rate`` a float or a callable."""
        import keras

        return getattr(keras.optimizers, self.keras_class)(learning_rate=learning_rate,
                                                          **options)


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
