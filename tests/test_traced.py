"""The groups a process has traced are kept for its next training of the same shapes
(``study.train.traced``): a reused group trains the same bits as a fresh one, anything that
shapes a group's graphs makes another, and memory stays within the budget."""

from __future__ import annotations

import pytest

from study.config import load_config
from study.data import load_dataset
from study.grid import expand_grid, optimizer_of
from study.train import batched
from study.train.traced import Traced
from tests.conftest import CONFIGS


def test_the_newest_group_is_kept_and_older_ones_within_the_budget():
    traced = Traced(budget_bytes=100)
    made = []

    def make(name):
        return lambda: made.append(name) or name

    assert traced.get("a", make("a"), lambda g: 60) == "a"
    assert traced.get("b", make("b"), lambda g: 30) == "b"  # 90 bytes: both kept
    assert traced.get("a", make("a"), lambda g: 60) == "a"  # kept: not made again
    assert made == ["a", "b"] and traced.made == 2
    traced.get("c", make("c"), lambda g: 30)  # 120 bytes: the least recent, b, goes
    assert "b" not in traced and "a" in traced and "c" in traced
    traced.get("huge", make("huge"), lambda g: 1000)  # over the budget alone: kept, alone
    assert "huge" in traced and "a" not in traced and "c" not in traced
    assert traced.get("huge", make("huge"), lambda g: 1000) == "huge"
    assert made == ["a", "b", "c", "huge"]


def _histories(config, splits) -> dict[str, str]:
    """Every arm's whole history (crossings included), NaN equal to NaN, floats in repr."""
    return {arm.key: repr(sorted(result.history.items())) + repr(result.diverged_at)
            for arm, result in batched.train_arms(expand_grid(config), config, splits)}


@pytest.mark.slow
def test_a_group_traced_before_trains_the_same_bits_as_a_fresh_one(tf, digits):
    """The smoke study's bad start, whole budget at a high rate (mse stalls, cce escapes),
    trained with fresh groups and again with the same groups: not one group made the second
    time, every value and crossing the same bits."""
    config = load_config(CONFIGS / "smoke.yaml", ["epochs=2", "optimizer.lr=8",
                                                  "losses=[mse, cce]",
                                                  "inits={saturated_wrong: [4]}"])
    batched.TRACED.clear()
    made = batched.TRACED.made
    fresh = _histories(config, digits)
    groups = batched.TRACED.made - made
    assert groups == len({arm.group for arm in expand_grid(config)})
    again = _histories(config, digits)
    assert batched.TRACED.made - made == groups  # every group reused
    assert again == fresh
    assert any("crossing_" in history for history in fresh.values())
    # other seeds and rates train in the same graphs (they are the slots' state)
    reseeded = load_config(CONFIGS / "smoke.yaml", ["epochs=2", "optimizer.lr=4", "seeds=[5]",
                                                    "losses=[mse, cce]",
                                                    "inits={saturated_wrong: [4]}"])
    _histories(reseeded, digits)
    assert batched.TRACED.made - made == groups


def _key(config, splits, arm=None, size=16):
    arm = arm or expand_grid(config)[0]
    return batched.group_key(size, config, splits, arm.loss, optimizer_of(config, arm))


@pytest.mark.parametrize("change", [
    "epochs=3", "batch_size=20", "levels=[0.6]", "model.hidden=[20]",
    "model.activation=tanh", "optimizer.momentum=0.9", "losses=[mse]",
])
def test_what_shapes_a_groups_graphs_makes_another_group(digits, change):
    base = load_config(CONFIGS / "smoke.yaml", ["losses=[cce]"])
    changed = load_config(CONFIGS / "smoke.yaml", ["losses=[cce]", change])
    assert _key(changed, digits) != _key(base, digits)


def test_other_fixed_weights_make_another_group(digits):
    """The single neuron's starts are fixed weights, the group's own (``Starts``)."""
    base = load_config(CONFIGS / "neuron.yaml")
    changed = load_config(CONFIGS / "neuron.yaml", ["inits={fixed: {0.5: [[[0.1]], [0.2]]}}"])
    assert _key(changed, digits) != _key(base, digits)


def test_seeds_rates_and_starts_share_a_group_and_other_data_does_not(digits):
    base = load_config(CONFIGS / "smoke.yaml")
    same = load_config(CONFIGS / "smoke.yaml", ["seeds=[7, 8]", "optimizer.lr=3",
                                                "inits={large_normal: []}", "name=other"])
    assert _key(same, digits) == _key(base, digits)
    assert _key(base, digits, size=32) != _key(base, digits)
    assert _key(base, load_dataset("digits", 0)) == _key(base, digits)  # the same bytes
    assert _key(base, load_dataset("digits", 1)) != _key(base, digits)  # another split
    base_bound = _key(base, digits)
    try:
        batched.BOUND = True
        assert _key(base, digits) != base_bound
    finally:
        batched.BOUND = None
