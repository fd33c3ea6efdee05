"""An independent float64 NumPy implementation of the MLP, its six losses and their
gradients, written from the formulas (micrograd style) to check the Keras trainer against."""

from __future__ import annotations

import numpy as np


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss_and_grads(weights, x, y, loss: str, activation: str = "sigmoid"):
    """The loss (mean over the batch, Keras' reduction) and its gradient for every weight."""
    n, c = len(x), weights[-1].shape[0]
    t = np.eye(c)[y]
    hs, h = [x], x
    for i in range(0, len(weights) - 2, 2):
        h = _sigmoid(h @ weights[i] + weights[i + 1]) if activation == "sigmoid" else None
        hs.append(h)
    z = h @ weights[-2] + weights[-1]
    softmax = loss in ("cce", "scce", "mse_softmax")
    a = _softmax(z) if softmax else _sigmoid(z)
    if loss in ("cce", "scce"):
        value = -np.log(a[np.arange(n), y]).mean()
        dz = (a - t) / n  # cross-entropy cancels the activation's derivative
    elif loss == "bce":
        value = -(t * np.log(a) + (1 - t) * np.log(1 - a)).mean()
        dz = (a - t) / (n * c)  # ... and so does binary cross-entropy on a sigmoid
    else:
        if loss == "quadratic":
            value, da = 0.5 * ((a - t) ** 2).sum(axis=1).mean(), (a - t) / n
        else:  # mse, mse_softmax: mean over the C outputs
            value, da = ((a - t) ** 2).mean(), 2 * (a - t) / (n * c)
        if softmax:
            dz = a * (da - (da * a).sum(axis=1, keepdims=True))
        else:
            dz = da * a * (1 - a)  # the sigma'(z) factor that slows the quadratic cost
    grads = [None] * len(weights)
    for i in range(len(weights) - 2, -1, -2):
        h = hs[i // 2]
        grads[i], grads[i + 1] = h.T @ dz, dz.sum(axis=0)
        if i:
            dz = (dz @ weights[i].T) * h * (1 - h)
    return value, grads


def global_norm(grads) -> float:
    return float(np.sqrt(sum((g**2).sum() for g in grads)))


def sgd(weights, batches, x, y, loss: str, lr: float):
    """Plain SGD over the given minibatches; yields the weights after each step."""
    weights = [w.astype("float64") for w in weights]
    for idx in batches:
        _, grads = loss_and_grads(weights, x[idx], y[idx], loss)
        weights = [w - lr * g for w, g in zip(weights, grads, strict=True)]
        yield weights


def outputs(weights, x, loss: str):
    """The model's outputs (after the loss spec's output activation) on inputs x."""
    h = x
    for i in range(0, len(weights) - 2, 2):
        h = _sigmoid(h @ weights[i] + weights[i + 1])
    z = h @ weights[-2] + weights[-1]
    return _softmax(z) if loss in ("cce", "scce", "mse_softmax") else _sigmoid(z)


def accuracy_every_step(weights, batches, x, y, x_val, y_val, loss: str, lr: float):
    """val_accuracy before training and after every SGD step: an array [len(batches) + 1]."""
    weights = [w.astype("float64") for w in weights]
    trajectory = [weights, *sgd(weights, batches, x, y, loss, lr)]
    return np.array([np.mean(outputs(w, x_val, loss).argmax(axis=1) == y_val)
                     for w in trajectory])


def first_crossings(accuracy, levels) -> dict[float, int]:
    """Level -> the first step at which accuracy >= level (levels never reached: absent)."""
    return {level: int(np.argmax(accuracy >= level)) for level in levels
            if (accuracy >= level).any()}
