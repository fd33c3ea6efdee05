"""Start TensorFlow once, quietly and deterministically, before any Keras code runs."""

from __future__ import annotations

import contextlib
import functools
import logging
import os


@contextlib.contextmanager
def native_stderr_silenced():
    # TensorFlow's C++ notices (oneDNN, CUDA probing on a CPU-only machine, tf.data's graph
    # version notes) go straight to file descriptor 2 and ignore TF_CPP_MIN_LOG_LEVEL in
    # recent releases. Python exceptions still surface: they are raised, not printed.
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


@functools.cache
def start_tensorflow():
    """Import TensorFlow and Keras (TensorFlow backend) with op determinism on; idempotent."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_stderr_silenced():
        import keras
        import tensorflow as tf

        _set_threads(tf)
        tf.constant(0.0)  # the device probe runs on first use: keep it inside the silence
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"KERAS_BACKEND is {keras.backend.backend()!r}; this harness "
                           "needs 'tensorflow'")
    tf.config.experimental.enable_op_determinism()
    logger = tf.get_logger()
    if not any(isinstance(f, _FirstTraceOfAGroup) for f in logger.filters):
        logger.addFilter(_FirstTraceOfAGroup())
    return tf


class _FirstTraceOfAGroup(logging.Filter):
    """Each group of arms traces its own graphs once, by design (its shapes are its own).
    TensorFlow counts those first traces of one method across groups as retracing and warns
    in a 6-line notice: noise in every study's log, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _set_threads(tf) -> None:
    """One thread per op, two ops at a time. The models are small, so most ops are too: a
    thread hand-off inside an op costs more than it saves (measured: the batched trainer's
    step 0.79 ms with one thread per op against 1.24 ms with two, on 2 cores), and the second
    core goes to running an evaluation beside the training steps."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(2)
    except RuntimeError:  # TensorFlow was already running in this process: keep its settings
        pass
