"""Optimizer registry: the stock Keras optimizers a study may use, and the options each takes.

The batched trainer applies one Keras optimizer to the stacked weights of K arms. That is K
independent optimizers only if the update is elementwise. Keras optimizers whose update looks
across a whole variable (Lamb's per-layer trust ratio, Adafactor's factored moments, Muon's
orthogonalized matrices) would mix arms: the batched trainer refuses them with the reason
(``OptimizerSpec.mixes``), the reference trainer (one Keras fit per arm) runs them;
options that would mix arms (``MIXING``) likewise. Norm clipping
(``clipnorm``, ``global_clipnorm``) looks across a variable too: the batched trainer computes
it per arm itself (``PER_ARM``), the reference trainer leaves it to Keras. Each arm's
learning rate is its own (a [K] tensor the optimizer broadcasts).
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
COMMON = frozenset({"weight_decay", "clipvalue", "clipnorm", "global_clipnorm"})
# Options the batched trainer applies itself, arm by arm (the norm over all axes but the
# arm axis), instead of passing them to Keras, whose norm would span every arm of a group.
PER_ARM = frozenset({"clipnorm", "global_clipnorm"})
# Keras allows one kind of clipping at a time.
CLIPPING = ("clipnorm", "clipvalue", "global_clipnorm")

# What each option may be: a flag, or a number in [low, high) once in float32 (high None: up
# to float32's largest; low the smallest float32 above 0: positive in float32).
POSITIVE = FLOAT32_RANGE[0]
RANGES: dict[str, tuple[float, float | None] | type] = {
    "momentum": (0.0, 1.0), "beta_1": (0.0, 1.0), "beta_2": (0.0, 1.0), "rho": (0.0, 1.0),
    "epsilon": (POSITIVE, None), "weight_decay": (0.0, None), "clipvalue": (POSITIVE, None),
    "clipnorm": (POSITIVE, None), "global_clipnorm": (POSITIVE, None),
    "initial_accumulator_value": (0.0, None),
    # ftrl
    "l1_regularization_strength": (0.0, None), "l2_regularization_strength": (0.0, None),
    "l2_shrinkage_regularization_strength": (0.0, None), "beta": (0.0, None),
    "learning_rate_power": (-FLOAT32_RANGE[1], POSITIVE),  # <= 0
    # muon
    "adam_beta_1": (0.0, 1.0), "adam_beta_2": (0.0, 1.0), "adam_weight_decay": (0.0, None),
    "adam_lr_ratio": (POSITIVE, None), "rms_rate": (POSITIVE, None),
    # adafactor
    "beta_2_decay": (-FLOAT32_RANGE[1], POSITIVE), "epsilon_1": (POSITIVE, None),
    "epsilon_2": (POSITIVE, None), "clip_threshold": (POSITIVE, None), "relative_step": bool,
    "nesterov": bool, "amsgrad": bool, "centered": bool,
    # the reference trainer's only (``MIXING``)
    "loss_scale_factor": (POSITIVE, None), "use_ema": bool, "ema_momentum": (0.0, 1.0),
    "gradient_accumulation_steps": int,
}

# Options that would mix arms in the stacked variables, and why.
MIXING = {
    "loss_scale_factor": "it scales the summed loss of every arm of a group",
    "gradient_accumulation_steps": "the trainer steps every arm on every minibatch",
    "use_ema": "arms are evaluated on their trained weights, not a moving average",
    "ema_momentum": "arms are evaluated on their trained weights, not a moving average",
}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    keras_class: str
    options: frozenset[str]  # Keras keyword arguments beyond the learning rate
    summary: str
    ranges: tuple[tuple[str, tuple[float, float | None]], ...] = ()  # beside RANGES'
    mixes: str | None = None  # why its update would mix the arms of a batched group

    def check_options(self, options: dict) -> None:
        for key, value in options.items():
            if key not in self.options | COMMON | MIXING.keys():
                raise ConfigError(f"unknown {self.name} option {key!r}; valid: "
                                  f"{', '.join(sorted(self.options | COMMON | MIXING.keys()))}")
            _check_value(self.name, key, value, dict(self.ranges).get(key, RANGES[key]))
        clipping = [key for key in CLIPPING if key in options]
        if len(clipping) > 1:
            raise ConfigError(f"{self.name} options {' and '.join(map(repr, clipping))}: Keras "
                              "takes one of clipnorm, clipvalue and global_clipnorm")

    def check_available(self) -> None:
        """Muon and its kin are recent Keras classes; an older Keras has no such optimizer."""
        import keras

        if not hasattr(keras.optimizers, self.keras_class):
            raise ConfigError(f"optimizer: {self.name} is keras.optimizers.{self.keras_class}, "
                              f"which Keras {keras.__version__} does not have; upgrade Keras "
                              "(pip install -U keras)")

    def make(self, learning_rate, options: dict):
        """A fresh Keras optimizer; ``learning_rate`` a float, a callable or a Keras
        schedule."""
        import keras

        return getattr(keras.optimizers, self.keras_class)(learning_rate=learning_rate,
                                                          **options)


def _check_value(optimizer: str, key: str, value, allowed) -> None:
    if allowed is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{optimizer} option {key!r} must be true or false, got {value!r}")
        return
    if allowed is int:  # Keras' gradient accumulation: every n-th minibatch steps
        if not isinstance(value, int) or isinstance(value, bool) or value < 2:
            raise ConfigError(f"{optimizer} option {key!r} must be an integer >= 2, got "
                              f"{value!r}")
        return
    low, high = allowed
    number = isinstance(value, int | float) and not isinstance(value, bool)
    single = in_float32(value) if number else math.nan
    if not math.isfinite(single) or single < low or (high is not None and single >= high):
        where = (("<= 0" if high == POSITIVE else
                  f"in {'(0' if low == POSITIVE else f'[{low:g}'}, {high:g})")
                 if high is not None else ("> 0" if low > 0 else ">= 0"))
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
        OptimizerSpec("adamax", "Adamax", frozenset({"beta_1", "beta_2", "epsilon"}),
                      "Adamax: Adam with the infinity norm of past gradients"),
        OptimizerSpec("nadam", "Nadam", frozenset({"beta_1", "beta_2", "epsilon"}),
                      "Nadam: Adam with Nesterov momentum"),
        OptimizerSpec("adadelta", "Adadelta", frozenset({"rho", "epsilon"}),
                      "Adadelta: steps scaled by running means of squared gradients and "
                      "updates"),
        OptimizerSpec("ftrl", "Ftrl",
                      frozenset({"learning_rate_power", "initial_accumulator_value",
                                 "l1_regularization_strength", "l2_regularization_strength",
                                 "l2_shrinkage_regularization_strength", "beta"}),
                      "FTRL-proximal: follow the regularized leader"),
        # Keras' Lion takes beta_1 in (0, 1]: at 0 it is signSGD
        OptimizerSpec("lion", "Lion", frozenset({"beta_1", "beta_2"}),
                      "Lion: steps of the sign of an interpolated momentum",
                      ranges=(("beta_1", (POSITIVE, 1.0)),)),
        # Their update mixes a variable's elements, so on stacked variables it would mix the
        # arms of a group: the reference trainer (one Keras fit per arm) runs them.
        OptimizerSpec("lamb", "Lamb", frozenset({"beta_1", "beta_2", "epsilon"}),
                      "Lamb: Adam steps scaled per layer by a trust ratio",
                      mixes="its trust ratio is the norm of a whole variable, which holds "
                            "every arm of a group"),
        OptimizerSpec("adafactor", "Adafactor",
                      frozenset({"beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold",
                                 "relative_step"}),
                      "Adafactor: factored second moments",
                      mixes="its factored second moments are row and column means of a whole "
                            "variable, which holds every arm of a group"),
        OptimizerSpec("muon", "Muon",
                      frozenset({"momentum", "nesterov", "adam_beta_1", "adam_beta_2",
                                 "adam_weight_decay", "adam_lr_ratio", "epsilon", "rms_rate"}),
                      "Muon: momentum steps orthogonalized matrix by matrix (Adam on the rest)",
                      mixes="it orthogonalizes each 2-D kernel as a whole matrix, and a stacked "
                            "kernel holds every arm of a group"),
    ]
}

def batched_refusal(name: str, options: dict) -> str | None:
    """Why the batched trainer cannot run optimizer ``name`` with ``options``, or None if it
    can (the reference trainer, one Keras fit per arm, runs whatever Keras runs)."""
    reason = OPTIMIZERS[name].mixes
    if reason is not None:
        return f"the batched trainer cannot run {name}: {reason}; use trainer: reference"
    for key in options.keys() & MIXING.keys():
        return (f"{name} option {key!r}: the batched trainer cannot use it ({MIXING[key]}); "
                "use trainer: reference")
    return None
