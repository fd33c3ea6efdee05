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

# Non-chaotic arms: the control start, cce and mse at moderate rates, 321 steps, so that
# float32 and float64 trajectories stay within rounding of each other.
SMALL = ["epochs=3", "losses=[cce, mse]", "inits={glorot: []}", "seeds=[0, 1, 2]",
         "optimizer.lr={cce: 0.5, mse: 8}", "levels=[0.3, 0.5, 0.7, 0.8, 0.9]"]


@pytest.fixture(scope="session")
def small(tf, digits):
    config = load_config(CONFIGS / "smoke.yaml", SMALL)
    arms = expand_grid(config)
    return config, arms, dict(batched.train_arms(arms, config, digits))


def crossings_of(result) -> dict[float, int]:
    return {float(name.removeprefix("crossing_")): int(points[0][1])
            for name, points in result.history.items() if name.startswith("crossing_")}


def test_levels_include_the_target_and_escape(small):
    config, _, _ = small
    assert config.crossing_levels == (0.3, 0.5, 0.7, 0.8, 0.9)  # target and escape: 0.5
    shifted = load_config(CONFIGS / "smoke.yaml", [*SMALL, "target=0.95", "escape=0.25"])
    assert shifted.crossing_levels == (0.25, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)


def test_a_crossing_is_logged_at_its_step_with_val_accuracy_there(small):
    config, arms, results = small
    for arm in arms:
        result = results[arm]
        accuracy = dict(result.history["val_accuracy"])
        assert [s for s, _ in result.history["val_accuracy"]] == sorted(accuracy)
        for level, step in crossings_of(result).items():
            assert result.history[crossing_key(level)] == [(step, float(step))]
            assert accuracy[step] >= level
            assert all(v < level for s, v in accuracy.items() if s < step), (arm.key, level)
    assert sum(len(crossings_of(results[a])) for a in arms) >= 20  # most levels are reached


def test_crossings_match_an_every_step_numpy_evaluation(small, digits):
    """Equal steps wherever float64 and float32 cannot disagree. The two trajectories differ
    by rounding, so their val_accuracy can differ by one example where an example sits on a
    decision boundary; a crossing is compared where one example more or fewer would not
    move it: every step before it at least one example short of the level (by NumPy's
    count), and at it at least one example past. The premise is checked at every logged
    step: the two val_accuracy values never differ by more than one example."""
    config, arms, results = small
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
    config, arms, results = small
    for arm, result in reference.train_arms(arms, config, digits):
        assert crossings_of(result) == crossings_of(results[arm]), arm.key


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


def test_a_crossings_value_is_the_scheduled_evaluations_bit_for_bit(tf, digits):
    """Where a crossing falls on a scheduled step (every step up to 40), the in-loop value
    and the scheduled evaluation's are one computation: equal, not close."""
    config = load_config(CONFIGS / "smoke.yaml",
                         [*SMALL, "losses=[cce]", "optimizer.lr=0.5", "epochs=1"])
    arms = expand_grid(config)
    group = batched._Group(batched.slots_for(len(arms)), config, digits, "cce",
                           config.optimizers[0])
    results = batched.train_group(group, arms)
    scheduled = {s for s, _ in group.schedule.all_steps}
    seen = 0
    for result, crossed in zip(results, group.crossings(), strict=False):
        logged = dict(result.history["val_accuracy"])
        for step, value in crossed.values():
            if step in scheduled:
                assert logged[step] == value
                seen += 1
    assert seen >= 3
