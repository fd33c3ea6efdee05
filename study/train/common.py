"""What every trainer shares: the evaluation schedule, the minibatch order, the result type."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

METRICS = ("train_loss", "train_accuracy", "val_accuracy", "val_nll", "val_brier", "grad_norm")
NEURON_METRICS = ("output", "weight", "bias", "grad_w", "grad_b")


# val_accuracy alone is also taken between the full evaluations, at steps at most this far
# apart relative to the step (every step early on), so that the curves are drawn finely.
# The crossings of accuracy levels do not rely on it: the trainers find them exactly.
CROSSING_RESOLUTION = 0.05


@dataclass(frozen=True)
class Schedule:
    """Steps at which an arm is evaluated: all its measures at 0, the log-spaced early steps
    1, 2, 4, 8, ... (bad starts differ most in the first updates) and every epoch end;
    val_accuracy alone at the denser ``accuracy_steps`` too, while the arm still has a
    level to cross (both trainers)."""

    steps_per_epoch: int
    epochs: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def steps(self) -> tuple[int, ...]:
        early = {2**k for k in range(self.total_steps.bit_length()) if 2**k <= self.total_steps}
        epoch_ends = {e * self.steps_per_epoch for e in range(1, self.epochs + 1)}
        return tuple(sorted({0} | early | epoch_ends))

    @property
    def accuracy_steps(self) -> tuple[int, ...]:
        """Steps where only val_accuracy is taken: each at most 5% past the previous one."""
        return tuple(sorted(set(dense_steps(self.total_steps)) - set(self.steps)))

    @property
    def all_steps(self) -> tuple[tuple[int, bool], ...]:
        """(step, full evaluation?) in step order."""
        full = set(self.steps)
        return tuple((s, s in full) for s in sorted(full | set(self.accuracy_steps)))


def dense_steps(total_steps: int) -> Iterator[int]:
    """1, 2, 3, ...: each step at most 5% past the previous one, up to ``total_steps``; a few
    hundred for any budget, so the memory check can count them without listing a long
    budget's epoch ends (``Schedule.steps``)."""
    step = 1
    while step <= total_steps:
        yield step
        step = max(step + 1, math.floor(step * (1 + CROSSING_RESOLUTION)))


# The training-set measures (train_loss, train_accuracy, grad_norm) cost a forward and a
# backward pass over every example they cover. Past this many training examples they are
# taken on a fixed sample of this many, as DeepOBS does (its train-eval set is the size of
# its test set): MNIST's 50,000 training images are measured on 10,000, the size of its
# validation split, which made a full evaluation about 3x cheaper at that scale. digits
# (1,078) and mnist1d (3,200) are measured whole, so their values are unchanged.
TRAIN_EVAL_MAX = 10_000


def train_eval_rows(n_train: int) -> np.ndarray:
    """The training examples the training-set measures cover, in index order: all of them,
    or a fixed sample of ``TRAIN_EVAL_MAX`` (the same for every arm, seed and trainer)."""
    if n_train <= TRAIN_EVAL_MAX:
        return np.arange(n_train)
    return np.sort(np.random.default_rng([n_train, 7]).choice(n_train, TRAIN_EVAL_MAX,
                                                              replace=False))


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    # The last partial batch is dropped (each epoch's permutation differs, so every example
    # is still seen) so that all steps have the same batch size in every trainer.
    if n_train < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {n_train} training examples")
    return n_train // batch_size


def batch_order(seed: int, n_train: int, batch_size: int, epochs: int) -> np.ndarray:
    """Example indices for every step, shape [epochs, steps_per_epoch, batch_size].

    Drawn from the arm's seed alone: every arm of one seed sees the same minibatches
    (common random numbers), whatever its loss, init or learning rate.
    """
    rng = np.random.default_rng([seed, 3])
    spe = steps_per_epoch(n_train, batch_size)
    return np.stack([rng.permutation(n_train)[: spe * batch_size].reshape(spe, batch_size)
                     for _ in range(epochs)])


def is_single_neuron(model) -> bool:
    """Nielsen's one input, one neuron (a kernel [1, 1] and a bias [1]): the trainers then
    log all of it."""
    return [tuple(v.shape) for v in model.trainable_variables] == [(1, 1), (1,)]


def training_targets(spec, splits) -> np.ndarray:
    """The dataset's own target rows if it has them, else the labels encoded for the loss."""
    if splits.t_train is not None:
        return splits.t_train
    return spec.encode(splits.y_train, splits.n_classes)


def neuron_metrics(outputs, kernel, bias, grad_kernel, grad_bias) -> dict:
    """The neuron's output on x = 1, its weight and bias and their gradients. Works on one
    arm (outputs [M, 1], kernel [1, 1]) or K stacked arms (a leading K axis everywhere)."""
    return {"output": outputs[..., 0, 0], "weight": kernel[..., 0, 0], "bias": bias[..., 0],
            "grad_w": grad_kernel[..., 0, 0], "grad_b": grad_bias[..., 0]}


def crossing_key(level: float) -> str:
    """The metric that holds a level's first crossing step: ``crossing_0.9``."""
    return f"crossing_{level:g}"


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ArmResult:
    """An arm's logged history: metric name -> list of (step, value)."""

    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    diverged_at: int | None = None  # the first evaluated step with a non-finite loss
    # Wall-clock times in ms since the epoch: when the arm (or its group) started and
    # finished training, and when each evaluated step was reached, so that MLflow shows
    # the training's span and each value's real time, not the time it was written.
    started_ms: int | None = None
    finished_ms: int | None = None
    step_ms: dict[int, int] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def record(self, step: int, values: dict[str, float], at_ms: int | None = None) -> None:
        """Add one evaluation (every measure, or val_accuracy alone) of the weights as they
        were at ``at_ms`` (now if not given); a non-finite train_loss marks the arm diverged
        at ``step``."""
        self.step_ms[step] = at_ms if at_ms is not None else now_ms()
        for name, value in values.items():
            self.history.setdefault(name, []).append((step, float(value)))
        if not math.isfinite(values.get("train_loss", 0.0)) and not self.diverged:
            self.diverged_at = step

    def add_crossings(self, crossings: dict[float, tuple[int, float]]) -> None:
        """Log each level's first crossing: ``crossing_<level>`` = the step, at that step,
        and val_accuracy there (so the curve passes through it). A crossing after the step
        at which the arm was found diverged is dropped: the arm stopped there."""
        accuracy = dict(self.history.get("val_accuracy", []))
        for level, (step, value) in sorted(crossings.items()):
            if self.diverged and step > self.diverged_at:
                continue
            self.history[crossing_key(level)] = [(step, float(step))]
            accuracy.setdefault(step, value)
            self.step_ms.setdefault(step, min((ms for s, ms in self.step_ms.items()
                                               if s >= step), default=now_ms()))
        self.history["val_accuracy"] = sorted(accuracy.items())

    def series(self, name: str) -> np.ndarray:
        """Values of one metric, in step order."""
        return np.array([v for _, v in self.history[name]])

    def steps(self, name: str = "train_loss") -> list[int]:
        return [s for s, _ in self.history[name]]
