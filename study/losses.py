"""Loss specs: each loss name maps to (Keras loss, output activation, label encoding).

Adding a loss to the study is one entry in ``LOSSES``: the Keras loss (for the reference
trainer) and the same loss per example from the logits (for the batched trainer, which the
tests hold to the Keras one within 1e-5). TensorFlow is imported only when a loss is built or
called, so the registry can validate configs without starting it.
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
    # (logits, onehot, labels) -> loss per example, computed from the logits exactly as the
    # Keras loss does behind a sigmoid or softmax output; the batched trainer uses it
    from_logits: Callable

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

        return getattr(keras.losses, class_name)()

    return make


def _quadratic():
    import keras

    class QuadraticCost(keras.losses.Loss):
        def call(self, y_true, y_pred):
            return quadratic_cost(y_true, y_pred)

    return QuadraticCost(name="quadratic")


def _bce(logits, onehot, labels):
    import tensorflow as tf

    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(onehot, logits), axis=-1)


def _cce(logits, onehot, labels):
    import tensorflow as tf

    return tf.nn.softmax_cross_entropy_with_logits(onehot, logits)


def _scce(logits, onehot, labels):
    import tensorflow as tf

    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)


def _squared(activation: str, reduce: str, scale: float):
    def loss(logits, onehot, labels):
        import tensorflow as tf

        outputs = getattr(tf.nn, activation)(logits)
        return scale * getattr(tf, reduce)(tf.square(outputs - onehot), axis=-1)

    return loss


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in [
        LossSpec("bce", "sigmoid", "onehot", _keras("BinaryCrossentropy"),
                 "binary cross-entropy on C independent sigmoid outputs, mean over the C outputs",
                 _bce),
        LossSpec("cce", "softmax", "onehot", _keras("CategoricalCrossentropy"),
                 "categorical cross-entropy on a softmax, one-hot targets (summed over classes)",
                 _cce),
        LossSpec("scce", "softmax", "integer", _keras("SparseCategoricalCrossentropy"),
                 "the same maths as cce with integer targets: its curves must match cce's", _scce),
        LossSpec("mse", "sigmoid", "onehot", _keras("MeanSquaredError"),
                 "mean squared error on sigmoid outputs: the seeds' slow-learning case",
                 _squared("sigmoid", "reduce_mean", 1.0)),
        LossSpec("mse_softmax", "softmax", "onehot", _keras("MeanSquaredError"),
                 "mean squared error on softmax outputs (the Brier score up to a factor C)",
                 _squared("softmax", "reduce_mean", 1.0)),
        LossSpec("quadratic", "sigmoid", "onehot", _quadratic,
                 "Nielsen's cost 1/2 * sum (a - y)^2 on sigmoid outputs, for the textbook runs",
                 _squared("sigmoid", "reduce_sum", 0.5)),
    ]
}
