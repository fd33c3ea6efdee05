"""The seeds' worked examples (seeds 000 and 003), through the project's yardstick and loss
code: cross-entropy in three log bases, the softmax, and the registered losses in nats."""

from __future__ import annotations

import numpy as np
import pytest

from study.losses import LOSSES
from study.yardsticks import cross_entropy, softmax

P = np.array([1.0, 0.0, 0.0])
Q1 = np.array([0.5, 0.2, 0.3])
Q2 = np.array([0.8, 0.1, 0.1])


def test_cross_entropy_in_base_10_and_nats():
    assert cross_entropy(P, Q1, base=10) == pytest.approx(0.301, abs=5e-4)
    assert cross_entropy(P, Q2, base=10) == pytest.approx(0.097, abs=5e-4)
    batch = cross_entropy(np.stack([P, P]), np.stack([Q1, Q2]), base=10)
    assert batch.mean() == pytest.approx(0.199, abs=5e-4)
    assert cross_entropy(P, Q1) == pytest.approx(0.693, abs=5e-4)
    assert cross_entropy(P, Q2) == pytest.approx(0.223, abs=5e-4)


def test_dog_cat_horse_leopard_in_bits():
    p = np.array([0.0, 0.0, 1.0, 0.0])
    q = np.array([0.1, 0.05, 0.775, 0.075])
    assert cross_entropy(p, q, base=2) == pytest.approx(0.3677, abs=5e-5)


def test_softmax_of_the_logits_gives_q1_q2_and_ignores_the_row_max():
    logits = np.array([[-0.693, -1.609, -1.204], [-0.223, -2.303, -2.303]])
    q = softmax(logits)
    np.testing.assert_allclose(q, np.stack([Q1, Q2]), atol=1e-3)
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax(shifted), q, rtol=1e-12)
    np.testing.assert_allclose(softmax(logits + 1000.0), q, rtol=1e-9)  # no overflow


def test_registered_losses_equal_the_formulas_in_nats(tf):
    q = np.stack([Q1, Q2]).astype("float32")
    labels = np.array([0, 0])
    ce = cross_entropy(np.stack([P, P]), q).mean()  # (0.693 + 0.223) / 2
    for name in ("cce", "scce"):
        spec = LOSSES[name]
        assert float(spec.make()(spec.encode(labels, 3), q)) == pytest.approx(ce, rel=1e-6)
    # bce treats each output as its own Bernoulli: the mean of H((y, 1-y), (a, 1-a)) over them
    onehot = np.stack([P, P])
    per_output = cross_entropy(np.stack([onehot, 1 - onehot], axis=-1),
                               np.stack([q, 1 - q], axis=-1))
    bce = LOSSES["bce"]
    assert float(bce.make()(onehot, q)) == pytest.approx(per_output.mean(), rel=1e-6)


def test_yardsticks_follow_their_definitions_one_arm_or_many():
    from study.yardsticks import accuracy, brier, nll, normalize

    rng = np.random.default_rng(0)
    outputs = rng.uniform(0.01, 1.0, size=(3, 40, 5))  # 3 arms, 40 examples, 5 classes
    y = rng.integers(0, 5, 40)
    for k in range(3):
        q, onehot = normalize(outputs[k]), np.eye(5)[y]
        assert nll(outputs[k], y) == pytest.approx(np.mean(cross_entropy(onehot, q)), rel=1e-12)
        assert brier(outputs[k], y) == pytest.approx(np.mean(((q - onehot) ** 2).sum(1)),
                                                     rel=1e-12)
        assert accuracy(outputs[k], y) == np.mean(outputs[k].argmax(1) == y)
    np.testing.assert_array_equal(nll(outputs, y), [nll(o, y) for o in outputs])
    np.testing.assert_array_equal(brier(outputs, y), [brier(o, y) for o in outputs])
    # a perfect confident prediction: Brier 0, NLL 0; uniform over 5: NLL ln 5, Brier 0.8
    assert brier(np.eye(5)[y], y) == 0 and nll(np.eye(5)[y], y) == 0
    assert nll(np.ones((40, 5)), y) == pytest.approx(np.log(5))
    assert brier(np.ones((40, 5)), y) == pytest.approx(0.8)


def test_tensorflow_yardsticks_equal_the_numpy_ones(tf):
    """The batched trainer's in-graph yardsticks against the NumPy definitions, including a
    row of zeros (nothing to normalize) and a confidently wrong row (NLL clipped at 1e-7)."""
    from study.yardsticks import accuracy, accuracy_tf, yardsticks, yardsticks_tf

    rng = np.random.default_rng(1)
    outputs = rng.uniform(0.0, 1.0, size=(4, 30, 5)).astype("float32")
    y = rng.integers(0, 5, 30)
    outputs[0, 0] = 0.0
    outputs[1, 1] = np.eye(5)[(y[1] + 1) % 5]
    expected = yardsticks(outputs, y, "val")
    actual = yardsticks_tf(tf.constant(outputs), tf.constant(y, tf.int32), "val")
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name].numpy(), expected[name], rtol=1e-12,
                                   err_msg=name)
    np.testing.assert_array_equal(accuracy_tf(tf.constant(outputs), tf.constant(y)).numpy(),
                                  accuracy(outputs, y))
    assert expected["val_nll"][1] > -np.log(1 - 1e-7)  # the clipped term counts
