"""Keras callbacks from the config, for the reference trainer (one Keras ``fit`` per arm).

``callbacks: [{name: ReduceLROnPlateau, monitor: val_nll, factor: 0.5, patience: 2}]`` gives
each arm's ``fit`` a fresh instance of that class of ``keras.callbacks``, with the Keras
keyword arguments given. A callback acts on one model's training (its optimizer's rate, when
it stops), so the batched trainer, which trains a group of arms as one computation, cannot
run them. At each epoch end the callbacks see the arm's measures as logged (``train_loss``,
``val_accuracy``, ``val_nll``, ...) beside Keras' own ``loss`` (the epoch's mean minibatch
loss), so ``monitor`` may name any of them.

One pydantic model per callback, with Keras' argument names (``study.options``);
``Callback`` is their union, told apart by ``name``. No TensorFlow import here.

``mode: auto`` (the default) is decided here from the monitored measure: Keras' own "auto"
knows only ``loss`` and compiled metrics, and fails on ``val_nll`` or ``val_accuracy``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict

from study.options import Option, union
from study.train.common import METRICS

Monitor = Literal[("loss", *METRICS)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
NonNegative = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
# The measures a callback may monitor that are better higher; the others are better lower.
HIGHER_IS_BETTER = frozenset({"train_accuracy", "val_accuracy"})


class _Callback(Option):
    def make(self):
        import keras

        options = self.model_dump(exclude={"name"})
        if options["mode"] == "auto":
            options["mode"] = "max" if self.monitor in HIGHER_IS_BETTER else "min"
        return getattr(keras.callbacks, self.name)(**options)


class ReduceLROnPlateau(_Callback):
    name: Literal["ReduceLROnPlateau"]
    monitor: Monitor = "val_nll"
    factor: Annotated[float, Strict(), Field(gt=0, lt=1, allow_inf_nan=False)] = 0.1
    patience: NonNegativeInt = 10
    mode: Literal["auto", "min", "max"] = "auto"
    min_delta: NonNegative = 1e-4
    cooldown: NonNegativeInt = 0
    min_lr: NonNegative = 0.0


class EarlyStopping(_Callback):
    name: Literal["EarlyStopping"]
    monitor: Monitor = "val_nll"
    min_delta: NonNegative = 0.0
    patience: NonNegativeInt = 0
    mode: Literal["auto", "min", "max"] = "auto"
    baseline: Annotated[float, Strict(), Field(allow_inf_nan=False)] | None = None
    start_from_epoch: NonNegativeInt = 0


CALLBACKS = (ReduceLROnPlateau, EarlyStopping)
Callback = union(CALLBACKS)
