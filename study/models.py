"""The model: one MLP shape for every loss; only the parameter-free output activation differs."""

from __future__ import annotations

from collections.abc import Sequence


def layer_sizes(n_features: int, hidden: Sequence[int], n_classes: int) -> list[int]:
    return [n_features, *hidden, n_classes]


def count_params(sizes: Sequence[int]) -> int:
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


def build_mlp(sizes: Sequence[int], activation: str, output: str):
    """A Keras Sequential MLP: Dense layers with ``activation``, then Dense(C, ``output``)."""
    import keras

    layers = [keras.Input((sizes[0],))]
    layers += [keras.layers.Dense(n, activation=activation) for n in sizes[1:-1]]
    layers.append(keras.layers.Dense(sizes[-1], activation=output))
    return keras.Sequential(layers)
