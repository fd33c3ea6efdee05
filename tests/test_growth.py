"""Crossing times as intervals, family controls, and the growth law recovered from
synthetic censored arms whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.analysis import arm_metrics, growth_table, summarize
from study.analysis.convergence import crossing
from study.analysis.growth import fit_slope
from study.train.common import Schedule
from tests.test_convergence import make_study


def test_a_crossing_lies_between_two_logged_steps():
    accuracy = pd.Series([0.1, 0.2, 0.45, 0.6, 0.95], index=[0, 1, 2, 4, 8])
    assert crossing(accuracy, 0.5, 8, "escape") == {
        "escape_reached": True, "escape_low": 2.0, "escape_time": 4.0}
    assert crossing(accuracy, 0.99, 8, "t") == {"t_reached": False, "t_low": 8.0,
                                                 "t_time": np.inf}
    assert crossing(accuracy, 0.1, 8, "t")["t_time"] == 0.0  # already there at step 0


def test_the_schedule_resolves_crossings_to_5_percent():
    schedule = Schedule(107, 15)
    steps = np.array([s for s, _ in schedule.all_steps])
    assert steps[0] == 0 and steps[-1] == 1605
    assert list(steps[:41]) == list(range(41))  # every step early on
    gaps = np.diff(steps)
    wide = gaps > 1  # where it skips steps, a crossing is known to within 5%
    assert (gaps[wide] / steps[1:][wide]).max() <= 0.05
    full = [s for s, f in schedule.all_steps if f]
    assert full == list(schedule.steps) and len(full) == 27  # every measure, less often


def _synthetic_escape_arms(slope: float, budget: int, rng) -> pd.DataFrame:
    """Escape times log-normal around 3 e^(slope m), seen on a 5% schedule of steps (as the
    trainers log val_accuracy), censored at the budget."""
    grid = np.array(sorted({0, *range(41), *np.geomspace(40, budget, 120).astype(int)}))
    rows = []
    for m in [0, 2, 4, 6, 8, 10]:
        for seed in range(10):
            true = 3 * np.exp(slope * m + rng.normal(0, 0.3))
            hit = grid[grid >= true]
            reached = len(hit) > 0 and hit[0] <= budget
            low = grid[grid < true][-1] if reached else budget
            rows.append({"init": "saturated_wrong", "loss": "mse", "severity": float(m),
                         "seed": seed, "escape_low": float(low),
                         "escape_time": float(hit[0]) if reached else np.inf,
                         "escape_reached": reached})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("slope", [0.0, 0.95])
def test_the_growth_slope_is_recovered_from_censored_data(slope):
    arms = _synthetic_escape_arms(slope, budget=10_000, rng=np.random.default_rng(1))
    table = growth_table(arms)
    row = table.iloc[0]
    assert row["severities"] == "6-10"  # the stall regime: the upper half of m = 0..10
    if slope:  # 3 e^(0.95 * 10) = 40,000 steps: m = 10 is censored at 10,000
        assert row["n_censored"] >= 10
    assert row["n_censored"] == (~arms[arms["severity"] >= 6]["escape_reached"]).sum()
    assert row["ci_low"] <= slope <= row["ci_high"]
    assert row["ci_high"] - row["ci_low"] < 0.3
    assert row["theory"] == 1.0 and row["n_arms"] == 30


def test_an_all_censored_family_has_no_slope():
    assert np.isnan(fit_slope([100, 100], [np.inf, np.inf], [1, 2])[0])


def test_a_family_is_compared_with_its_own_control():
    """saturated_wrong m=0 (zero output kernel) is run: m=4 is compared with it, not with
    glorot, whose arms here are twice as fast."""
    arms = []
    for seed in range(3):
        arms += [{"loss": "mse", "init": "glorot", "seed": seed, "reach": 50},
                 {"loss": "mse", "init": "saturated_wrong", "severity": 0, "seed": seed,
                  "reach": 100},
                 {"loss": "mse", "init": "saturated_wrong", "severity": 4, "seed": seed,
                  "reach": 400}]
    summary = summarize(arm_metrics(make_study(arms))).set_index(["init", "severity"])
    row = summary.loc[("saturated_wrong", 4.0)]
    assert row["slowdown"] == 4.0 and row["reference"] == "saturated_wrong m=0"
