"""The batched trainer: every arm of a group trained as one TensorFlow computation.

A study's arms share the dataset, the model shape, the batch size and the budget, so their
weights stack into tensors shaped [K, ...] and one graph call runs many SGD steps for all K
arms at once. Each arm keeps its own loss, output activation, learning rate, starting weights
and minibatch order. The maths is the reference trainer's (Keras' Dense, losses computed from
logits as Keras does behind a sigmoid or softmax, Keras' SGD update), checked arm by arm
against it in the tests.

Per-step Python and Keras overhead, not arithmetic, is what a small MLP costs; here it is
paid once per evaluation interval for the whole group. Arms are trained in chunks that fit a
memory budget, in one set of slots whose graphs are traced once. Evaluations run on a second
thread, on snapshots of the weights, while training goes on: a full-dataset evaluation of the
group costs as much as many training steps, and the machine has a second core for it. An arm
that diverges is evaluated, recorded and then frozen (learning rate 0, weights zeroed) so that
its NaNs cannot cost time; the arms' computations never mix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from study.config import StudyConfig
from study.data import Splits
from study.grid import Arm
from study.inits import initial_weights
from study.losses import LOSSES
from study.models import layer_sizes
from study.train.common import (
    METRICS,
    ArmResult,
    Schedule,
    batch_order,
    is_single_neuron,
    neuron_metrics,
    steps_per_epoch,
)
from study.yardsticks import accuracy_tf, yardsticks_tf

FLOAT = "float32"


def bytes_per_arm(config: StudyConfig, splits: Splits) -> int:
    """A generous estimate of the memory one arm needs: the full-batch evaluation dominates
    (activations and their gradients on the training and validation sets), plus the weights,
    velocities and the arm's minibatch order."""
    sizes = layer_sizes(splits.n_features, config.model.hidden, splits.n_classes)
    units = sum(sizes[1:])
    rows = len(splits.x_train) + len(splits.x_val)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    order = steps_per_epoch(len(splits.x_train), config.batch_size) * config.epochs
    return 4 * (4 * rows * units + 4 * params) + 4 * order * config.batch_size


# Past about this many arms a group gains little per arm-step (on 2 cores, the default
# study's 540 arms train in 11.9 s in groups of 64, 10.2 s of 96, 9.0 s of 180), while the
# last group's MLflow writes (about 25 ms an arm) are the one part of logging that no training
# overlaps: groups of 90 left the default study waiting 10-12% of its time, groups of 78 8.5%.
GROUP_CAP = 80


def chunk_size(config: StudyConfig, splits: Splits, n_arms: int) -> int:
    """Arms per chunk: within the memory budget and the cap, and as even as can be, since the
    last chunk's spare slots cost as much as arms (200 arms train as 100 + 100, not 180 + 20
    in 180 slots)."""
    budget = config.memory_budget_mb * 2**20
    cap = max(1, min(n_arms, GROUP_CAP, budget // bytes_per_arm(config, splits)))
    chunks = -(-n_arms // cap)
    return -(-n_arms // chunks)


def _shared_input_matmul(x, kernel):
    """x [M, d] times each arm's kernel [K, d, h], as [K, M, h]: one matrix product with the
    K kernels side by side, the fastest form of a pass over a whole dataset."""
    import tensorflow as tf

    k, d, h = kernel.shape
    side_by_side = tf.reshape(tf.transpose(kernel, [1, 0, 2]), [d, k * h])
    return tf.transpose(tf.reshape(tf.linalg.matmul(x, side_by_side), [-1, k, h]), [1, 0, 2])


class _Group:
    """K arm slots as stacked variables, with graph functions to train and evaluate them.

    The graphs are traced once per study and reused for every chunk: ``load`` assigns a
    chunk's starts, learning rates, minibatch orders and losses to the slots.
    """

    def __init__(self, size: int, config: StudyConfig, splits: Splits):
        import tensorflow as tf

        self.size, self.config, self.splits = size, config, splits
        self.sizes = layer_sizes(splits.n_features, config.model.hidden, splits.n_classes)
        self.activation = getattr(tf.nn, config.model.activation)
        shapes = [s for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True)
                  for s in [(a, b), (b,)]]
        self.weights = [tf.Variable(tf.zeros((size, *shape))) for shape in shapes]
        self.momentum = config.optimizer.momentum
        self.velocity = [tf.Variable(tf.zeros_like(w)) for w in self.weights] \
            if self.momentum else []
        self.lr = tf.Variable(tf.zeros(size))
        n_train = len(splits.x_train)
        self.schedule = Schedule(steps_per_epoch(n_train, config.batch_size), config.epochs)
        self.order = tf.Variable(tf.zeros((size, self.schedule.total_steps, config.batch_size),
                                          "int32"))
        # which loss spec each slot trains with: one column per loss of the study
        self.specs = tuple(config.losses)
        self.spec = tf.Variable(tf.zeros(size, "int32"))  # index into specs
        self.softmax_mask = tf.Variable(tf.zeros((size, 1, 1), tf.bool))
        self.active = np.zeros(size, bool)

        self.x_train = tf.constant(splits.x_train)
        self.x_val = tf.constant(splits.x_val)
        onehot = (splits.t_train if splits.t_train is not None
                  else np.eye(splits.n_classes, dtype=FLOAT)[splits.y_train])
        self.y_onehot = tf.constant(onehot.astype(FLOAT))
        self.y_int = tf.constant(splits.y_train.astype("int32"))
        self.y_val = tf.constant(splits.y_val.astype("int32"))

        # No autograph: the loops are written as TensorFlow loops, and converting this
        # module's code would cost most of a second of every study's start-up.
        self.run = tf.function(self._run, autograph=False)
        self.evaluate_graph = tf.function(self._evaluate, autograph=False)

    def load(self, arms: list[Arm]) -> None:
        """Put a chunk of at most ``size`` arms in the slots; spare slots repeat the last arm
        with learning rate 0 and are never reported."""
        padded = arms + [arms[-1]] * (self.size - len(arms))
        starts = [initial_weights(a.init, a.severity, a.seed, self.sizes,
                                  given=self.config.inits.get(a.init)) for a in padded]
        for variable, layer in zip(self.weights, zip(*starts, strict=True), strict=True):
            variable.assign(np.stack(layer))
        for velocity in self.velocity:
            velocity.assign(np.zeros(velocity.shape, FLOAT))
        self.active = np.arange(self.size) < len(arms)
        self.lr.assign(np.where(self.active, [a.lr for a in padded], 0.0).astype(FLOAT))
        n_train, batch, epochs = len(self.splits.x_train), self.config.batch_size, \
            self.config.epochs
        self.order.assign(np.stack([
            batch_order(a.seed, n_train, batch, epochs).reshape(-1, batch)
            for a in padded]).astype("int32"))
        self.spec.assign(np.array([self.specs.index(a.loss) for a in padded], "int32"))
        self.softmax_mask.assign(np.array(
            [LOSSES[a.loss].output == "softmax" for a in padded])[:, None, None])

    # ---- the model and its losses ----

    def _logits(self, x, weights):
        """x: [M, d] shared by all arms (a whole dataset), or [K, M, d] per arm (each arm's
        minibatch); returns [K, M, C]."""
        import tensorflow as tf

        h = x
        n_layers = len(weights) // 2
        for i in range(n_layers):
            kernel, bias = weights[2 * i], weights[2 * i + 1]
            if h.shape.rank == 2:
                z = _shared_input_matmul(h, kernel)
            else:
                z = tf.linalg.matmul(h, kernel)  # batched: each arm's rounding is its own
            z = z + bias[:, None, :]
            h = self.activation(z) if i < n_layers - 1 else z
        return h

    def _losses(self, logits, rows):
        """Each slot's own loss, mean over the rows, [K]. rows: [K, M] or [M] indices.

        Each spec's loss is computed on its own slots only (the slots partitioned by spec,
        the losses stitched back), so no other spec's inf or NaN can reach a slot's value or
        gradient, and nothing is computed twice. The partition is a tensor: one trace serves
        every chunk, whatever its mix of losses. (Masking instead, every loss on every slot,
        leaks NaN: 0 x NaN is NaN; per-spec gathers and scatters cost 8% more per step.)"""
        import tensorflow as tf

        n = len(self.specs)
        slots = tf.dynamic_partition(tf.range(tf.shape(logits)[0]), self.spec, n)
        zs = tf.dynamic_partition(logits, self.spec, n)
        onehot = tf.gather(self.y_onehot, rows)
        labels = tf.gather(self.y_int, rows)
        if rows.shape.rank == 1:  # the same rows for every slot
            ts = [tf.broadcast_to(onehot, tf.shape(z)) for z in zs]
            ys = [tf.broadcast_to(labels, tf.shape(z)[:-1]) for z in zs]
        else:
            ts = tf.dynamic_partition(onehot, self.spec, n)
            ys = tf.dynamic_partition(labels, self.spec, n)
        losses = [tf.reduce_mean(LOSSES[name].from_logits(z, t, y), axis=1)
                  for name, z, t, y in zip(self.specs, zs, ts, ys, strict=True)]
        return tf.dynamic_stitch(slots, losses)

    # ---- training ----

    def _step(self, step):
        import tensorflow as tf

        rows = self.order[:, step, :]  # [K, B]
        with tf.GradientTape() as tape:
            logits = self._logits(tf.gather(self.x_train, rows), self.weights)
            total = tf.reduce_sum(self._losses(logits, rows))
        grads = tape.gradient(total, self.weights)
        for i, (w, g) in enumerate(zip(self.weights, grads, strict=True)):
            rate = tf.reshape(self.lr, [-1] + [1] * (len(w.shape) - 1))
            if self.momentum:  # Keras' SGD: v = momentum v - lr g; w += v
                v = self.velocity[i]
                v.assign(v * self.momentum - g * rate)
                w.assign_add(v)
            else:
                w.assign_sub(g * rate)

    def _run(self, start, stop):
        """SGD steps start, ..., stop - 1 for every slot, in one graph call."""
        import tensorflow as tf

        def body(step):
            self._step(step)
            return (step + 1,)

        tf.while_loop(lambda step: step < stop, body, (start,))

    def _evaluate(self, weights):
        """The full-dataset measures of every slot at the given weights (a snapshot)."""
        import tensorflow as tf

        rows = tf.range(tf.shape(self.x_train)[0])
        with tf.GradientTape() as tape:
            tape.watch(weights)
            logits = self._logits(self.x_train, weights)
            losses = self._losses(logits, rows)
            total = tf.reduce_sum(losses)
        grads = tape.gradient(total, weights)
        norms = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g), axis=tf.range(1, tf.rank(g)))
                                  for g in grads]))
        train_out = self._outputs(logits)
        val_out = self._outputs(self._logits(self.x_val, weights))
        metrics = {"train_loss": tf.cast(losses, tf.float64),
                   "train_accuracy": accuracy_tf(train_out, self.y_int),
                   **yardsticks_tf(val_out, self.y_val, "val"),
                   "grad_norm": tf.cast(norms, tf.float64)}
        neuron = (train_out, *weights, *grads) if is_single_neuron(self.sizes) else ()
        return tf.stack([metrics[name] for name in METRICS]), neuron

    def _outputs(self, logits):
        import tensorflow as tf

        return tf.where(self.softmax_mask, tf.nn.softmax(logits), tf.nn.sigmoid(logits))

    # ---- bookkeeping ----

    def snapshot(self) -> list:
        """The slots' current weights as tensors: later steps leave them unchanged (a
        variable that is updated while its value is still referenced is copied first)."""
        return [w.value() for w in self.weights]

    def evaluate(self, weights: list) -> dict[str, np.ndarray]:
        """Every logged metric of every slot at a snapshot, as arrays [K]."""
        values, neuron = self.evaluate_graph(weights)
        metrics = dict(zip(METRICS, values.numpy(), strict=True))
        if neuron:
            metrics.update(neuron_metrics(*(t.numpy() for t in neuron)))
        return metrics

    def record(self, step: int, metrics: dict[str, np.ndarray],
               results: list[ArmResult]) -> None:
        """Add one evaluation to the loaded arms' results (slot order); freeze any arm that
        has just diverged. Frozen arms and spare slots are not recorded."""
        for k, result in enumerate(results):
            if not self.active[k]:
                continue
            result.record(step, {name: float(values[k]) for name, values in metrics.items()})
            if result.diverged_at == step:
                self.freeze(k)

    def freeze(self, k: int) -> None:
        """Stop arm k: zero its learning rate and weights (NaN costs time, never results)."""
        self.active[k] = False
        self.lr.scatter_nd_update([[k]], [0.0])
        for w in self.weights + self.velocity:
            w.scatter_nd_update([[k]], np.zeros([1, *w.shape[1:]], FLOAT))


def train_group(group: _Group, arms: list[Arm],
                advance: Callable[[float], None] = lambda arms_done: None) -> list[ArmResult]:
    """Train a chunk of arms in the group's slots; returns their results in the same order.
    ``advance`` hears of progress in arms (fractions of the chunk as its steps go by)."""
    import tensorflow as tf

    group.load(arms)
    results = [ArmResult() for _ in arms]
    evaluations = deque()  # (step, future metrics), in step order
    evaluator = ThreadPoolExecutor(1, thread_name_prefix="evaluate")

    def record_finished(wait: bool = False) -> None:
        while evaluations and (wait or evaluations[0][1].done()):
            step, metrics = evaluations.popleft()
            group.record(step, metrics.result(), results)

    previous, done = 0, 0.0
    try:
        for step in group.schedule.steps:
            if step:
                if not group.active.any():  # every arm has diverged
                    break
                group.run(tf.constant(previous), tf.constant(step))
                progress = len(arms) * (step - previous) / group.schedule.total_steps
                advance(progress)
                done += progress
            evaluations.append((step, evaluator.submit(group.evaluate, group.snapshot())))
            record_finished()  # a diverged arm is frozen as soon as its evaluation is in
            previous = step
        record_finished(wait=True)
    finally:
        evaluator.shutdown(cancel_futures=True)
    advance(len(arms) - done)  # the steps an early stop skipped
    return results


def train_arms(arms: list[Arm], config: StudyConfig, splits: Splits,
               advance: Callable[[float], None] = lambda arms_done: None,
               ) -> Iterator[tuple[Arm, ArmResult]]:
    """Yield (arm, result) for every arm, training them in chunks under the memory budget."""
    from study.backend import start_tensorflow

    if not arms:
        return
    start_tensorflow()
    size = chunk_size(config, splits, len(arms))
    group = _Group(size, config, splits)
    for first in range(0, len(arms), size):
        chunk = arms[first:first + size]
        yield from zip(chunk, train_group(group, chunk, advance), strict=True)
