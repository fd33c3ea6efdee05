"""The batched trainer: the arms of a group trained as one vectorized Keras computation.

A group's arms share the model, the loss and the optimizer and differ in start, seed and
learning rate. Their weights stack into variables shaped [K, ...]; one step runs the Keras
model's own ``stateless_call`` on each arm's weights and minibatch (``tf.vectorized_map``),
applies the registered Keras loss to each arm's outputs, takes the gradient of the sum of the
arms' losses (each arm's own gradient: the sum's derivative is 1 for every arm), and applies
stock Keras optimizers to the stacked variables. An elementwise optimizer on stacked
variables is K independent optimizers; each arm's learning rate is a slot of a [K] tensor
that the optimizer broadcasts over its weights, so the update is Keras' own, arm by arm.

Slot independence: no op mixes arms. The vectorized model runs batched matrix products
(one per arm), and the full-dataset evaluations run arm by arm (``tf.map_fn``), so an arm's
values are bit for bit the same in any group, any slot, any chunk, alone or resumed. The
number of slots is a multiple of 16 (``SLOT_MULTIPLE``), spare slots padded, and the
gradient's sums over the batch axis run arm by arm too (``_sum_to``): summed as one tensor,
Eigen adds up an arm's batch in an order that depends on its slot.

Per-step Python and Keras overhead, not arithmetic, is what a small model costs; here it is
paid once per evaluation interval for the whole group (``tf.while_loop`` over steps).
Evaluations run on a second thread, on snapshots of the weights, while training goes on. An
arm that diverges is evaluated, recorded and then frozen (learning rate 0, weights zeroed,
optimizer state as at the start, whatever the optimizer keeps) so that its NaNs cannot
cost time.

Crossings are exact: after every step, inside the loop, the slots that still have a level
of ``crossing_levels`` to cross are gathered and their val_accuracy evaluated (``_cross``),
and a [K, levels] tensor keeps each level's first step; once no slot has a level left the
evaluation is skipped (``tf.cond``). Curves are not monotone, so nothing short of looking
at every step finds the first one (a logged schedule 5% apart was late by a median 6.6%,
worst 73%, on the default study).
Every val_accuracy, scheduled or at a crossing, is the same vectorized forward pass
(``_evaluate_accuracy``), so a crossing's value equals the scheduled one at the same step.
It costs one forward pass over the validation split (about 7 training steps of an arm)
per arm and step until the arm has crossed its last level: little for arms that learn
fast, up to twice the training time for a group whose arms stall or never reach 0.9 (mse
from bad starts); docs/trainers.md has the figures. A slot's evaluation is skipped at a
step where a bound proves that its val_accuracy is at least one example short of its lowest
level left (``_skippable``, ``study.train.bound``): each evaluation anchors the slot (its
weights, and per validation example the least change of the outputs that could make it
right), and the bound on the outputs' change since the anchor, from the weight change,
decides; values and crossings are the same bits either way. It covers stacks of Dense
layers, and is used where a validation pass is worth its cost (``BOUND_MIN_WORK``: at
MNIST scale, not on digits). The dense val_accuracy schedule
(``Schedule.accuracy_steps``) draws the curves while an arm has a level left: its values
are the crossings' own, kept in a buffer inside the loop (``dense``) and read once per
interval; once an arm has crossed its last level, only the full evaluations go on.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from study.config import OptimizerConfig, StudyConfig
from study.data import Splits
from study.grid import Arm, by_group, optimizer_of
from study.inits import Starts
from study.losses import loss_spec
from study.models import build_model
from study.optimizers import OPTIMIZERS, PER_ARM
from study.train import bound as output_bound
from study.train.common import (
    METRICS,
    NEURON_METRICS,
    ArmResult,
    Schedule,
    batch_order,
    dense_steps,
    is_single_neuron,
    neuron_metrics,
    now_ms,
    steps_per_epoch,
    train_eval_rows,
    training_targets,
)
from study.train.traced import Traced
from study.yardsticks import accuracy_tf, yardsticks_tf

FLOAT = "float32"
# Skip a slot's crossing evaluation where ``study.train.bound`` proves its next level out of
# reach, for the models it covers. None: where a validation pass is worth the bound's cost,
# at least BOUND_MIN_WORK multiply-adds per slot (the bound is about a hundred small ops a
# step, a few ms on this machine whatever the model: more than it saves on digits, whose
# pass is 0.8 million, and far less on MNIST, 240 million). True: always (the tests), False:
# never, every pending slot evaluated at every step as the exact crossings first did.
BOUND: bool | None = None
BOUND_MIN_WORK = 20_000_000


def lanes_for(n_val: int) -> int:
    """Slots evaluated together come in multiples of this: then every elementwise tensor
    of the evaluation holds a multiple of 16 floats (each arm's holds n_val x units), and
    every element takes Eigen's packet path whatever the batch (see ``SLOT_MULTIPLE``)."""
    return 16 // math.gcd(16, n_val)


def _model_size(config: StudyConfig, splits: Splits) -> tuple[int, int]:
    """(parameters, activations per example) of the study's model."""
    return model_size(config.model, splits.input_shape, splits.n_classes,
                      config.loss_output(config.losses[0]), config.trainer)


@functools.lru_cache(maxsize=16)
def model_size(model_config, input_shape: tuple[int, ...], n_classes: int,
               output: str = "sigmoid", trainer: str = "batched") -> tuple[int, int]:
    """(parameters, activations per example) of a model, built once per process for each
    model config, data shape, output activation and trainer: the pre-flight checks, the
    chunking and the estimate all ask, and each Keras build costs about 0.1 s."""
    model = build_model(model_config, input_shape, n_classes, output, trainer)
    units = sum(math.prod(layer.output.shape[1:]) for layer in model.layers)
    return model.count_params(), units


def bytes_per_arm(config: StudyConfig, splits: Splits) -> int:
    """A generous estimate of what one more arm in a chunk costs: its weights with optimizer
    state, gradients and snapshots, its minibatch activations and their gradients, its
    minibatch order for the whole budget, its activations in the crossings' vectorized
    forward pass over the validation split, and its buffer of dense val_accuracy values."""
    params, units = _model_size(config, splits)
    order = steps_per_epoch(len(splits.x_train), config.batch_size) * config.epochs
    dense = 2 * sum(1 for _ in dense_steps(order))  # an upper bound of the dense schedule
    # the crossings' forward pass shares the validation inputs; each arm holds its layers'
    # outputs and their pre-activations
    crossing = 2 * len(splits.x_val) * max(1, units - math.prod(splits.input_shape))
    # the bound's anchor (a copy of the weights, a float64 threshold per validation example)
    # and its float64 temporaries per example
    anchor = params + 16 * len(splits.x_val)
    return 4 * (8 * params + 4 * config.batch_size * units + order * config.batch_size
                + crossing + dense + anchor)


def evaluation_bytes(config: StudyConfig, splits: Splits) -> int:
    """What the full-dataset evaluations cost whatever the chunk: two arms at a time, each
    with its activations and their gradients on the training sample and the validation
    split."""
    _, units = _model_size(config, splits)
    n_eval = len(train_eval_rows(len(splits.x_train))) + len(splits.x_val)
    return 2 * 4 * 3 * n_eval * units


# Eigen computes an elementwise op (exp, log, the sigmoid) over a whole tensor in SIMD packets
# and its last few elements one at a time, and the two paths can round differently. With a
# slot count that is a multiple of the widest packet (16 floats), every element of every arm
# takes the packet path whatever the group's size. Measured before: with an odd number of
# slots, the last arm's output kernel differed by an ulp after one step, and the
# difference grew over training.
SLOT_MULTIPLE = 16


def slots_for(n_arms: int) -> int:
    return -(-n_arms // SLOT_MULTIPLE) * SLOT_MULTIPLE


# Past about this many arms a group gains little per arm-step, while the last group's MLflow
# writes (about 25 ms an arm) are the one part of logging that no training overlaps.
GROUP_CAP = 80


def chunk_size(config: StudyConfig, splits: Splits, n_arms: int) -> int:
    """Arms per chunk: within the memory budget and the cap, and as even as can be, since the
    last chunk's spare slots cost as much as arms (200 arms train as 100 + 100, not 180 + 20
    in 180 slots)."""
    budget = config.memory_budget_mb * 2**20 - evaluation_bytes(config, splits)
    fits = budget // bytes_per_arm(config, splits) // SLOT_MULTIPLE * SLOT_MULTIPLE
    cap = max(1, min(n_arms, GROUP_CAP, max(SLOT_MULTIPLE, fits)))  # the slots are padded
    chunks = -(-n_arms // cap)                    # to 16 anyway (plan.check_memory refuses
    return -(-n_arms // chunks)                   # a study whose 16 slots do not fit)


# A bias add vectorized over arms is x [K, B, C] + b [K, 1, C]; its gradient sums over the
# batch axis (a convolution's over B, H and W). TensorFlow's own gradient makes that one Eigen
# sum of [K, B, C], computed in SIMD packets of 8 outputs: a packet inside one arm's row of C
# adds the batch up with four interleaved accumulators once B >= 16, a packet across two rows
# with one, and which of an arm's columns fall in which depends on where its row starts
# (k * C). Measured before: one arm in all 16 slots at batch 16 or 32, its output-bias
# gradient (C = 10) differed from slot 0's by up to 1.8e-7 at the first step in every slot
# but 0, 4, 8 and 12, and whole histories differed between slots under SGD, momentum, Adam
# and Adagrad. (Below batch 16 both paths add in batch order; threads play no part, one per
# op.) So the adds in the vectorized loss get their own gradient: ``segment_sum`` with one
# segment per arm reduces each arm's [B, C] block by itself, packets from its column 0, so
# every arm is summed as slot 0 always was. Measured after: every slot the same bits at
# batch 16 and 32 (MLP, CNN); values in slot 0, and the MLP's at batch 10, unchanged; a
# 64-arm group's steps per second new/old 0.96-1.03 for the MLP (batch 10 and 32, SGD and
# Adam), 1.02-1.28 for the CNN: median of 21 alternating runs, two sittings.
@functools.cache
def _slot_safe_gradients() -> dict[str, str]:
    """The graph's gradient override map for the vectorized loss (its gradient registered
    once per process)."""
    import tensorflow as tf

    tf.RegisterGradient("SlotSafeAddV2")(
        lambda op, grad: [_sum_to(grad, x.shape) for x in op.inputs])
    return {"AddV2": "SlotSafeAddV2"}


def _sum_to(grad, shape):
    """An add's incoming gradient summed to one input's ``shape`` over the axes that input
    was broadcast along: each run of such axes by ``segment_sum``, one segment per index of
    the axes before it (per arm), or, innermost, by a sum of contiguous rows."""
    import tensorflow as tf

    dims, shape = grad.shape.as_list(), list(shape)
    if None in dims + shape:
        raise ValueError(f"the batched trainer needs static shapes, got {grad.shape}")
    target = [1] * (len(dims) - len(shape)) + shape
    runs = _runs([i for i, (d, t) in enumerate(zip(dims, target, strict=True)) if d != t])
    for start, stop in reversed(runs):
        rows, n, cols = (math.prod(dims[:start]), math.prod(dims[start:stop]),
                         math.prod(dims[stop:]))
        if cols == 1:  # one contiguous row per output: Eigen sums each row the same way
            grad = tf.reduce_sum(tf.reshape(grad, [rows, n]), 1)
        else:
            grad = tf.math.segment_sum(tf.reshape(grad, [rows * n, cols]),
                                       np.repeat(np.arange(rows, dtype="int32"), n))
        dims = dims[:start] + dims[stop:]
        if start > runs[0][0]:  # runs before this one still to sum: their axes back
            grad = tf.reshape(grad, dims)
    return tf.reshape(grad, shape)


def _runs(axes: list[int]) -> list[tuple[int, int]]:
    """Consecutive axes as [start, stop) runs: [1, 2, 3, 5] -> [(1, 4), (5, 6)]."""
    runs = []
    for axis in axes:
        if runs and runs[-1][1] == axis:
            runs[-1] = (runs[-1][0], axis + 1)
        else:
            runs.append((axis, axis + 1))
    return runs


class _Group:
    """K arm slots of one group as stacked variables, with graph functions to train and
    evaluate them. The graphs are traced once and reused for every chunk of the group:
    ``load`` assigns a chunk's starts, learning rates and minibatch orders to the slots."""

    def __init__(self, size: int, config: StudyConfig, splits: Splits, loss: str,
                 optimizer: OptimizerConfig):
        import tensorflow as tf

        self.size, self.config, self.splits = size, config, splits
        self.trace_s: float | None = None  # its tracing, as the estimate's probe timed it
        spec = loss_spec(config, loss)
        self.model = build_model(config.model, splits.input_shape, splits.n_classes,
                                 spec.output)
        self.starts = Starts(self.model, config.inits.get("fixed"))
        self.loss_fn = spec.make()
        self.logits = spec.output == "linear"  # the yardsticks read them through a softmax
        self.weights = [tf.Variable(tf.zeros((size, *v.shape)), name=v.name)
                        for v in self.model.trainable_variables]
        self.lr = tf.Variable(tf.zeros(size))
        # One optimizer per stacked variable, so that each sees the arms' learning rates
        # shaped to broadcast over its own rank. Norm clipping is left out of Keras' hands:
        # its norm would span every arm of the group (``_clip_per_arm``).
        options = {k: v for k, v in optimizer.options.items() if k not in PER_ARM}
        self.clipping = {k: v for k, v in optimizer.options.items() if k in PER_ARM}
        self.optimizers = [OPTIMIZERS[optimizer.name].make(
            self._rates(w, optimizer.schedule), options) for w in self.weights]
        for opt, w in zip(self.optimizers, self.weights, strict=True):
            opt.build([w])
        self.fresh_state = [[v.numpy() for v in opt.variables] for opt in self.optimizers]
        n_train = len(splits.x_train)
        self.schedule = Schedule(steps_per_epoch(n_train, config.batch_size), config.epochs)
        self.order = tf.Variable(tf.zeros((size, self.schedule.total_steps, config.batch_size),
                                          "int32"))
        self.active = np.zeros(size, bool)
        # what keeping it costs (``TRACED``): its copies of the data, its slots
        self.nbytes = (2 * splits.x_train.nbytes + splits.x_val.nbytes
                       + size * bytes_per_arm(config, splits))

        self.x_train = tf.constant(splits.inputs("train"))
        self.y_train = tf.constant(training_targets(spec, splits))
        self.x_val = tf.constant(splits.inputs("val"))
        # the training-set measures' examples: all, or a fixed sample at MNIST scale
        rows = train_eval_rows(n_train)
        self.x_eval = tf.constant(splits.inputs("train")[rows])
        self.y_eval = tf.constant(training_targets(spec, splits)[rows])
        self.labels_eval = tf.constant(splits.y_train[rows].astype("int32"))
        self.labels_val = tf.constant(splits.y_val.astype("int32"))
        self.names = METRICS + (NEURON_METRICS if is_single_neuron(self.model) else ())
        # Crossings: per slot and level, the first step at which val_accuracy >= the level
        # (-1: not yet) and val_accuracy there; ``watch`` marks the slots still looked at.
        self.levels = tf.constant(config.crossing_levels, tf.float64)
        n_levels = len(config.crossing_levels)
        self.first = tf.Variable(tf.fill((size, n_levels), -1))
        self.first_accuracy = tf.Variable(tf.zeros((size, n_levels), tf.float64))
        self.watch = tf.Variable(tf.zeros(size, tf.bool))
        self.lanes = lanes_for(len(splits.x_val))
        self._anchor_state(size, splits)
        # The dense val_accuracy schedule is taken while a slot has a level still to cross,
        # by the crossings' own forward pass (it evaluates that slot at that step anyway),
        # into a [K, dense steps] buffer (NaN: not taken; an accuracy is never NaN, even of
        # a diverged arm) that the host reads once per
        # interval. Once an arm has crossed its last level its curve is drawn from the full
        # evaluations alone: measured on the default study, the dense evaluations and their
        # MLflow values were most of what an arm cost after its crossings.
        self.dense_steps = self.schedule.accuracy_steps
        column = np.full(self.schedule.total_steps + 1, -1, "int32")
        column[list(self.dense_steps)] = np.arange(len(self.dense_steps), dtype="int32")
        self.dense_column = tf.constant(column)
        self.dense = tf.Variable(tf.zeros((size, max(1, len(self.dense_steps))), tf.float64))

        # No autograph: the loops are written as TensorFlow loops, and converting Keras'
        # code would cost seconds of every study's start-up.
        self.run = tf.function(self._run, autograph=False)
        # The evaluations take the slots to evaluate (the arms still training, not spare or
        # frozen slots: a group of 3 arms has 16 slots), any number of them: one trace.
        signature = [[tf.TensorSpec(w.shape, w.dtype) for w in self.weights],
                     tf.TensorSpec([None], tf.int32)]
        self.evaluate_graph = tf.function(
            lambda weights, slots: self._evaluate([tf.gather(w, slots) for w in weights]),
            autograph=False, input_signature=signature)
        self.accuracy_graph = tf.function(
            lambda weights, slots: self._evaluate_accuracy([tf.gather(w, slots)
                                                            for w in weights]),
            autograph=False, input_signature=signature)

    def _anchor_state(self, size: int, splits: Splits) -> None:
        """The bound's state (``study.train.bound``), for a model it covers: per slot the
        weights at its last crossing evaluation (its anchor), the least change of the
        outputs that could make each validation example right (``bound.thresholds``), and
        whether it has an anchor yet. ``cross_counts``: slot evaluations done and skipped
        since the group was built."""
        import tensorflow as tf

        self.bound = output_bound.dense_stack(self.model) if BOUND is not False else None
        if BOUND is None and self.bound and sum(
                layer.inputs * layer.units for layer in self.bound) * len(
                splits.x_val) < BOUND_MIN_WORK:
            self.bound = None
        self.cross_counts = tf.Variable(tf.zeros(2, tf.int64))
        self.skipping = tf.Variable(True)  # the probe times the evaluations without skips
        if self.bound is None:
            return
        self.anchors = [tf.Variable(tf.zeros_like(w)) for w in self.weights]
        n_val = len(splits.x_val)
        self.thresholds = tf.Variable(tf.zeros((size, n_val), tf.float64))
        self.anchored = tf.Variable(tf.zeros(size, tf.int32))
        self.x_norms = tf.constant(np.linalg.norm(
            splits.inputs("val").reshape(n_val, -1).astype("float64"), axis=1))

    def _rates(self, variable, schedule=None):
        """The slots' learning rates shaped to broadcast over ``variable``: a callable, or
        with a schedule, a Keras schedule built on them (``study.schedules``)."""
        import keras
        import tensorflow as tf

        shape = [-1] + [1] * (len(variable.shape) - 1)
        if schedule is None:
            return lambda: tf.reshape(self.lr, shape)

        class PerArm(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(inner, step):  # noqa: N805 (self is the group)
                return schedule.make(tf.reshape(self.lr, shape))(step)

        return PerArm()

    def load(self, arms: list[Arm]) -> None:
        """Put a chunk of at most ``size`` arms in the slots; spare slots repeat the last arm
        with learning rate 0 and are never reported."""
        padded = arms + [arms[-1]] * (self.size - len(arms))
        starts = [self.starts(a.init, a.severity, a.seed) for a in padded]
        for variable, layer in zip(self.weights, zip(*starts, strict=True), strict=True):
            variable.assign(np.stack(layer))
        for opt, fresh in zip(self.optimizers, self.fresh_state, strict=True):
            for variable, value in zip(opt.variables, fresh, strict=True):
                variable.assign(value)
        self.active = np.arange(self.size) < len(arms)
        self.first.assign(np.full(self.first.shape, -1, "int32"))
        self.watch.assign(self.active)
        if self.bound is not None:
            self.anchored.assign(np.zeros(self.size, "int32"))
        self.lr.assign(np.where(self.active, [a.lr for a in padded], 0.0).astype(FLOAT))
        self.dense.assign(np.full(self.dense.shape, np.nan))
        n_train, batch, epochs = len(self.splits.x_train), self.config.batch_size, \
            self.config.epochs
        self.order.assign(np.stack([
            batch_order(a.seed, n_train, batch, epochs).reshape(-1, batch)
            for a in padded]).astype("int32"))

    # ---- training ----

    def _arm_loss(self, args):
        """One arm's minibatch loss, written for a single arm and vectorized over K."""
        weights, x, y = args
        outputs, _ = self.model.stateless_call(list(weights), [], x, training=True)
        return self.loss_fn(y, outputs)

    def _gradients(self, step):
        """Every slot's minibatch loss at ``step`` [K] and its gradients (stacked like the
        weights), as graph tensors."""
        import tensorflow as tf

        rows = self.order[:, step, :]  # [K, B]
        # tf.gradients, not a tape: a tape ignores the graph's gradient override map
        with tf.compat.v1.get_default_graph().gradient_override_map(_slot_safe_gradients()):
            losses = tf.vectorized_map(self._arm_loss, (self.weights, tf.gather(self.x_train, rows),
                                                        tf.gather(self.y_train, rows)))
        return losses, tf.gradients(tf.reduce_sum(losses), self.weights)

    def _step(self, step):
        _, grads = self._gradients(step)
        grads = _clip_per_arm(grads, self.clipping)
        for opt, g, w in zip(self.optimizers, grads, self.weights, strict=True):
            opt.apply([g], [w])

    def _run(self, start, stop):
        """Optimizer steps start, ..., stop - 1 for every slot, in one graph call."""
        import tensorflow as tf

        def body(step):
            self._step(step)
            self._cross(step + 1)
            return (step + 1,)

        tf.while_loop(lambda step: step < stop, body, (start,))

    # ---- evaluation ----

    def _arm_metrics(self, weights):
        """One arm's full-dataset measures, as a float64 vector in ``self.names`` order."""
        import tensorflow as tf

        weights = list(weights)
        with tf.GradientTape() as tape:
            tape.watch(weights)
            outputs, _ = self.model.stateless_call(weights, [], self.x_eval)
            loss = self.loss_fn(self.y_eval, outputs)
        grads = tape.gradient(loss, weights)
        val_outputs, _ = self.model.stateless_call(weights, [], self.x_val)
        if self.logits:
            val_outputs = tf.nn.softmax(val_outputs)
        metrics = {"train_loss": loss,
                   "train_accuracy": accuracy_tf(outputs, self.labels_eval),
                   **yardsticks_tf(val_outputs, self.labels_val, "val"),
                   "grad_norm": tf.linalg.global_norm(grads)}
        if len(self.names) > len(METRICS):
            metrics.update(neuron_metrics(outputs, *weights, *grads))
        return tf.stack([tf.cast(metrics[name], tf.float64) for name in self.names])

    def _evaluate(self, weights):
        import tensorflow as tf

        return tf.map_fn(self._arm_metrics, weights, parallel_iterations=2,
                         fn_output_signature=tf.TensorSpec([len(self.names)], tf.float64))

    def _arm_accuracy(self, weights):
        """One arm's val_accuracy: a forward pass over the validation split."""
        outputs, _ = self.model.stateless_call(list(weights), [], self.x_val)
        return accuracy_tf(outputs, self.labels_val)

    def _evaluate_accuracy(self, weights):
        """val_accuracy of stacked arms [n, ...], n a multiple of ``lanes``: one vectorized
        forward pass, so that every evaluation of val_accuracy (full, scheduled or at a
        crossing) is the same computation, and an arm's value the same bits whatever else
        is in the batch (no op mixes arms; see ``lanes_for``)."""
        import tensorflow as tf

        return tf.vectorized_map(self._arm_accuracy, weights)

    def _arm_accuracy_outputs(self, weights):
        """One arm's val_accuracy (``_arm_accuracy``'s computation) and its outputs."""
        outputs, _ = self.model.stateless_call(list(weights), [], self.x_val)
        return accuracy_tf(outputs, self.labels_val), outputs

    def _skippable(self, pending):
        """[K]: the ``pending`` slots whose anchor proves that val_accuracy is now at least
        one example short of their lowest level still to cross. The bound is computed for
        those slots alone; it is affine in each example's input norm (``bound``), so it
        is computed once for norms 0 and 1 and then per example."""
        import tensorflow as tf

        slots = tf.cast(tf.where(pending & (self.anchored > 0))[:, 0], tf.int32)
        at = tf.gather(self.first, slots) < 0
        lowest = tf.reduce_min(tf.where(at, self.levels[None, :],
                                        tf.constant(np.inf, tf.float64)), axis=1)
        ends = output_bound.output_change(
            self.bound, [tf.gather(w, slots) for w in self.weights],
            [tf.gather(w, slots) for w in self.anchors], tf.constant([0.0, 1.0], tf.float64))
        change = ends[:, :1] + (ends[:, 1:] - ends[:, :1]) * self.x_norms[None, :]
        upper = output_bound.may_be_correct(tf.gather(self.thresholds, slots), change)
        n_val = float(len(self.splits.x_val))
        skip = upper + 1 < lowest * n_val
        return tf.scatter_nd(slots[:, None], tf.cast(skip, tf.int32), [self.size]) > 0

    def _cross(self, step):
        """Evaluate val_accuracy of the watched slots that still have a level to cross, note
        the levels they reach at ``step``, and keep the values in ``dense`` if ``step`` is a
        dense step of the schedule. Skipped once no slot needs it, and for a slot whose bound
        proves its next level out of reach at a step that is not dense (``_skippable``)."""
        import tensorflow as tf

        column = self.dense_column[step]
        pending = self.watch & tf.reduce_any(self.first < 0, axis=1)
        if self.bound is not None:
            skip = pending & tf.cond(
                tf.reduce_any(pending) & self.skipping & (column < 0),
                lambda: self._skippable(pending), lambda: tf.zeros([self.size], tf.bool))
            pending = pending & ~skip
            self.cross_counts.assign_add(tf.stack([tf.constant(0, tf.int64), tf.reduce_sum(
                tf.cast(skip, tf.int64))]))
        slots = tf.cast(tf.where(pending)[:, 0], tf.int32)
        n = tf.size(slots)

        def evaluate():
            # Pad to a multiple of ``lanes`` by repeating a slot; the repeats are dropped.
            padded = tf.concat([slots, tf.fill([(-n) % self.lanes], slots[0])], 0)
            if self.bound is None:  # the evaluations' graph, called, not traced again
                accuracy = self.accuracy_graph([w.value() for w in self.weights], padded)
            else:
                weights = [tf.gather(w, padded) for w in self.weights]
                # the same forward pass and accuracy as ``_evaluate_accuracy``; the anchor's
                # thresholds from its outputs, outside the vectorized map
                accuracy, outputs = tf.vectorized_map(self._arm_accuracy_outputs, weights)
                self._anchor(slots, output_bound.thresholds(
                    outputs[:n], self.labels_val, self.bound[-1].activation))
            accuracy = accuracy[:n, None]
            first = tf.gather(self.first, slots)
            new = (first < 0) & (accuracy >= self.levels[None, :])
            self.first.scatter_nd_update(slots[:, None], tf.where(new, step, first))
            self.first_accuracy.scatter_nd_update(
                slots[:, None], tf.where(new, accuracy, tf.gather(self.first_accuracy, slots)))
            at = tf.stack([slots, tf.fill([n], tf.maximum(column, 0))], 1)
            kept = tf.where(column >= 0, accuracy[:, 0], tf.gather_nd(self.dense, at))
            self.dense.scatter_nd_update(at, kept)
            self.cross_counts.assign_add(tf.stack([tf.cast(n, tf.int64),
                                                   tf.constant(0, tf.int64)]))
            return tf.constant(0)

        tf.cond(n > 0, evaluate, lambda: tf.constant(0))

    def cross_at_start(self) -> None:
        """Step 0's crossings: the levels each arm's starting val_accuracy already reaches.
        Computed by the evaluations' accuracy graph, the loop's computation bit for bit, so
        that no graph of its own is traced for it (0.2 s of each group's 2); the bound's
        first anchor is then the loop's first evaluation. Nothing is crossed before step 0:
        called right after ``load``."""
        slots = np.flatnonzero(self.active)
        accuracy = self.evaluate(self.snapshot(), full=False, slots=slots)["val_accuracy"]
        accuracy = accuracy[slots, None]
        reached = accuracy >= self.levels.numpy()[None, :]
        first, first_accuracy = self.first.numpy(), self.first_accuracy.numpy()
        first[slots] = np.where(reached, 0, -1)
        first_accuracy[slots] = np.where(reached, accuracy, first_accuracy[slots])
        self.first.assign(first)
        self.first_accuracy.assign(first_accuracy)
        self.cross_counts.assign_add(np.array([len(slots), 0], "int64"))

    def _anchor(self, slots, thresholds) -> None:
        """Make the current weights of ``slots`` their anchor, with its ``thresholds``."""
        import tensorflow as tf

        at = slots[:, None]
        for anchor, w in zip(self.anchors, self.weights, strict=True):
            anchor.scatter_nd_update(at, tf.gather(w, slots))
        self.thresholds.scatter_nd_update(at, thresholds)
        self.anchored.scatter_nd_update(at, tf.ones_like(slots))

    def crossings(self) -> list[dict[float, tuple[int, float]]]:
        """Per slot: level -> (first step at or above it, val_accuracy there), levels crossed
        so far only."""
        first, accuracy = self.first.numpy(), self.first_accuracy.numpy()
        levels = self.config.crossing_levels
        return [{level: (int(first[k, j]), float(accuracy[k, j]))
                 for j, level in enumerate(levels) if first[k, j] >= 0}
                for k in range(self.size)]

    def snapshot(self) -> list:
        """The slots' current weights as tensors: later steps leave them unchanged (a
        variable that is updated while its value is still referenced is copied first)."""
        return [w.value() for w in self.weights]

    def evaluate(self, weights: list, full: bool = True,
                 slots: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every logged metric (or val_accuracy alone) at a snapshot of the ``slots`` (every
        slot if not given), as arrays [K], NaN in the slots not evaluated. An arm's values
        do not depend on which other slots are evaluated with it (per arm, or vectorized
        over a multiple of ``lanes``)."""
        slots = np.arange(self.size) if slots is None else np.asarray(slots)
        padded = np.concatenate([slots, np.repeat(slots[:1], (-len(slots)) % self.lanes)])
        accuracy = self.accuracy_graph(weights, padded.astype("int32")).numpy()[:len(slots)]
        columns = {"val_accuracy": accuracy}
        if full:
            values = self.evaluate_graph(weights, slots.astype("int32")).numpy()
            # val_accuracy as the crossings see it, bit for bit (an extra forward pass per
            # arm: the full evaluation's own may round a near-tie of outputs the other way)
            columns = {name: accuracy if name == "val_accuracy" else values[:, i]
                       for i, name in enumerate(self.names)}
        out = {name: np.full(self.size, np.nan) for name in columns}
        for name, column in columns.items():
            out[name][slots] = column
        return out

    # ---- bookkeeping ----

    def record(self, step: int, metrics: dict[str, np.ndarray], results: list[ArmResult],
               at_ms: int | None = None, taken: np.ndarray | None = None) -> None:
        """Add one evaluation to the loaded arms' results (slot order); freeze any arm that
        has just diverged. Frozen arms, spare slots and slots not ``taken`` (at a dense step:
        no level left to cross) are not recorded."""
        for k, result in enumerate(results):
            if not self.active[k] or (taken is not None and not taken[k]):
                continue
            result.record(step, {name: float(values[k]) for name, values in metrics.items()},
                          at_ms)
            if result.diverged_at == step:
                self.freeze(k)

    def freeze(self, k: int) -> None:
        """Stop arm k: zero its learning rate and weights and put its optimizer state back to
        the start (NaN costs time, never results). Keras' own optimizer variables are
        ``keras.Variable``s, with no scatter update of their own: every slot variable is
        assigned its value with slot k replaced. Only variables shaped like their weight
        ([K, ...]) hold slots; the iteration counter is shared by every arm and untouched."""
        self.active[k] = False
        if self.bound is not None:
            _reset_slot(self.anchored, k, 0)
        _reset_slot(self.lr, k, 0.0)
        for w in self.weights:
            _reset_slot(w, k, 0.0)
        for opt, fresh, w in zip(self.optimizers, self.fresh_state, self.weights, strict=True):
            for variable, start in zip(opt.variables, fresh, strict=True):
                if tuple(variable.shape) == tuple(w.shape):
                    _reset_slot(variable, k, start[k])


def _clip_per_arm(grads: list, clipping: dict) -> list:
    """Keras' ``clipnorm`` (each variable's gradient) or ``global_clipnorm`` (all of them)
    with each arm's own norm: over every axis but the arm axis. The formulas are Keras'
    (``BaseOptimizer._clip_by_norm``, ``clip_by_global_norm``); each arm's squares are summed
    as one contiguous row, the same way in every slot."""
    import tensorflow as tf

    if not clipping:
        return grads
    squares = [tf.reduce_sum(tf.reshape(tf.square(g), [g.shape[0], -1]), 1) for g in grads]

    def per_arm(value, g):  # [K] -> broadcastable over g
        return tf.reshape(value, [-1] + [1] * (len(g.shape) - 1))

    if "clipnorm" in clipping:
        clip = clipping["clipnorm"]
        clipped = []
        for g, l2sum in zip(grads, squares, strict=True):
            l2sum = per_arm(l2sum, g)
            positive = l2sum > 0  # Keras' two-tap where: no NaN gradient at 0
            l2norm = tf.where(positive, tf.sqrt(tf.where(positive, l2sum, 1.0)), l2sum)
            clipped.append(g * clip / tf.maximum(l2norm, clip))
        return clipped
    clip = clipping["global_clipnorm"]
    norm = tf.sqrt(tf.add_n(squares))
    scale = clip * tf.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)  # NaN if norm is
    return [g * per_arm(scale, g) for g in grads]                       # not finite


def _reset_slot(variable, k: int, value) -> None:
    """Assign ``value`` to slot k of a stacked variable (a ``tf.Variable`` or a
    ``keras.Variable``), leaving the other slots' bits as they are."""
    import tensorflow as tf

    current = tf.convert_to_tensor(variable)
    row = tf.broadcast_to(tf.cast(value, current.dtype), [1, *current.shape[1:]])
    variable.assign(tf.tensor_scatter_nd_update(current, [[k]], row))


# The training loop returns to Python at every full evaluation and at least this often (in
# parts of the budget), so that progress and its ETA move steadily however the full
# evaluations are spaced (one epoch of MNIST: 2,048 to 4,096 is 41% of the budget).
PROGRESS_PARTS = 20


def _stops(schedule: Schedule) -> list[tuple[int, bool]]:
    """(step, full evaluation here?) where the training loop returns to Python."""
    every = max(1, -(-schedule.total_steps // PROGRESS_PARTS))
    full = set(schedule.steps)
    return [(s, s in full) for s in sorted(full | set(range(every, schedule.total_steps,
                                                              every)))]


def _done(value) -> Future:
    future = Future()
    future.set_result(value)
    return future


def train_group(group: _Group, arms: list[Arm],
                advance: Callable[[float], None] = lambda arms_done: None) -> list[ArmResult]:
    """Train a chunk of arms in the group's slots; returns their results in the same order.
    ``advance`` hears of progress in arms (fractions of the chunk as its steps go by)."""
    import tensorflow as tf

    group.load(arms)
    results = [ArmResult(started_ms=now_ms()) for _ in arms]
    group.cross_at_start()
    evaluations = deque()  # (step, when the weights were taken, future metrics), step order
    evaluator = ThreadPoolExecutor(1, thread_name_prefix="evaluate")
    dense = np.array(group.dense_steps, dtype=int)

    def record_finished(wait: bool = False) -> None:
        while evaluations and (wait or evaluations[0][2].done()):
            step, at_ms, metrics = evaluations.popleft()
            values = metrics.result()
            taken = values.pop("taken", None)  # a dense step's: the slots evaluated there
            group.record(step, values, results, at_ms, taken)

    previous, done, previous_ms = 0, 0.0, now_ms()
    try:
        for step, full in _stops(group.schedule):
            if step:
                if not group.active.any():  # every arm has diverged
                    break
                group.watch.assign(group.active)  # frozen arms have nothing to cross
                group.run(tf.constant(previous), tf.constant(step))
                _queue_dense(group, dense, previous, step, previous_ms, evaluations)
                progress = len(arms) * (step - previous) / group.schedule.total_steps
                advance(progress)
                done += progress
            previous_ms = now_ms()
            if full:
                evaluations.append((step, previous_ms,
                                    evaluator.submit(group.evaluate, group.snapshot(), True,
                                                     np.flatnonzero(group.active))))
            record_finished()  # a diverged arm is frozen as soon as its evaluation is in
            previous = step
        record_finished(wait=True)
    finally:
        evaluator.shutdown(cancel_futures=True)
    for result, crossed in zip(results, group.crossings(), strict=False):
        result.add_crossings(crossed)
    for result in results:  # the group's span: its arms trained together
        result.finished_ms = now_ms()
    advance(len(arms) - done)  # the steps an early stop skipped
    return results


def _queue_dense(group: _Group, dense: np.ndarray, previous: int, step: int,
                 previous_ms: int, evaluations: deque) -> None:
    """Queue the dense val_accuracy values the loop took in (previous, step], read in one
    transfer; each is timed by its share of the interval's wall time."""
    columns = np.flatnonzero((dense > previous) & (dense <= step))
    if not len(columns):
        return
    values = group.dense[:, columns[0]:columns[-1] + 1].numpy()
    span = now_ms() - previous_ms
    for j, column in enumerate(columns):
        at_ms = previous_ms + span * int(dense[column] - previous) // (step - previous)
        evaluations.append((int(dense[column]), at_ms, _done(
            {"val_accuracy": values[:, j], "taken": ~np.isnan(values[:, j])})))


def train_arms(arms: list[Arm], config: StudyConfig, splits: Splits,
               advance: Callable[[float], None] = lambda arms_done: None,
               warm: dict | None = None) -> Iterator[tuple[Arm, ArmResult]]:
    """Yield (arm, result) for every arm, group by group, in chunks under the memory budget.
    Each group's graphs come from the groups this process has traced (``group_for``);
    ``warm``: groups to use first, by (group, slots) (``load`` puts every chunk's state in
    afresh)."""
    from study.backend import start_tensorflow

    start_tensorflow()
    warm = dict(warm or {})
    groups = by_group(arms)
    for key, members in groups.items():
        size = chunk_size(config, splits, len(members))
        group = warm.pop((key, slots_for(size)), None) or group_for(
            slots_for(size), config, splits, key[0], optimizer_of(config, members[0]))
        for first in range(0, len(members), size):
            chunk = members[first:first + size]
            yield from zip(chunk, train_group(group, chunk, advance), strict=True)


# The groups this process has traced (``study.train.traced``).
TRACED: Traced[_Group] = Traced()


def group_key(size: int, config: StudyConfig, splits: Splits, loss: str,
              optimizer: OptimizerConfig) -> tuple:
    """Everything ``_Group`` builds its graphs and constants from: two groups with the same
    key train the same bits. (A new input of ``_Group.__init__`` belongs here too.)"""
    spec = loss_spec(config, loss)
    return (size, splits.fingerprint, config.model.model_dump_json(),
            repr(config.inits.get("fixed")), config.batch_size, config.epochs,
            config.crossing_levels, spec.name, spec.output, spec.labels, spec.summary,
            optimizer.name, repr(sorted(optimizer.options.items())),
            optimizer.schedule and optimizer.schedule.model_dump_json(),
            BOUND, BOUND_MIN_WORK, len(train_eval_rows(len(splits.x_train))))


def group_for(size: int, config: StudyConfig, splits: Splits, loss: str,
              optimizer: OptimizerConfig) -> _Group:
    """A group of ``size`` slots, traced before in this process if it has been."""
    return TRACED.get(group_key(size, config, splits, loss, optimizer),
                      lambda: _Group(size, config, splits, loss, optimizer),
                      lambda group: group.nbytes)


@dataclass(frozen=True)
class Costs:
    """What the batched trainer costs on this machine, now, measured on a study's own first
    group (``probe``): the estimate's parts."""

    slots: int  # of the measured group
    trace_s: float  # a group's first calls: tracing its graphs, once per group
    step_s: float  # one training step of all the slots, no crossing evaluated
    cross_s: float  # one slot's val_accuracy evaluated in the loop (crossings, dense steps)
    full_s: float  # one slot's full evaluation (every measure)
    traced: int = 0  # the study's groups this process has traced (the probe's at least)


def probe(config: StudyConfig, splits: Splits, arms: list[Arm],
          steps: int = 8, repeats: int = 3) -> Costs:
    """Time a few real steps of the first group of ``arms`` at its real size: its tracing,
    its steps with and without the crossings' evaluation, and one full evaluation, each the
    fastest of ``repeats`` timings (a single one of a few milliseconds was off by a third on
    a quiet machine). The probe costs about 2 x ``steps`` x ``repeats`` steps and
    ``repeats`` full evaluations; its group stays traced (``TRACED``) for training, so its
    tracing is not paid twice."""
    import time

    import tensorflow as tf

    from study.backend import start_tensorflow

    start_tensorflow()
    first = [a for a in arms if a.group == arms[0].group]
    size = slots_for(chunk_size(config, splits, len(first)))
    total = Schedule(steps_per_epoch(len(splits.x_train), config.batch_size),
                     config.epochs).total_steps
    # steps 1 .. total can be timed (run(a, b) trains a .. b - 1 and crosses at b)
    repeats = max(1, min(repeats, (total - 1) // 2))
    steps = min(steps, (total - 1) // (2 * repeats))  # 0: a budget too short to time
    started = time.perf_counter()
    group = group_for(size, config, splits, arms[0].loss, optimizer_of(config, arms[0]))
    group.load(first[:size])
    group.cross_at_start()
    group.run(tf.constant(0), tf.constant(1))
    group.evaluate(group.snapshot())
    if group.trace_s is None:  # traced now (or by an earlier training, then less than this)
        group.trace_s = time.perf_counter() - started

    def timed(call) -> float:
        began = time.perf_counter()
        call()
        return time.perf_counter() - began

    def steps_from(at: int, crossing: bool) -> float:
        group.watch.assign(np.full(size, crossing))  # every slot pending, or none
        group.first.assign(np.full(group.first.shape, -1, "int32"))
        group.skipping.assign(not crossing)  # an evaluation's cost, not the steps it skips
        try:
            return timed(lambda: group.run(tf.constant(at), tf.constant(at + steps)))
        finally:
            group.skipping.assign(True)

    full = min(timed(lambda: group.evaluate(group.snapshot())) for _ in range(repeats))
    train = crossing = 0.0
    if steps:
        train = min(steps_from(1 + 2 * r * steps, False) for r in range(repeats)) / steps
        crossing = min(steps_from(1 + (2 * r + 1) * steps, True)
                       for r in range(repeats)) / steps
    return Costs(size, group.trace_s, train, max(0.0, crossing - train) / size, full / size,
                 traced=_traced_groups(config, splits, arms))


def _traced_groups(config: StudyConfig, splits: Splits, arms: list[Arm]) -> int:
    """How many of the groups that will train ``arms`` this process has traced already."""
    groups = by_group(arms)
    return sum(group_key(slots_for(chunk_size(config, splits, len(members))), config, splits,
                         key[0], optimizer_of(config, members[0])) in TRACED
               for key, members in groups.items())
