"""Loss specs: each loss name maps to (Keras loss, output activation, label encoding).

Adding a loss to the study is one entry in ``LOSSES``, or, for a user, one entry of the
config's ``losses`` (``{name, fn: "module:attr", output, targets}``, ``custom_spec``): both
trainers call the Keras loss object on the model's outputs, and the report picks a colour for
any name. TensorFlow is imported only when a loss is built or called, so the registry can
validate configs without starting it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from study.errors import ConfigError


@dataclass(frozen=True)
class LossSpec:
    name: str
    output: Literal["sigmoid", "softmax", "linear"]
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


# ---- the user's own losses ------------------------------------------------------------------

# What a config's ``targets`` says, in the registry's words.
TARGETS = {"one_hot": "onehot", "sparse": "integer"}


def loss_spec(config, name: str) -> LossSpec:
    """The spec of a loss of ``config``: a registered one, or the user's own."""
    for custom in config.custom_losses:
        if custom.name == name:
            return custom_spec(custom)
    return LOSSES[name]


def custom_spec(custom) -> LossSpec:
    """A ``config.CustomLoss`` as a spec. Its ``fn`` is imported when the loss is made, in
    the process that trains (a Ray worker included), not when the config is read."""
    return LossSpec(custom.name, custom.output, TARGETS[custom.targets],
                    functools.partial(_make_custom, custom.name, custom.fn),
                    f"your own: {custom.fn}")


def _make_custom(name: str, path: str):
    """The Keras loss object ``path`` names: a ``keras.losses.Loss`` instance as given, a
    subclass made with its defaults, a function f(y_true, y_pred) -> one value per example
    wrapped as Keras' compile(loss=f) wraps it (mean over the batch)."""
    import keras
    from keras.src.losses.losses import LossFunctionWrapper

    from study.plugins import import_object, one_line

    key = f"losses.{name}.fn"
    found = import_object(key, path, "package.module:function_or_class")
    if isinstance(found, keras.losses.Loss):
        loss = found
    elif isinstance(found, type) and issubclass(found, keras.losses.Loss):
        try:
            loss = found()
        except Exception as err:
            raise ConfigError(f"{key}: {path!r} cannot be made with no arguments "
                              f"({type(err).__name__}: {one_line(err)}); give an instance, "
                              "e.g. my_losses:focal = Focal(gamma=2)") from None
    elif isinstance(found, type):
        raise ConfigError(f"{key}: {path!r} is a class but not a keras.losses.Loss")
    else:
        loss = LossFunctionWrapper(found, name=name)
    if loss.reduction != "sum_over_batch_size":
        raise ConfigError(f"{key}: {path!r} has reduction {loss.reduction!r}; the trainers "
                          "average a loss over the batch (Keras' default, "
                          "'sum_over_batch_size')")
    return loss


# The probe's batch: small, and split in two halves that differ between the two calls.
PROBE_BATCH = 8


def probe(spec: LossSpec, n_classes: int) -> None:
    """Call the user's loss on a small batch of outputs as the model gives them and refuse,
    in one line, a loss the trainers cannot use: one that fails, gives no finite value or
    gradient, or does not give one value per example that depends on that example alone.

    Why per example: the batched trainer vectorizes an arm's loss over K arms and reduces
    each arm's per-example values itself, the way the registered losses are reduced (the
    reduction it has made independent of the arm's slot, bit for bit); a loss that reduces
    over the batch, or mixes examples, runs its own reductions over the stacked arms'
    batches, whose order of summation may depend on the slot. The train_loss logged (the
    loss on the whole training split) is also only the average of the minibatch losses'
    kind when each example's value is its own.
    """
    import numpy as np
    import tensorflow as tf

    from study.plugins import one_line

    key = f"losses.{spec.name}"
    loss = spec.make()
    rng = np.random.default_rng(0)
    labels = rng.integers(0, n_classes, PROBE_BATCH)
    targets = spec.encode(labels, n_classes)
    first, second = (_probe_outputs(spec.output, rng, n_classes) for _ in range(2))
    half = PROBE_BATCH // 2
    second[:half] = first[:half]  # the first half the same, the second half not

    def values(outputs):
        y_pred = tf.constant(outputs)
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            per_example = loss.call(tf.constant(targets), y_pred)
        return per_example, tape.gradient(per_example, y_pred)

    try:
        (a, grad), (b, _) = values(first), values(second)
    except Exception as err:
        raise ConfigError(f"{key}: calling it on targets {targets.shape} and {spec.output} "
                          f"outputs {first.shape} failed with {type(err).__name__}: "
                          f"{one_line(err)}") from None
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 0 or a.shape[0] != PROBE_BATCH:
        raise ConfigError(f"{key}: gives values of shape {a.shape} for a batch of "
                          f"{PROBE_BATCH}; it must give one value per example (shape "
                          f"[{PROBE_BATCH}]) and leave the mean over the batch to Keras")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{key}: gives {a.ravel()[~np.isfinite(a.ravel())][0]} on valid "
                          f"{spec.output} outputs")
    if not np.allclose(a[:half], b[:half], rtol=1e-5, atol=1e-7):  # float noise aside
        raise ConfigError(f"{key}: an example's value depends on the other examples of its "
                          "batch; the batched trainer needs each example's value to depend "
                          "on that example alone")
    if grad is None or not np.all(np.isfinite(grad)) or not np.any(grad):
        raise ConfigError(f"{key}: has no finite, nonzero gradient with respect to the "
                          "model's outputs, so training could not move the weights")


def _probe_outputs(output: str, rng, n_classes: int):
    import numpy as np

    z = rng.normal(size=(PROBE_BATCH, n_classes)).astype("float32")
    if output == "linear":
        return z
    if output == "sigmoid":
        return (1 / (1 + np.exp(-z))).astype("float32")
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype("float32")
