"""Init schemes: how an arm's starting weights are chosen, and how bad (``severity``) they are.

Weights are drawn with NumPy from the arm's seed alone, never from the loss, so every loss
arm of one (init, severity, seed) starts from bit-identical weights; every scheme also starts
from the same control draw, so init schemes differ only in what the scheme changes.
Weights come as the flat list Keras' ``Model.set_weights`` takes: [W1, b1, W2, b2, ...].
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from study.errors import ConfigError

Weights = list[np.ndarray]


@dataclass(frozen=True)
class InitScheme:
    name: str
    make: Callable[[Sequence[int], int, float], Weights]  # (layer sizes, seed, severity)
    severity_meaning: str | None  # None: the scheme takes no severity
    summary: str
    given: bool = False  # the config gives the weights: a mapping severity -> weights
    symbol: str = ""  # the severity's letter in reports: "scaled k=4"

    def check_severities(self, severities: Sequence[float] | Mapping) -> None:
        if self.given != isinstance(severities, Mapping):
            raise ConfigError(
                f"init scheme {self.name!r} needs a mapping: severity (a label, e.g. the "
                f"start's output) -> [kernel, bias, ...]" if self.given else
                f"init scheme {self.name!r} takes a list of severities, not a mapping")
        if self.severity_meaning is None and len(severities):
            raise ConfigError(f"init scheme {self.name!r} takes no severities (use [] or null)")
        if self.severity_meaning is not None:
            if not len(severities):
                raise ConfigError(f"init scheme {self.name!r} needs a list of severities "
                                  f"({self.severity_meaning})")
            bad = [s for s in severities if not s > 0]
            if bad:
                raise ConfigError(f"init scheme {self.name!r}: severities must be > 0 "
                                  f"({self.severity_meaning}), got {bad}")

    def severities(self, configured: Sequence[float] | Mapping) -> tuple[float, ...]:
        """The severities to run: a scheme without one runs once, logged as severity 0."""
        return tuple(configured) if self.severity_meaning else (0.0,)


def glorot(sizes: Sequence[int], seed: int, severity: float = 0.0) -> Weights:
    """Keras' default: Glorot-uniform kernels, zero biases."""
    rng = np.random.default_rng([seed, 0])
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights += [rng.uniform(-limit, limit, (fan_in, fan_out)), np.zeros(fan_out)]
    return _float32(weights)


def scaled(sizes: Sequence[int], seed: int, severity: float) -> Weights:
    return _float32([w * severity for w in glorot(sizes, seed)])


def saturated_wrong(sizes: Sequence[int], seed: int, severity: float) -> Weights:
    # A zero output kernel makes the pre-activation exactly the bias for every input:
    # +m on one wrong class, -m on the rest (m = 4: sigmoid 0.982, Nielsen's 0.98 start).
    weights = glorot(sizes, seed)
    n_classes = sizes[-1]
    wrong = np.random.default_rng([seed, 1]).integers(n_classes)
    bias = np.full(n_classes, -severity)
    bias[wrong] = severity
    weights[-2] = np.zeros_like(weights[-2])
    weights[-1] = bias
    return _float32(weights)


def large_normal(sizes: Sequence[int], seed: int, severity: float = 0.0) -> Weights:
    """Nielsen's ``large_weight_initializer``: every weight and bias N(0, 1)."""
    rng = np.random.default_rng([seed, 2])
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        weights += [rng.standard_normal((fan_in, fan_out)), rng.standard_normal(fan_out)]
    return _float32(weights)


def fixed(sizes: Sequence[int], seed: int, severity: float,
          given: Mapping[float, Sequence] | None = None) -> Weights:
    """Weights given in the config, e.g. Nielsen's neuron: (w, b) = (0.6, 0.9) or (2, 2)."""
    weights = _float32(given[severity])
    expected = [s for a, b in zip(sizes[:-1], sizes[1:], strict=True) for s in [(a, b), (b,)]]
    if [w.shape for w in weights] != expected:
        raise ConfigError(f"inits.fixed.{severity:g}: weights have shapes "
                          f"{[w.shape for w in weights]}, the model needs {expected}")
    return weights


def _float32(weights: Weights) -> Weights:
    return [np.asarray(w, dtype="float32") for w in weights]


INITS: dict[str, InitScheme] = {
    scheme.name: scheme
    for scheme in [
        InitScheme("glorot", glorot, None,
                   "the control: Keras' default Glorot-uniform weights and zero biases"),
        InitScheme("scaled", scaled, "k, the factor on the control's weights; 1 is the control",
                   "the control's weights times k: large k saturates the sigmoids", symbol="k"),
        InitScheme("saturated_wrong", saturated_wrong,
                   "m, the output pre-activation: +m on one wrong class, -m on the rest",
                   "hidden layers as the control; every input starts confidently on one "
                   "wrong class", symbol="m"),
        InitScheme("large_normal", large_normal, None,
                   "every weight and bias N(0, 1), Nielsen's large_weight_initializer"),
        InitScheme("fixed", fixed, "a label for each given start, e.g. its initial output",
                   "weights given in the config: [kernel, bias, ...] per start", given=True,
                   symbol="start"),
    ]
}


def initial_weights(init: str, severity: float, seed: int, sizes: Sequence[int],
                    given: Mapping | None = None) -> Weights:
    """The starting weights of an arm; ``given`` is the config's mapping for ``fixed``."""
    if INITS[init].given:
        return fixed(sizes, seed, severity, given)
    return INITS[init].make(sizes, seed, severity)
