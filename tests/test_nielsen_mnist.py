"""configs/nielsen_mnist.yaml: it parses and passes every pre-flight check against an mnist.npz
in a temporary Keras cache, and its rates are Nielsen's etas (his update, computed by hand,
against the registered Keras losses)."""

from __future__ import annotations

import numpy as np
import pytest

from study.cli import main
from study.config import load_config
from study.data import load_study_data
from study.losses import LOSSES
from study.plan import check_fits_data, check_memory
from study.run import check_model_and_starts
from tests.conftest import CONFIGS

NIELSEN = CONFIGS / "nielsen_mnist.yaml"


@pytest.fixture
def cached_mnist(tmp_path, monkeypatch):
    """A small mnist.npz (600 + 100 images) in Keras' layout, where Keras keeps it."""
    rng = np.random.default_rng(0)
    (tmp_path / "datasets").mkdir()
    np.savez(tmp_path / "datasets" / "mnist.npz",
             x_train=rng.integers(0, 256, (600, 28, 28), dtype=np.uint8),
             y_train=(np.arange(600) % 10).astype(np.uint8),
             x_test=rng.integers(0, 256, (100, 28, 28), dtype=np.uint8),
             y_test=(np.arange(100) % 10).astype(np.uint8))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))


def test_the_config_shows_and_passes_the_pre_flight_checks(cached_mnist, capsys):
    assert main(["show", str(NIELSEN)]) == 0
    assert "6 arms on mnist, 30 epochs at batch size 10" in capsys.readouterr().out
    config = load_config(NIELSEN)
    splits = load_study_data(config)
    check_fits_data(config, splits)
    check_memory(config, splits)
    model, params = check_model_and_starts(config, splits)
    assert model == "mlp-784-30-10-sigmoid" and params == 784 * 30 + 30 + 30 * 10 + 10


def _gradient_wrt_outputs(loss: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """d(the registered Keras loss on a batch)/dz for sigmoid outputs sigma(z)."""
    import tensorflow as tf

    z = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z)
        value = LOSSES[loss].make()(tf.constant(y), tf.sigmoid(z))
    return tape.gradient(value, z).numpy()


def test_the_rates_are_nielsens_etas(tf):
    """Nielsen's step on a mini-batch of m: eta/m * sum_x dC_x/dz, with dC_x/dz = (a - y)
    for his cross-entropy and (a - y) a (1 - a) for his quadratic cost (ch. 3, eqs. 66 and
    55's output error). The config's rate times the Keras loss's gradient must equal it."""
    rates = load_config(NIELSEN).optimizers[0].lr
    rng = np.random.default_rng(0)
    m = 10
    z = rng.normal(0, 2, (m, 10))
    y = np.eye(10)[rng.integers(0, 10, m)]
    a = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(rates["bce"][0] * _gradient_wrt_outputs("bce", z, y),
                               0.5 / m * (a - y), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(rates["quadratic"][0] * _gradient_wrt_outputs("quadratic", z, y),
                               3.0 / m * (a - y) * a * (1 - a), rtol=1e-4, atol=1e-7)
