"""Init schemes against their definitions in DESIGN.md, with hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from study.errors import ConfigError
from study.inits import INITS, initial_weights

SIZES = [64, 30, 10]


def _forward_preactivation(weights, x):
    h = x
    for i in range(0, len(weights) - 2, 2):
        h = 1 / (1 + np.exp(-(h @ weights[i] + weights[i + 1])))
    return h @ weights[-2] + weights[-1]


def test_glorot_is_kerases_default_distribution():
    w = initial_weights("glorot", 0.0, 0, SIZES)
    assert [a.shape for a in w] == [(64, 30), (30,), (30, 10), (10,)]
    assert all(a.dtype == np.float32 for a in w)
    limit = np.sqrt(6 / (64 + 30))  # 0.2526
    assert np.abs(w[0]).max() <= limit and np.abs(w[0]).max() > 0.95 * limit
    assert np.std(w[0]) == pytest.approx(limit / np.sqrt(3), rel=0.05)
    assert not w[1].any() and not w[3].any()


def test_same_seed_same_weights_other_seed_other_weights():
    a, b = initial_weights("glorot", 0, 7, SIZES), initial_weights("glorot", 0, 7, SIZES)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = initial_weights("glorot", 0, 8, SIZES)
    assert not np.array_equal(a[0], c[0])


def test_scaled_is_the_control_times_k():
    control = initial_weights("glorot", 0, 3, SIZES)
    scaled = initial_weights("scaled", 4.0, 3, SIZES)
    for c, s in zip(control, scaled, strict=True):
        np.testing.assert_array_equal(s, c * np.float32(4.0))


@pytest.mark.parametrize("m", [2.0, 4.0])
def test_saturated_wrong_puts_every_input_on_one_class(m):
    w = initial_weights("saturated_wrong", m, 5, SIZES)
    control = initial_weights("glorot", 0, 5, SIZES)
    np.testing.assert_array_equal(w[0], control[0])  # hidden layer as the control
    x = np.random.default_rng(0).uniform(size=(50, 64)).astype("float32")
    z = _forward_preactivation(w, x)
    wrong = int(np.argmax(z[0]))
    expected = np.full(10, -m)
    expected[wrong] = m
    np.testing.assert_array_equal(z, np.tile(expected, (50, 1)))
    if m == 4.0:  # Nielsen's confidently wrong start: sigma(4) = 0.982
        assert 1 / (1 + np.exp(-m)) == pytest.approx(0.982, abs=5e-4)


def test_large_normal_is_unit_gaussian_with_gaussian_biases():
    w = initial_weights("large_normal", 0, 0, [400, 300, 10])
    assert np.std(w[0]) == pytest.approx(1.0, rel=0.02)
    assert np.mean(w[0]) == pytest.approx(0.0, abs=0.01)
    assert np.std(w[1]) == pytest.approx(1.0, rel=0.25) and w[1].any()


def test_severity_rules():
    with pytest.raises(ConfigError, match="takes no severities"):
        INITS["large_normal"].check_severities([1])
    with pytest.raises(ConfigError, match=r"severities must be > 0 .*got \[0\]"):
        INITS["scaled"].check_severities([0])
    assert INITS["glorot"].severities([]) == (0.0,)
    assert INITS["scaled"].severities([2, 8]) == (2, 8)
