"""Init schemes against their definitions in DESIGN.md, on the registered Keras models."""

from __future__ import annotations

import numpy as np
import pytest

from study.config import ModelConfig
from study.errors import ConfigError
from study.inits import INITS, Starts
from study.models import build_model

MLP = ModelConfig(hidden=(30,))


@pytest.fixture(scope="session")
def starts(tf):
    return Starts(build_model(MLP, (64,), 10, "sigmoid"))


def _forward_preactivation(weights, x):
    h = x
    for i in range(0, len(weights) - 2, 2):
        h = 1 / (1 + np.exp(-(h @ weights[i] + weights[i + 1])))
    return h @ weights[-2] + weights[-1]


def test_glorot_is_the_models_own_initializers(starts):
    w = starts("glorot", 0.0, 0)
    assert [a.shape for a in w] == [(64, 30), (30,), (30, 10), (10,)]
    assert all(a.dtype == np.float32 for a in w)
    limit = np.sqrt(6 / (64 + 30))  # Keras' GlorotUniform: 0.2526
    assert np.abs(w[0]).max() <= limit and np.abs(w[0]).max() > 0.95 * limit
    assert np.std(w[0]) == pytest.approx(limit / np.sqrt(3), rel=0.05)
    assert not w[1].any() and not w[3].any()  # Keras' zero biases


def test_a_models_own_initializer_is_used(tf):
    import keras

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(
        200, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        bias_initializer="ones"), keras.layers.Dense(10)])
    kernel, bias, *_ = Starts(model)("glorot", 0.0, 3)
    assert np.std(kernel) == pytest.approx(0.01, rel=0.03)
    assert np.all(bias == 1.0)


def test_a_start_depends_on_its_seed_alone(tf, starts):
    a = starts("glorot", 0, 7)
    fresh = Starts(build_model(MLP, (64,), 10, "softmax"))  # another output, a new model
    fresh("glorot", 0, 8)  # drawn first: no global state may leak into seed 7's draw
    b = fresh("glorot", 0, 7)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], fresh("glorot", 0, 8)[0])


def test_scaled_is_the_control_kernels_times_k(starts):
    control = starts("glorot", 0, 3)
    scaled = starts("scaled", 4.0, 3)
    for c, s in zip(control, scaled, strict=True):
        np.testing.assert_array_equal(s, c * np.float32(4.0))


@pytest.mark.parametrize("m", [2.0, 4.0])
def test_saturated_wrong_puts_every_input_on_one_class(starts, m):
    w = starts("saturated_wrong", m, 5)
    control = starts("glorot", 0, 5)
    np.testing.assert_array_equal(w[0], control[0])  # hidden layer as the control
    x = np.random.default_rng(0).uniform(size=(50, 64)).astype("float32")
    z = _forward_preactivation(w, x)
    wrong = int(np.argmax(z[0]))
    expected = np.full(10, -m)
    expected[wrong] = m
    np.testing.assert_array_equal(z, np.tile(expected, (50, 1)))
    if m == 4.0:  # Nielsen's confidently wrong start: sigma(4) = 0.982
        assert 1 / (1 + np.exp(-m)) == pytest.approx(0.982, abs=5e-4)


def test_large_normal_is_unit_gaussian_with_gaussian_biases(tf):
    w = Starts(build_model(ModelConfig(hidden=(300,)), (400,), 10, "sigmoid"))(
        "large_normal", 0, 0)
    assert np.std(w[0]) == pytest.approx(1.0, rel=0.02)
    assert np.mean(w[0]) == pytest.approx(0.0, abs=0.01)
    assert np.std(w[1]) == pytest.approx(1.0, rel=0.25) and w[1].any()


def test_schemes_work_on_the_cnn(tf):
    cnn = build_model(ModelConfig(kind="cnn", filters=(4,), hidden=()), (8, 8), 10, "sigmoid")
    starts = Starts(cnn)
    control, scaled = starts("glorot", 0, 1), starts("scaled", 2.0, 1)
    assert [a.shape for a in control] == [(3, 3, 1, 4), (4,), (64, 10), (10,)]
    np.testing.assert_array_equal(scaled[0], control[0] * np.float32(2))  # conv kernels too
    saturated = starts("saturated_wrong", 3.0, 1)
    assert not saturated[2].any() and sorted(saturated[3])[-2:] == [-3.0, 3.0]


def test_severity_rules():
    with pytest.raises(ConfigError, match="takes no severities"):
        INITS["large_normal"].check_severities([1])
    with pytest.raises(ConfigError, match=r"severities must be > 0 .*got \[0\]"):
        INITS["scaled"].check_severities([0])
    assert INITS["glorot"].severities([]) == (0.0,)
    assert INITS["scaled"].severities([2, 8]) == (2, 8)
