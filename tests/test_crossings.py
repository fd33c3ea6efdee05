"""Exact crossings: the first step at which val_accuracy reaches a level, as an every-step
evaluation finds it. The batched trainer against an independent float64 NumPy MLP evaluated
after every step, and against the reference trainer (one Keras fit per arm)."""

from __future__ import annotations

import numpy as np
import pytest

from study.config import load_config
from study.grid import expand_grid
from study.train import batched, reference
from study.train.common import batch_order, crossing_key
from study.train.reference import build_arm_model
from tests.conftest import CONFIGS
from tests.reference_numpy import accuracy_every_step, first_crossings
from tests.test_batched import Traced

# Non-chaotic arms: the control start, cce and mse at moderate rates, 321 steps, so that
# float32 and float64 trajectories stay within rounding of each other. Every arm crosses
# 0.01 at step 0, its start (``cross_at_start``), and the others in the loop.
SMALL = ["epochs=3", "losses=[cce, mse]", "inits={glorot: []}", "seeds=[0, 1, 2]",
         "optimizer.lr={cce: 0.5, mse: 8}", "levels=[0.01, 0.3, 0.5, 0.7, 0.8, 0.9]"]


@pytest.fixture(scope="session")
def small(tf, digits):
    """SMALL's config, its arms, their results, and its groups as they were left by their
    training (``Traced``: (group, slots) -> group)."""
    config = load_config(CONFIGS / "smoke.yaml", SMALL)
    arms = expand_grid(config)
    traced = Traced(config, digits)
    return config, arms, dict(batched.train_arms(arms, config, digits, **traced(arms))), traced


def crossings_of(result) -> dict[float, int]:
    return {float(name.removeprefix("crossing_")): int(points[0][1])
            for name, points in result.history.items() if name.startswith("crossing_")}


def test_levels_include_the_target_and_escape(small):
    config, _, _, _ = small
    assert config.crossing_levels == (0.01, 0.3, 0.5, 0.7, 0.8, 0.9)  # target, escape: 0.5
    shifted = load_config(CONFIGS / "smoke.yaml", [*SMALL, "target=0.95", "escape=0.25"])
    assert shifted.crossing_levels == (0.01, 0.25, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def test_a_crossing_is_logged_at_its_step_with_val_accuracy_there(small):
    config, arms, results, _ = small
    for arm in arms:
        result = results[arm]
        accuracy = dict(result.history["val_accuracy"])
        assert [s for s, _ in result.history["val_accuracy"]] == sorted(accuracy)
        for level, step in crossings_of(result).items():
            assert result.history[crossing_key(level)] == [(step, float(step))]
            assert accuracy[step] >= level
            assert all(v < level for s, v in accuracy.items() if s < step), (arm.key, level)
    assert sum(len(crossings_of(results[a])) for a in arms) >= 20  # most levels are reached
    assert all(crossings_of(results[a])[0.01] == 0 for a in arms)  # each start's own


def test_crossings_match_an_every_step_numpy_evaluation(small, digits):
    """Equal steps wherever float64 and float32 cannot disagree. The two trajectories differ
    by rounding, so their val_accuracy can differ by one example where an example sits on a
    decision boundary; a crossing is compared where one example more or fewer would not
    move it: every step before it at least one example short of the level (by NumPy's
    count), and at it at least one example past. The premise is checked at every logged
    step: the two val_accuracy values never differ by more than one example."""
    config, arms, results, _ = small
    x, y = digits.x_train.astype("float64"), digits.y_train
    x_val, y_val = digits.x_val.astype("float64"), digits.y_val
    n_val = len(y_val)
    compared = 0
    for arm in arms:
        weights = build_arm_model(arm, config, digits)[0].get_weights()
        order = batch_order(arm.seed, len(y), config.batch_size, config.epochs).reshape(
            -1, config.batch_size)
        exact = accuracy_every_step(weights, order, x, y, x_val, y_val, arm.loss, arm.lr)
        logged = results[arm].history["val_accuracy"]
        assert max(abs(v - exact[s]) for s, v in logged) <= 1 / n_val + 1e-12, arm.key
        expected, found = first_crossings(exact, config.crossing_levels), crossings_of(
            results[arm])
        counts = np.rint(exact * n_val)
        for level in config.crossing_levels:
            needed = np.ceil(level * n_val - 1e-9)  # correct examples to reach the level
            step = expected.get(level)
            before = counts[:step] if step is not None else counts
            clear = (before <= needed - 2).all() and (step is None or counts[step] >= needed + 1)
            if clear:
                assert found.get(level) == step, (arm.key, level)
                compared += 1
    assert compared >= 0.8 * len(arms) * len(config.crossing_levels)


@pytest.mark.slow
def test_the_reference_trainer_finds_the_same_crossings(small, digits):
    """One arm of each loss (one Keras fit each), every level."""
    config, arms, results, _ = small
    arms = [arm for arm in arms if arm.seed == 0]
    assert len(arms) == len(config.losses)
    found = 0
    for arm, result in reference.train_arms(arms, config, digits):
        assert crossings_of(result) == crossings_of(results[arm]), arm.key
        found += len(crossings_of(result))
    assert found >= 6  # most levels are reached


def test_the_analysis_reads_crossings_from_the_store(tf, smoke_store):
    """The smoke study through the CLI into MLflow and back: one row per arm and level,
    exact where the store holds the level, censored where its metric is absent."""
    from study.analysis import arm_metrics, load_study
    from study.analysis.crossings import crossings

    study = load_study(smoke_store, "smoke")
    assert study.levels == (0.5, 0.7, 0.8, 0.9)
    table = crossings(study)
    assert len(table) == len(study.arms) * 4
    assert (table["exact"] == ~table["censored"]).all()  # a reached level: its own metric
    for row in table.itertuples():
        history = study.history[study.history["run_id"] == row.run_id]
        mark = history[history["metric"] == crossing_key(row.level)]
        curve = history[history["metric"] == "val_accuracy"].set_index("step")["value"]
        if row.censored:
            assert mark.empty and np.isnan(row.step) and (curve < row.level).all()
        else:
            assert list(mark["step"]) == list(mark["value"]) == [row.step]
            assert row.low == max(row.step - 1, 0) and curve[row.step] >= row.level
            assert (curve[curve.index < row.step] < row.level).all()
    assert (~table["censored"]).sum() >= 4  # the controls reach the target (0.5)
    arms = arm_metrics(study).set_index("run_id")
    target = table[table["level"] == study.target].set_index("run_id")
    assert list(arms.loc[target.index, "reached"]) == list(~target["censored"])
    reached = target[~target["censored"]]
    assert list(arms.loc[reached.index, "steps_to_target"]) == list(reached["step"])


def test_a_store_without_crossings_falls_back_to_the_logged_curve():
    from study.analysis.crossings import crossings
    from tests.test_convergence import make_study

    study = make_study([{"loss": "cce", "init": "glorot", "seed": 0, "reach": 64},
                        {"loss": "mse", "init": "glorot", "seed": 0, "reach": None}])
    table = crossings(study).set_index(["arm", "level"])
    assert list(table.loc[("run0", 0.9), ["step", "low", "censored", "exact"]]) == [
        64, 32, False, False]
    assert table.loc[("run1", 0.5), "censored"] and table.loc[("run1", 0.5), "low"] == 1000


def test_a_crossings_value_is_the_scheduled_evaluations_bit_for_bit(small):
    """Where a crossing falls on a scheduled step (every step up to 40), the in-loop value
    and the scheduled evaluation's are one computation: equal, not close. (cce's group, as
    its training left it.)"""
    _, all_arms, all_results, traced = small
    arms = [arm for arm in all_arms if arm.loss == "cce"]
    group = traced[arms[0].group, batched.slots_for(len(arms))]
    results = [all_results[arm] for arm in arms]
    scheduled = {s for s, _ in group.schedule.all_steps}
    seen = 0
    for result, crossed in zip(results, group.crossings(), strict=False):
        logged = dict(result.history["val_accuracy"])
        for step, value in crossed.values():
            if step in scheduled:
                assert logged[step] == value
                seen += 1
    assert seen >= 3


# ---- the bound that lets the batched trainer skip crossing evaluations ----

def _stack(tf, activation: str, output: str, hidden=(20, 12)):
    from study.models import build_model
    from study.train.bound import dense_stack

    config = load_config(CONFIGS / "smoke.yaml",
                         [f"model.hidden={list(hidden)}", f"model.activation={activation}"])
    model = build_model(config.model, (8, 8), 10, output)  # images: through a Flatten
    return model, dense_stack(model)


@pytest.mark.parametrize(("activation", "output"), [
    ("sigmoid", "sigmoid"), ("relu", "softmax"), ("tanh", "linear"), ("relu", "sigmoid")])
def test_the_bound_holds_against_numpy_and_keras(tf, digits, activation, output):
    """For random anchors (small to saturating weights) and random weight changes (tiny to
    large), the bound on the output pre-activations' change is >= the exact change computed
    in float64 NumPy, for every example; and the upper bound on correct examples is >= the
    count the Keras model's own float32 outputs give (ties and saturated sigmoids included).
    It is also useful: for small changes it excludes some examples."""
    from study.train import bound
    from study.yardsticks import accuracy_tf

    model, layers = _stack(tf, activation, output)
    assert layers is not None and [a.activation for a in layers] == [activation] * 2 + [output]
    x = digits.x_val.reshape(-1, 8, 8).astype("float32")
    labels = tf.constant(digits.y_val.astype("int32"))
    x_norms = np.linalg.norm(x.reshape(len(x), -1).astype("float64"), axis=1)
    rng = np.random.default_rng(0)
    useful = 0
    for trial in range(24):
        scale = [0.3, 1.0, 4.0][trial % 3]
        anchor = [rng.normal(0, scale, w.shape).astype("float32")
                  for w in model.get_weights()]
        step = 10.0 ** rng.uniform(-5, 0)
        now = [(w + rng.normal(0, step, w.shape) * (rng.random(w.shape) < 0.5)).astype(
            "float32") for w in anchor]
        ends = bound.output_change(layers, [tf.constant(w[None]) for w in now],
                                   [tf.constant(w[None]) for w in anchor],
                                   tf.constant([0.0, 1.0], tf.float64)).numpy()[0]
        change = ends[0] + (ends[1] - ends[0]) * x_norms  # affine in the input's norm
        direct = bound.output_change(layers, [tf.constant(w[None]) for w in now],
                                     [tf.constant(w[None]) for w in anchor], x_norms)
        assert np.allclose(change, direct.numpy()[0], rtol=1e-12)
        exact = abs(_pre_activations(now, x, layers) - _pre_activations(anchor, x, layers))
        assert (change >= exact.max(axis=1)).all(), (trial, (exact.max(axis=1) - change).max())
        outputs = {}
        for name, weights in (("anchor", anchor), ("now", now)):
            outputs[name], _ = model.stateless_call([tf.constant(w) for w in weights], [],
                                                    tf.constant(x))
        needed = bound.thresholds(outputs["anchor"], labels, output)[None]
        upper = bound.may_be_correct(needed, tf.constant(change[None])).numpy()[0]
        correct = accuracy_tf(outputs["now"], labels).numpy() * len(x)
        assert upper >= round(correct), (trial, upper, correct)
        useful += upper < len(x)
    assert useful >= 6


def _pre_activations(weights, x, layers) -> np.ndarray:
    """The output layer's pre-activations in float64 NumPy."""
    from scipy.special import expit, softmax

    functions = {"sigmoid": expit, "tanh": np.tanh,
                 "relu": lambda z: np.maximum(z, 0), "linear": lambda z: z,
                 "softmax": lambda z: softmax(z, axis=1)}
    a = x.reshape(len(x), -1).astype("float64")
    for j, layer in enumerate(layers):
        z = a @ weights[2 * j].astype("float64") + weights[2 * j + 1].astype("float64")
        a = functions[layer.activation](z)
    return z


def test_the_bound_covers_dense_stacks_only(tf):
    from study.models import build_model
    from study.train.bound import dense_stack

    config = load_config(CONFIGS / "smoke.yaml", ["model.kind=cnn", "model.filters=[4]"])
    assert dense_stack(build_model(config.model, (8, 8), 10, "sigmoid")) is None
    assert dense_stack(_stack(tf, "sigmoid", "softmax", hidden=())[0]) is not None


def _train_with_bound(config, splits, on: bool, monkeypatch):
    """Every arm of ``config`` trained group by group with the bound forced on or off:
    (arm key -> history, slot evaluations done and skipped)."""
    monkeypatch.setattr(batched, "BOUND", on)
    arms, histories, counts = expand_grid(config), {}, np.zeros(2, int)
    for key in dict.fromkeys(a.group for a in arms):
        members = [a for a in arms if a.group == key]
        group = batched._Group(batched.slots_for(len(members)), config, splits,
                               members[0].loss, batched.optimizer_of(config, members[0]))
        assert (group.bound is not None) == on
        for arm, result in zip(members, batched.train_group(group, members), strict=True):
            histories[arm.key] = repr(sorted(result.history.items()))  # NaN == NaN here
        counts += group.cross_counts.numpy()
    return histories, counts


# 5 epochs (535 steps) of the default study's 15: a whole budget, schedule and all, a third
# as long; its arms still stall, escape and cross (the bound changes no weight, so no
# difference it made would need a long budget to grow visible).
BAD_STARTS = ["losses=[mse, cce, mse_softmax]", "optimizer.lr={mse: 32, cce: 1, mse_softmax: 32}",
              "inits={saturated_wrong: [4], large_normal: []}", "seeds=[0, 1]",
              "lr_band={factor: 2, starts: worst}", "epochs=5"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    # sigmoid hidden layer; sigmoid (mse) and softmax (mse_softmax) outputs. (Not cce: its
    # arms cross every level within steps, so the bound never skips one of its evaluations.)
    [*BAD_STARTS, "losses=[mse, mse_softmax]", "optimizer.lr={mse: 32, mse_softmax: 32}"],
    [*BAD_STARTS, "model.activation=relu", "losses=[mse, mse_softmax]",
     "optimizer.lr={mse: 32, mse_softmax: 32}"],
    [*BAD_STARTS, "model.activation=tanh", "losses=[mse]", "optimizer.lr={mse: 32}",
     "seeds=[3]"],
], ids=["sigmoid", "relu", "tanh"])
def test_skipping_crossing_evaluations_changes_no_bit(tf, digits, overrides, monkeypatch):
    """The default study's bad starts at its rates and twice them (the highest), over a
    whole (shortened) budget: every logged value and every crossing of every arm is the same
    bits with the bound on as with every pending slot evaluated at every step; and the bound
    skips."""
    config = load_config(CONFIGS / "default.yaml", overrides)
    on, (evaluated, skipped) = _train_with_bound(config, digits, True, monkeypatch)
    off, (evaluated_off, skipped_off) = _train_with_bound(config, digits, False, monkeypatch)
    assert on == off
    assert skipped_off == 0 and evaluated + skipped == evaluated_off
    assert skipped >= 0.02 * evaluated_off, (evaluated, skipped)
    assert sum(h.count("'crossing_") for h in on.values()) >= 4  # levels are crossed
