"""The batched trainer against the reference trainer (one Keras fit per arm), arm by arm."""

from __future__ import annotations

import numpy as np
import pytest

from study.config import load_config
from study.grid import expand_grid
from study.losses import LOSSES
from study.train import batched, reference
from tests.conftest import CONFIGS

ALL_INITS = "inits={glorot: [], scaled: [3], saturated_wrong: [4], large_normal: []}"


def _config(*overrides):
    return load_config(CONFIGS / "smoke.yaml", ["epochs=3", *overrides])


def _train(module, config, splits):
    return {arm.key: result for arm, result in module.train_arms(expand_grid(config), config,
                                                                 splits)}


def _assert_same_curves(expected, actual, tolerance):
    assert expected.keys() == actual.keys()
    for key in expected:
        assert expected[key].history.keys() == actual[key].history.keys()
        for name in expected[key].history:
            assert expected[key].steps(name) == actual[key].steps(name)
            np.testing.assert_allclose(actual[key].series(name), expected[key].series(name),
                                       rtol=tolerance, atol=tolerance, err_msg=f"{key} {name}")


def test_every_loss_and_init_matches_the_reference_trainer(tf, digits):
    config = _config(f"losses=[{', '.join(LOSSES)}]", ALL_INITS)
    assert len(expand_grid(config)) == 6 * 4
    _assert_same_curves(_train(reference, config, digits), _train(batched, config, digits),
                        1e-5)


def test_momentum_matches_the_reference_trainer(tf, digits):
    config = _config("losses=[cce, mse]", "inits={scaled: [3]}", "optimizer.momentum=0.9",
                     "optimizer.lr=0.1")
    _assert_same_curves(_train(reference, config, digits), _train(batched, config, digits),
                        1e-5)


def _relu(lrs):
    return _config("epochs=2", "model.activation=relu", "losses=[cce, mse]",
                   "inits={glorot: [], scaled: [3]}", "seeds=[0, 1]", f"optimizer.lr={lrs}")


def test_a_diverging_arm_is_isolated(tf, digits):
    with_bad = _train(batched, _relu("[0.5, 1.0e+30]"), digits)
    diverged = {key for key, result in with_bad.items() if result.diverged}
    assert diverged == {f"cce|{start}|seed={s}|lr=1e+30" for start in ["glorot:0", "scaled:3"]
                        for s in (0, 1)}
    for key in diverged:  # evaluated at step 1, then stopped
        assert with_bad[key].steps() == [0, 1] and with_bad[key].diverged_at == 1
    # The same group with a harmless arm in each diverging arm's place: bit for bit the same.
    harmless = _train(batched, _relu("[0.5, 0.3]"), digits)
    healthy = [key for key in harmless if "lr=0.5" in key]
    assert all(with_bad[key].history == harmless[key].history for key in healthy)
    # Without those arms at all, the group is smaller and SIMD alignment of each arm's slice
    # can change the last bit of float32 rounding; nothing more.
    without = _train(batched, _relu("[0.5]"), digits)
    _assert_same_curves(without, {key: with_bad[key] for key in without}, 1e-6)


def test_chunks_under_a_memory_budget_give_the_same_curves(tf, digits):
    config = _config("epochs=1", "seeds=[0, 1]")
    per_arm = batched.bytes_per_arm(config, digits)
    assert batched.chunk_size(config, digits, 16) == 16
    small = _config("epochs=1", "seeds=[0, 1]", f"memory_budget_mb={64}")
    assert batched.chunk_size(small, digits, 16) == min(16, 64 * 2**20 // per_arm)
    tiny = small.model_copy(update={"memory_budget_mb": 1})  # below 64: only via code
    assert batched.chunk_size(tiny, digits, 16) == 1
    _assert_same_curves(_train(batched, config, digits), _train(batched, tiny, digits), 1e-6)


def test_an_evaluation_sees_its_snapshot_while_training_goes_on(tf, digits):
    """Evaluations run beside training on snapshots of the weights: a snapshot keeps its
    values however many steps follow, and evaluating it later gives the same metrics."""
    config = _config("epochs=1")
    arms = expand_grid(config)
    group = batched._Group(len(arms), config, digits)
    group.load(arms)
    snapshot = group.snapshot()
    before = [w.numpy().copy() for w in snapshot]
    metrics = group.evaluate(snapshot)
    group.run(tf.constant(0), tf.constant(20))
    assert not np.array_equal(group.weights[0].numpy(), before[0])  # training moved on
    for kept, copy in zip(snapshot, before, strict=True):
        np.testing.assert_array_equal(kept.numpy(), copy)
    later = group.evaluate(snapshot)
    for name in metrics:
        np.testing.assert_array_equal(later[name], metrics[name])


def test_progress_adds_up_to_the_number_of_arms(tf, digits):
    config = _config("epochs=1")
    seen = []
    list(batched.train_arms(expand_grid(config), config, digits, seen.append))
    assert sum(seen) == pytest.approx(len(expand_grid(config)))
    assert len(seen) > 1  # it moves during training, not only at the end


def test_fixed_starts_on_the_single_neuron_match_the_reference_trainer(tf):
    from study.data import load_dataset

    config = load_config(CONFIGS / "neuron.yaml", ["epochs=30"])
    neuron = load_dataset("neuron", 0)
    expected, actual = _train(reference, config, neuron), _train(batched, config, neuron)
    assert "grad_w" in actual[next(iter(actual))].history
    _assert_same_curves(expected, actual, 1e-5)
