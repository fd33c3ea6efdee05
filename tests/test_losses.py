"""Every registered loss spec against hand-computed values (the seeds' worked example)."""

from __future__ import annotations

import numpy as np
import pytest

from study.errors import ConfigError, check_name
from study.losses import LOSSES

# The seeds' example: true class 0 of 3; two predictions q1 and q2.
P = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype="float32")
Q = np.array([[0.5, 0.2, 0.3], [0.8, 0.1, 0.1]], dtype="float32")
LABELS = np.array([0, 0])

# Worked by hand, in nats, mean over the batch of two:
HAND = {
    # -ln 0.5 = 0.693147, -ln 0.8 = 0.223144
    "cce": (0.693147 + 0.223144) / 2,
    "scce": (0.693147 + 0.223144) / 2,
    # mean over 3 outputs: (-ln .5 - ln .8 - ln .7)/3 = 0.424322; (-ln .8 - 2 ln .9)/3 = 0.144622
    "bce": (0.424322 + 0.144622) / 2,
    # mean over 3 outputs of (a - y)^2: 0.38/3 and 0.06/3
    "mse": (0.38 / 3 + 0.06 / 3) / 2,
    "mse_softmax": (0.38 / 3 + 0.06 / 3) / 2,
    # Nielsen: 1/2 sum (a - y)^2: 0.19 and 0.03
    "quadratic": (0.19 + 0.03) / 2,
}


def test_registry_matches_the_design_table():
    table = {name: (spec.output, spec.labels) for name, spec in LOSSES.items()}
    assert table == {
        "bce": ("sigmoid", "onehot"), "cce": ("softmax", "onehot"),
        "scce": ("softmax", "integer"), "mse": ("sigmoid", "onehot"),
        "mse_softmax": ("softmax", "onehot"), "quadratic": ("sigmoid", "onehot"),
    }


@pytest.mark.parametrize("name", list(HAND))
def test_loss_on_the_worked_example(tf, name):
    spec = LOSSES[name]
    targets = spec.encode(LABELS, 3)
    value = float(spec.make()(targets, tf.constant(Q)))
    assert value == pytest.approx(HAND[name], abs=2e-6)


def test_encodings():
    np.testing.assert_array_equal(LOSSES["cce"].encode(LABELS, 3), P)
    np.testing.assert_array_equal(LOSSES["scce"].encode(np.array([2, 0]), 3), [2, 0])


@pytest.mark.parametrize("name", list(HAND))
def test_loss_on_model_outputs_matches_the_formula(tf, name):
    """On a real model output (where Keras may use the logits behind a sigmoid or softmax),
    each loss equals its textbook formula computed in float64."""
    import keras

    spec = LOSSES[name]
    rng = np.random.default_rng(0)
    z = rng.normal(scale=3.0, size=(8, 5))
    y = rng.integers(0, 5, 8)
    onehot = np.eye(5)[y]
    layer = keras.layers.Activation(spec.output)
    outputs = layer(tf.constant(z, dtype="float32"))
    if spec.output == "sigmoid":
        a = 1 / (1 + np.exp(-z))
    else:
        a = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    formula = {
        "bce": -(onehot * np.log(a) + (1 - onehot) * np.log(1 - a)).mean(axis=1),
        "cce": -np.log(a[np.arange(8), y]),
        "scce": -np.log(a[np.arange(8), y]),
        "mse": ((a - onehot) ** 2).mean(axis=1),
        "mse_softmax": ((a - onehot) ** 2).mean(axis=1),
        "quadratic": 0.5 * ((a - onehot) ** 2).sum(axis=1),
    }[name].mean()
    value = float(spec.make()(spec.encode(y, 5), outputs))
    assert value == pytest.approx(formula, rel=1e-5)


def test_unknown_loss_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown loss 'hinge'; valid: bce, cce, scce, mse, "
                                          "mse_softmax, quadratic"):
        check_name("loss", "hinge", LOSSES)
