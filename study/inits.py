"""Init schemes: how an arm's starting weights are chosen, and how bad (``severity``) they are.

Schemes work on any model of the registry. The control (``glorot``) is the model's own Keras
initializers, each given a seed derived from the arm's seed; the other schemes transform that
draw or draw with NumPy from the seed alone. Nothing depends on the loss, so every loss arm
of one (init, severity, seed) starts from bit-identical weights (the output activation has no
parameters), and every scheme starts from the same control draw, so schemes differ only in
what the scheme changes. Weights come as the list ``model.trainable_variables`` orders.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from study.errors import ConfigError

Weights = list[np.ndarray]


class Starts:
    """The starting weights of one model's arms; the control draw is cached per seed."""

    def __init__(self, model, given: Mapping | None = None):
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]
        self.names = [v.name for v in model.trainable_variables]  # "kernel", "bias", ...
        self.paths = [v.path for v in model.trainable_variables]
        self.initializers = _initializers(model)
        self.given = given or {}
        self._controls: dict[int, Weights] = {}

    def control(self, seed: int) -> Weights:
        if seed not in self._controls:
            self._controls[seed] = _float32(
                [_seeded(initializer, seed, i)(shape, dtype="float32") for i, (initializer, shape)
                 in enumerate(zip(self.initializers, self.shapes, strict=True))])
        return [w.copy() for w in self._controls[seed]]

    def __call__(self, init: str, severity: float, seed: int) -> Weights:
        return INITS[init].make(self, seed, severity)

    def output_layer(self, scheme: str) -> tuple[int, int]:
        """Indices of the last layer's kernel and bias: the output units' weights."""
        if len(self.names) < 2 or self.names[-2:] != ["kernel", "bias"] \
                or self.shapes[-1] != self.shapes[-2][-1:]:
            raise ConfigError(f"init scheme {scheme!r} needs a model whose last layer has a "
                              f"kernel and a bias (Dense), got {self.paths[-2:]}")
        return len(self.names) - 2, len(self.names) - 1


def _initializers(model) -> list:
    """Each trainable variable's Keras initializer, from the layer that owns it."""
    owner = {}
    for layer in model._flatten_layers():
        for variable in layer._trainable_variables:
            owner[id(variable)] = getattr(layer, f"{variable.name}_initializer", None)
    found = [owner.get(id(v)) for v in model.trainable_variables]
    missing = [v.path for v, i in zip(model.trainable_variables, found, strict=True) if i is None]
    if missing:
        raise ConfigError(f"the control init cannot tell how the model draws {missing[0]} "
                          "(its layer has no <name>_initializer); use init schemes that do "
                          "not need it (large_normal, fixed)")
    return found


def _seeded(initializer, seed: int, index: int):
    """The same initializer with its own seed: one per (arm seed, variable), never global
    state, so a start does not depend on what was drawn before it."""
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = int(np.random.SeedSequence([seed, 0, index]).generate_state(1)[0]
                             % 2**31)
    return type(initializer).from_config(config)


@dataclass(frozen=True)
class InitScheme:
    name: str
    make: Callable[[Starts, int, float], Weights]  # (starts, seed, severity)
    severity_meaning: str | None  # None: the scheme takes no severity
    summary: str
    given: bool = False  # the config gives the weights: a mapping severity -> weights
    symbol: str = ""  # the severity's letter in reports: "scaled k=4"
    # The family's own control: the severity whose start the family's others are compared
    # with when the study runs it (scaled k=1 is the control itself; saturated_wrong m=0 is
    # its zero output kernel and biases, which differs from the control).
    reference: float | None = None
    control: bool = False  # the control start itself: what learning rates are tuned on
    saturates_output: bool = False  # the loss specs' stall_slope predicts its growth law

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
            floor = 0.0 if self.reference == 0.0 else None
            bad = [s for s in severities if not (s > 0 or s == floor)]
            if bad:
                allowed = ">= 0" if floor == 0.0 else "> 0"
                raise ConfigError(f"init scheme {self.name!r}: severities must be {allowed} "
                                  f"({self.severity_meaning}), got {bad}")

    def severities(self, configured: Sequence[float] | Mapping) -> tuple[float, ...]:
        """The severities to run: a scheme without one runs once, logged as severity 0."""
        return tuple(configured) if self.severity_meaning else (0.0,)


def glorot(starts: Starts, seed: int, severity: float = 0.0) -> Weights:
    """The model's own initializers (Keras' default: Glorot-uniform kernels, zero biases)."""
    return starts.control(seed)


def scaled(starts: Starts, seed: int, severity: float) -> Weights:
    return _float32([w * severity if name == "kernel" else w
                     for w, name in zip(starts.control(seed), starts.names, strict=True)])


def saturated_wrong(starts: Starts, seed: int, severity: float) -> Weights:
    # A zero output kernel makes the pre-activation exactly the bias for every input:
    # +m on one wrong class, -m on the rest (m = 4: sigmoid 0.982, Nielsen's 0.98 start).
    weights = starts.control(seed)
    kernel, bias = starts.output_layer("saturated_wrong")
    n_classes = starts.shapes[bias][0]
    wrong = np.random.default_rng([seed, 1]).integers(n_classes)
    weights[kernel] = np.zeros_like(weights[kernel])
    weights[bias] = np.full(n_classes, -severity)
    weights[bias][wrong] = severity
    return _float32(weights)


def large_normal(starts: Starts, seed: int, severity: float = 0.0) -> Weights:
    """Nielsen's ``large_weight_initializer``: every weight and bias N(0, 1)."""
    rng = np.random.default_rng([seed, 2])
    return _float32([rng.standard_normal(shape) for shape in starts.shapes])


def fixed(starts: Starts, seed: int, severity: float) -> Weights:
    """Weights given in the config, e.g. Nielsen's neuron: (w, b) = (0.6, 0.9) or (2, 2)."""
    weights = _float32(starts.given[severity])
    if [w.shape for w in weights] != starts.shapes:
        raise ConfigError(f"inits.fixed.{severity:g}: weights have shapes "
                          f"{[w.shape for w in weights]}, the model needs {starts.shapes}")
    return weights


def _float32(weights: Weights) -> Weights:
    return [np.asarray(w, dtype="float32") for w in weights]


INITS: dict[str, InitScheme] = {
    scheme.name: scheme
    for scheme in [
        InitScheme("glorot", glorot, None,
                   "the control: the model's own Keras initializers (Glorot-uniform kernels, "
                   "zero biases), seeded", control=True),
        InitScheme("scaled", scaled, "k, the factor on the control's kernels; 1 is the control",
                   "the control's kernels times k: large k saturates the sigmoids", symbol="k",
                   reference=1.0),
        InitScheme("saturated_wrong", saturated_wrong,
                   "m, the output pre-activation: +m on one wrong class, -m on the rest",
                   "hidden layers as the control; every input starts confidently on one "
                   "wrong class", symbol="m", reference=0.0, saturates_output=True),
        InitScheme("large_normal", large_normal, None,
                   "every weight and bias N(0, 1), Nielsen's large_weight_initializer"),
        InitScheme("fixed", fixed, "a label for each given start, e.g. its initial output",
                   "weights given in the config: [kernel, bias, ...] per start", given=True,
                   symbol="start"),
    ]
}


CONTROL = next(scheme.name for scheme in INITS.values() if scheme.control)


def start_name(init: str, severity: float) -> str:
    """A start as the report, the run tags and the saved views name it: 'saturated_wrong
    m=4', 'scaled k=4', 'glorot' (the letter from the scheme's registry entry)."""
    symbol = INITS[init].symbol if init in INITS else "severity"
    return f"{init} {symbol}={severity:g}" if symbol else init
