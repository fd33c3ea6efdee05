"""The reference trainer against independent references: a NumPy MLP with hand-written
gradients, hand-computed step-0 values, and itself (determinism, cce == scce)."""

from __future__ import annotations

import numpy as np
import pytest

from study.grid import Arm
from study.losses import LOSSES
from study.train.common import batch_order
from study.train.reference import build_arm_model, train_arm
from tests.conftest import shrink
from tests.reference_numpy import global_norm, loss_and_grads, sgd


@pytest.fixture(scope="session")
def one_epoch(smoke_config):
    return shrink(smoke_config, epochs=1)


def test_every_loss_arm_starts_from_bit_identical_weights(tf, one_epoch, digits):
    starts, counts = [], set()
    for loss in LOSSES:
        model, _ = build_arm_model(Arm("scaled", 3.0, 4, "sgd", 0.5, loss), one_epoch, digits)
        starts.append(model.get_weights())
        counts.add(model.count_params())
    assert counts == {64 * 30 + 30 + 30 * 10 + 10}
    for weights in starts[1:]:
        for a, b in zip(starts[0], weights, strict=True):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("loss", list(LOSSES))
def test_first_steps_match_numpy_sgd(tf, one_epoch, digits, loss):
    """Step 0, 1, 2 and 4: the logged loss and gradient norm equal a float64 NumPy SGD."""
    arm = Arm("saturated_wrong", 4.0, 0, "sgd", 0.5, loss)
    result = train_arm(arm, one_epoch, digits)
    weights0 = build_arm_model(arm, one_epoch, digits)[0].get_weights()
    order = batch_order(arm.seed, len(digits.y_train), one_epoch.batch_size, 1)[0]
    x, y = digits.x_train.astype("float64"), digits.y_train
    trajectory = [[w.astype("float64") for w in weights0]]
    trajectory += list(sgd(weights0, order[:4], x, y, loss, arm.lr))
    logged_loss = dict(result.history["train_loss"])
    logged_norm = dict(result.history["grad_norm"])
    for step in (0, 1, 2, 4):
        value, grads = loss_and_grads(trajectory[step], x, y, loss)
        assert logged_loss[step] == pytest.approx(value, rel=1e-5, abs=1e-7), step
        assert logged_norm[step] == pytest.approx(global_norm(grads), rel=1e-4, abs=1e-7), step


def test_step_0_metrics_of_a_saturated_start_by_hand(tf, one_epoch, digits):
    """From saturated_wrong m=4 every output is sigma(+-4), so step 0 is known in closed form."""
    result = train_arm(Arm("saturated_wrong", 4.0, 0, "sgd", 0.5, "bce"), one_epoch, digits)
    step0 = {name: points[0] for name, points in result.history.items()}
    assert {step for step, _ in step0.values()} == {0}
    wrong = int(np.random.default_rng([0, 1]).integers(10))  # the scheme's wrong class
    hit = np.mean(digits.y_train == wrong)
    softplus4, softplus_minus4 = np.log1p(np.exp(4)), np.log1p(np.exp(-4))  # 4.01815, 0.01815
    # An example of another class: two outputs cost softplus(4), eight softplus(-4);
    # an example of the wrong class itself: all ten cost softplus(-4).
    expected_loss = (1 - hit) * (2 * softplus4 + 8 * softplus_minus4) / 10 + hit * softplus_minus4
    assert step0["train_loss"][1] == pytest.approx(expected_loss, rel=1e-5)
    assert step0["val_accuracy"][1] == pytest.approx(np.mean(digits.y_val == wrong))
    big, small = 1 / (1 + np.exp(-4)), 1 / (1 + np.exp(4))
    p_other, p_wrong = small / (big + 9 * small), big / (big + 9 * small)
    val_hit = np.mean(digits.y_val == wrong)
    expected_nll = -(1 - val_hit) * np.log(p_other) - val_hit * np.log(p_wrong)
    assert step0["val_nll"][1] == pytest.approx(expected_nll, rel=1e-5)


def test_cce_and_scce_curves_agree(tf, one_epoch, digits):
    a = train_arm(Arm("glorot", 0.0, 1, "sgd", 0.5, "cce"), one_epoch, digits)
    b = train_arm(Arm("glorot", 0.0, 1, "sgd", 0.5, "scce"), one_epoch, digits)
    assert a.steps() == b.steps() and len(a.steps()) == 9
    for name in a.history:
        np.testing.assert_allclose(a.series(name), b.series(name), rtol=1e-5, atol=1e-5)


def test_same_arm_twice_gives_identical_curves(tf, one_epoch, digits):
    arm = Arm("scaled", 3.0, 2, "sgd", 0.5, "mse")
    assert train_arm(arm, one_epoch, digits).history == train_arm(arm, one_epoch, digits).history


def test_divergence_stops_the_arm(tf, one_epoch, digits):
    config = shrink(one_epoch, model__activation="relu")
    result = train_arm(Arm("glorot", 0.0, 0, "sgd", 1e30, "cce"), config, digits)
    assert result.diverged and result.diverged_at == 1
    assert result.steps() == [0, 1]  # evaluated at the step it diverged, then stopped
    assert not np.isfinite(result.series("train_loss")[-1])


def test_two_epochs_follow_numpy_sgd_across_the_epoch_boundary(tf, smoke_config, digits):
    """Every logged step of two epochs, so epoch 2 must train on its own permutation."""
    config = shrink(smoke_config, epochs=2)
    arm = Arm("glorot", 0.0, 5, "sgd", 0.5, "cce")
    result = train_arm(arm, config, digits)
    order = batch_order(arm.seed, len(digits.y_train), config.batch_size, 2).reshape(-1, 10)
    x, y = digits.x_train.astype("float64"), digits.y_train
    weights0 = build_arm_model(arm, config, digits)[0].get_weights()
    trajectory = [[w.astype("float64") for w in weights0], *sgd(weights0, order, x, y, "cce",
                                                                  arm.lr)]
    steps = result.steps()
    assert steps[-3:] == [107, 128, 214]
    for step, value in result.history["train_loss"]:
        assert value == pytest.approx(loss_and_grads(trajectory[step], x, y, "cce")[0],
                                      rel=1e-4), step


def test_training_measures_past_the_cap_cover_a_fixed_sample(tf, one_epoch, digits,
                                                              monkeypatch):
    """Past TRAIN_EVAL_MAX training examples (MNIST), train_loss, train_accuracy and
    grad_norm are the sample's, in both trainers: the cap lowered to 300 on digits, step 0
    equals a float64 NumPy evaluation of those 300 rows and not of the whole split."""
    from study.train import batched, common

    monkeypatch.setattr(common, "TRAIN_EVAL_MAX", 300)
    rows = common.train_eval_rows(len(digits.x_train))
    assert len(rows) == 300 == len(set(rows)) and list(rows) == sorted(rows)
    assert list(rows) == list(common.train_eval_rows(len(digits.x_train)))  # fixed
    arm = Arm("saturated_wrong", 4.0, 0, "sgd", 0.5, "mse")
    weights = [w.astype("float64") for w in build_arm_model(arm, one_epoch, digits)[0]
               .get_weights()]
    x, y = digits.x_train.astype("float64"), digits.y_train
    sample_loss, sample_grads = loss_and_grads(weights, x[rows], y[rows], "mse")
    whole_loss = loss_and_grads(weights, x, y, "mse")[0]
    assert abs(sample_loss - whole_loss) > 1e-4  # the two differ: the check can fail
    for result in (train_arm(arm, one_epoch, digits),
                   dict(batched.train_arms([arm], one_epoch, digits))[arm]):
        step0 = {name: points[0][1] for name, points in result.history.items()}
        assert step0["train_loss"] == pytest.approx(sample_loss, rel=1e-5)
        assert step0["grad_norm"] == pytest.approx(global_norm(sample_grads), rel=1e-4)
