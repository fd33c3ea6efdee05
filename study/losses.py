"""Loss specs: each loss name maps to (Keras loss, output activation, label encoding).

Adding a loss to the study is one entry in ``LOSSES``: both trainers call the Keras loss
object on the model's outputs, and the report picks a colour for any name. TensorFlow is
imported only when a loss is built or called, so the registry can validate configs without
starting it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class LossSpec:
    name: str
    output: Literal["sigmoid", "softmax"]
    labels: Literal["onehot", "integer"]
    make: Callable[[], object]  # -> a fresh keras.losses.Loss
    summary: str
    # How the stall from a confidently wrong output grows per unit of its pre-activation m
    # (init scheme saturated_wrong), by the mechanism: squared error on a sigmoid carries
    # sigma'(m) ~ e^-m, so 1; on a softmax the wrong start is a logit gap of 2m and the
    # softmax's derivative ~ e^-2m, so 2; cross-entropy cancels the derivative, so 0.
    # None: no prediction.
    stall_slope: float | None = None
    # The same update as another registered loss up to the learning rate: (that loss,
    # factor(n_classes)), so this loss at lr eta is that loss at eta * factor. The report
    # checks the equivalence at matched rates, as it checks scce against cce.
    same_update_as: tuple[str, Callable[[int], float]] | None = None

    def encode(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Targets as this loss expects them, from integer class labels."""
        if self.labels == "integer":
            return y.astype("int32")
        return np.eye(n_classes, dtype="float32")[y]


def quadratic_cost(y_true, y_pred):
    """Nielsen's quadratic cost per example: 1/2 * sum over outputs of (a - y)^2."""
    from keras import ops

    return 0.5 * ops.sum(ops.square(y_pred - y_true), axis=-1)


def _keras(class_name: str) -> Callable[[], object]:
    def make():
        import keras

        return keras.losses.get(class_name)  # a fresh instance of the class of that name

    return make


def _quadratic():
    import keras

    class QuadraticCost(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return quadratic_cost(y_true, y_pred)

    return QuadraticCost(name="quadratic")


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        LossSpec("bce", "sigmoid", "onehot", _keras("BinaryCrossentropy"),
                 "binary cross-entropy on C independent sigmoid outputs, mean over the C outputs",
                 stall_slope=0.0),
        LossSpec("cce", "softmax", "onehot", _keras("CategoricalCrossentropy"),
                 "categorical cross-entropy on a softmax, one-hot targets (summed over classes)",
                 stall_slope=0.0),
        LossSpec("scce", "softmax", "integer", _keras("SparseCategoricalCrossentropy"),
                 "the same maths as cce with integer targets: its curves must match cce's",
                 stall_slope=0.0, same_update_as=("cce", lambda n_classes: 1.0)),
        LossSpec("mse", "sigmoid", "onehot", _keras("MeanSquaredError"),
                 "mean squared error on sigmoid outputs: the seeds' slow-learning case",
                 # grad mean_c (a - y)^2 = (2/C) grad 1/2 sum_c (a - y)^2
                 stall_slope=1.0, same_update_as=("quadratic", lambda n_classes: 2 / n_classes)),
        LossSpec("mse_softmax", "softmax", "onehot", _keras("MeanSquaredError"),
                 "mean squared error on softmax outputs (the Brier score up to a factor C)",
                 stall_slope=2.0),
        LossSpec("quadratic", "sigmoid", "onehot", _quadratic,
                 "Nielsen's cost 1/2 * sum (a - y)^2 on sigmoid outputs, for the textbook runs",
                 stall_slope=1.0),
    ]
}
