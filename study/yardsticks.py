"""Yardsticks: loss-agnostic measures, so arms trained under different losses share a scale.

All are computed in float64 from the model's outputs. Sigmoid outputs are not a distribution,
so they are normalized (a / sum a) first; softmax outputs are already normalized.
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped here before the log, so a confidently wrong output gives a large
# but finite NLL (-ln 1e-7 = 16.1 nats, Keras' own epsilon) rather than inf.
EPSILON = 1e-7


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax; subtracting each row's maximum first changes nothing but overflow."""
    z = np.asarray(logits, dtype="float64")
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(p: np.ndarray, q: np.ndarray, base: float = np.e) -> np.ndarray:
    """H(p, q) = -sum p log q for each row, in nats by default (base 2: bits, 10: hartleys).

    The seeds use ln, log2 and log10; the harness reports nats everywhere.
    """
    p, q = np.asarray(p, dtype="float64"), np.asarray(q, dtype="float64")
    terms = np.where(p > 0, p * np.log(np.where(p > 0, q, 1.0)), 0.0)  # 0 log 0 = 0
    return -terms.sum(axis=-1) / np.log(base)


def normalize(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, dtype="float64")
    total = outputs.sum(axis=-1, keepdims=True)
    return outputs / np.where(total > 0, total, 1.0)


# Each measure takes outputs [M, C] (one arm: a float) or [K, M, C] (K arms: an array [K]).
# The reference trainer scores one arm; the stacked form is what the batched trainer's
# TensorFlow measures below are tested against.


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    return _result(np.mean(np.argmax(outputs, axis=-1) == y, axis=-1))


def nll(outputs: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """Mean cross-entropy in nats of the normalized outputs against the true class:
    H(onehot, q) = -ln q_y, the one nonzero term of ``cross_entropy``."""
    q = np.clip(_true_class(normalize(outputs), y), EPSILON, 1.0)
    return _result(np.mean(-np.log(q), axis=-1))


def brier(outputs: np.ndarray, y: np.ndarray) -> float | np.ndarray:
    """Mean over examples of sum over classes (p - onehot)^2; 0 is perfect, 2 the worst.
    Expanded: sum p^2 - 2 p_y + 1, which needs no one-hot array."""
    p = normalize(outputs)
    per_example = np.sum(p * p, axis=-1) - 2 * _true_class(p, y) + 1
    return _result(np.mean(per_example, axis=-1))


def _true_class(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p[..., m, y[m]] for every example m."""
    index = np.broadcast_to(np.asarray(y)[:, None], (*p.shape[:-1], 1))
    return np.take_along_axis(p, index, axis=-1)[..., 0]


def _result(value: np.ndarray) -> float | np.ndarray:
    return float(value) if np.ndim(value) == 0 else value


def yardsticks(outputs: np.ndarray, y: np.ndarray, prefix: str) -> dict:
    return {f"{prefix}_accuracy": accuracy(outputs, y), f"{prefix}_nll": nll(outputs, y),
            f"{prefix}_brier": brier(outputs, y)}


# The same measures in TensorFlow, over K stacked arms (outputs [K, M, C], labels y [M]): the
# batched trainer computes them inside its evaluation graph, where they need neither a copy
# of the outputs nor the interpreter lock that MLflow's writer thread holds. The tests hold
# them to the NumPy functions above.


def accuracy_tf(outputs, y):
    import tensorflow as tf

    correct = tf.argmax(outputs, axis=-1, output_type=y.dtype) == y
    return tf.reduce_mean(tf.cast(correct, tf.float64), axis=-1)


def yardsticks_tf(outputs, y, prefix: str) -> dict:
    import tensorflow as tf

    p = tf.cast(outputs, tf.float64)
    total = tf.reduce_sum(p, axis=-1, keepdims=True)
    p = p / tf.where(total > 0, total, tf.ones_like(total))
    true_class = tf.reduce_sum(p * tf.one_hot(y, tf.shape(p)[-1], dtype=tf.float64), axis=-1)
    nll_tf = -tf.math.log(tf.clip_by_value(true_class, EPSILON, 1.0))
    brier_tf = tf.reduce_sum(p * p, axis=-1) - 2 * true_class + 1
    return {f"{prefix}_accuracy": accuracy_tf(outputs, y),
            f"{prefix}_nll": tf.reduce_mean(nll_tf, axis=-1),
            f"{prefix}_brier": tf.reduce_mean(brier_tf, axis=-1)}
