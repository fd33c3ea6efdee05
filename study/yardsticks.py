"""Yardsticks: loss-agnostic measures, so arms trained under different losses share a scale.

All are computed in float64 from the model's outputs. Sigmoid outputs are not a distribution,
so they are normalized (a / sum a) first; softmax outputs are already normalized.
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped here before the log, so a confidently wrong output gives a large
# but finite NLL (-ln 1e-7 = 16.1 nats, Keras' own epsilon) rather than inf.
EPSILON = 1e-7


def normalize(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, dtype="float64")
    total = outputs.sum(axis=1, keepdims=True)
    return outputs / np.where(total > 0, total, 1.0)


def accuracy(outputs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs, axis=1) == y))


def nll(outputs: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy in nats of the normalized outputs against the true class."""
    p = normalize(outputs)[np.arange(len(y)), y]
    return float(np.mean(-np.log(np.clip(p, EPSILON, 1.0))))


def brier(outputs: np.ndarray, y: np.ndarray) -> float:
    """Mean over examples of sum over classes (p - onehot)^2; 0 is perfect, 2 the worst."""
    p = normalize(outputs)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def yardsticks(outputs: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    return {f"{prefix}_accuracy": accuracy(outputs, y), f"{prefix}_nll": nll(outputs, y),
            f"{prefix}_brier": brier(outputs, y)}
