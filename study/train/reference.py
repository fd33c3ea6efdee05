"""The reference trainer: one Keras model per arm, trained with plain ``Model.fit`` and the
arm's stock Keras optimizer.

It is the ground truth that faster trainers are checked against, so it does nothing clever:
one ``fit`` over all epochs, fed the arm's minibatch order through ``tf.data``, with a
callback that evaluates the arm at the scheduled steps and, while a level of
``crossing_levels`` is still to be crossed, val_accuracy after every batch: the crossings
are the first steps an every-step evaluation finds.
"""

from __future__ import annotations

from collections.abc import Callable

from study.backend import start_tensorflow
from study.config import StudyConfig
from study.data import Splits
from study.grid import Arm, optimizer_of
from study.inits import Starts
from study.losses import loss_spec
from study.models import build_model
from study.optimizers import OPTIMIZERS
from study.train.common import (
    ArmResult,
    Schedule,
    batch_order,
    is_single_neuron,
    neuron_metrics,
    now_ms,
    steps_per_epoch,
    train_eval_rows,
    training_targets,
)
from study.yardsticks import accuracy, softmax, yardsticks


class _Evaluator:
    """Evaluates one arm on the training set (its own loss, accuracy, gradient norm; a fixed
    sample of it at MNIST scale, ``train_eval_rows``) and on the validation set (the
    yardsticks)."""

    def __init__(self, model, loss_fn, splits: Splits, y_train_encoded, logits: bool = False):
        import tensorflow as tf

        self.model, self.loss_fn, self.splits = model, loss_fn, splits
        self.logits = logits  # linear outputs: the yardsticks read them through a softmax
        rows = train_eval_rows(len(splits.x_train))
        self.x_train = tf.constant(splits.inputs("train")[rows])
        self.y_train = tf.constant(y_train_encoded[rows])
        self.labels_train = splits.y_train[rows]
        self.x_val = tf.constant(splits.inputs("val"))
        self.single_neuron = is_single_neuron(model)
        # The model's forward pass over the validation split as one graph: the crossings
        # call it after every step, where an eager call's overhead would dominate.
        self.val_outputs = tf.function(lambda: self.model(self.x_val, training=False))

    def __call__(self, full: bool = True) -> dict[str, float]:
        import tensorflow as tf

        if not full:
            val_outputs = self.val_outputs().numpy()
            return {"val_accuracy": accuracy(val_outputs, self.splits.y_val)}

        with tf.GradientTape() as tape:
            outputs = self.model(self.x_train, training=False)
            loss = self.loss_fn(self.y_train, outputs)
        grads = tape.gradient(loss, self.model.trainable_variables)
        val_outputs = self.val_outputs().numpy()
        if self.logits:
            val_outputs = softmax(val_outputs)
        values = {
            "train_loss": float(loss),
            "train_accuracy": accuracy(outputs.numpy(), self.labels_train),
            **yardsticks(val_outputs, self.splits.y_val, "val"),
            "grad_norm": float(tf.linalg.global_norm(grads)),
        }
        if self.single_neuron:
            neuron = neuron_metrics(outputs.numpy(), *(v.numpy() for v in
                                                       self.model.trainable_variables),
                                    *(g.numpy() for g in grads))
            values.update({name: float(value) for name, value in neuron.items()})
        return values


class Crossings:
    """First steps at which val_accuracy reaches each level: level -> (step, accuracy)."""

    def __init__(self, levels):
        self.pending, self.found = sorted(levels), {}

    def see(self, step: int, accuracy: float) -> None:
        for level in [v for v in self.pending if accuracy >= v]:
            self.found[level] = (step, accuracy)
            self.pending.remove(level)


def _make_callback(evaluate: _Evaluator, schedule: Schedule, result: ArmResult,
                   crossings: Crossings):
    import keras

    due = dict(schedule.all_steps)  # step -> full evaluation?

    class EvaluateOnSchedule(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.step = 0

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            # a dense step (val_accuracy alone) only while a level is still to be crossed
            taken = self.step in due and (due[self.step] or crossings.pending)
            values = evaluate(full=due[self.step]) if taken else None
            if values is not None:
                result.record(self.step, values)
            if crossings.pending:
                accuracy = values["val_accuracy"] if values else evaluate(full=False)[
                    "val_accuracy"]
                crossings.see(self.step, accuracy)
            if result.diverged:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            # The config's callbacks come after this one and see the same logs: give them
            # the arm's measures at this epoch end (a full evaluation) to monitor.
            if logs is not None:
                logs.update({name: points[-1][1] for name, points in result.history.items()
                             if points[-1][0] == self.step})

    return EvaluateOnSchedule()


def build_arm_model(arm: Arm, config: StudyConfig, splits: Splits):
    """The arm's Keras model at its starting weights, and its Keras loss."""
    import keras

    spec = loss_spec(config, arm.loss)
    # Random layers (Dropout) draw from Keras' seed, set from the arm's: an arm repeats bit
    # for bit. Starts do not depend on it (study.inits seeds each initializer itself).
    keras.utils.set_random_seed(arm.seed)
    model = build_model(config.model, splits.input_shape, splits.n_classes, spec.output,
                        "reference")
    starts = Starts(model, config.inits.get("fixed"))
    for variable, value in zip(model.trainable_variables,
                               starts(arm.init, arm.severity, arm.seed), strict=True):
        variable.assign(value)
    return model, spec.make()


def train_arm(arm: Arm, config: StudyConfig, splits: Splits) -> ArmResult:
    model, loss_fn = build_arm_model(arm, config, splits)
    optimizer = optimizer_of(config, arm)
    rate = optimizer.schedule.make(arm.lr) if optimizer.schedule else arm.lr
    model.compile(optimizer=OPTIMIZERS[optimizer.name].make(rate, optimizer.options),
                  loss=loss_fn)
    y_train = training_targets(loss_spec(config, arm.loss), splits)
    n_train, batch = len(splits.x_train), config.batch_size
    schedule = Schedule(steps_per_epoch(n_train, batch), config.epochs)
    order = batch_order(arm.seed, n_train, batch, config.epochs)

    evaluate = _Evaluator(model, loss_fn, splits, y_train,
                          logits=loss_spec(config, arm.loss).output == "linear")
    result = ArmResult(started_ms=now_ms())
    result.record(0, evaluate())
    crossings = Crossings(config.crossing_levels)
    crossings.see(0, result.history["val_accuracy"][0][1])
    # One fit over all epochs, fed our minibatch order; with steps_per_epoch set, Keras keeps
    # one iterator across epochs, so epoch e trains on exactly order[e].
    if not result.diverged:
        batches = _minibatches(splits.inputs("train"), y_train, order)
        model.fit(batches, epochs=config.epochs, steps_per_epoch=schedule.steps_per_epoch,
                  shuffle=False, verbose=0,
                  callbacks=[_make_callback(evaluate, schedule, result, crossings),
                             *(callback.make() for callback in config.callbacks)])
    result.add_crossings(crossings.found)
    result.finished_ms = now_ms()
    return result


def _minibatches(x, y, order):
    import tensorflow as tf

    x, y = tf.constant(x), tf.constant(y)
    indices = tf.data.Dataset.from_tensor_slices(order.reshape(-1, order.shape[-1]))
    return indices.map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)))


def train_arms(arms: list[Arm], config: StudyConfig, splits: Splits,
               advance: Callable[[float], None] = lambda arms_done: None):
    """Yield (arm, result) for each arm in turn."""
    start_tensorflow()
    for arm in arms:
        keras_clear_session()
        result = train_arm(arm, config, splits)
        advance(1)
        yield arm, result


def keras_clear_session() -> None:
    # Hundreds of models in one process would otherwise pile up in Keras' global state.
    import keras

    keras.backend.clear_session()


