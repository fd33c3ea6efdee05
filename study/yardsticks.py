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
    total = outputs.sum(axis=1, keepdims=True)
    return outputs / np.where(total > 0, total, 1.0)


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == y))


def nll(outputs: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy in nats of the normalized outputs against the true class."""
    q = np.clip(normalize(outputs), EPSILON, 1.0)
    return float(np.mean(cross_entropy(np.eye(q.shape[1])[y], q)))


def brier(outputs: np.ndarray, y: np.ndarray) -> float:
    """Mean over examples of sum over classes (p - onehot)^2; 0 is perfect, 2 the worst."""
    p = normalize(outputs)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def yardsticks(outputs: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    return {f"{prefix}_accuracy": accuracy(outputs, y), f"{prefix}_nll": nll(outputs, y),
            f"{prefix}_brier": brier(outputs, y)}
