"""Crossing times as intervals, family controls, and the growth law recovered from
synthetic censored arms whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.analysis import arm_metrics, growth_table, summarize
from study.analysis.convergence import crossing
from study.analysis.growth import fit_growth, growth_sentences, local_slopes
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


def _synthetic_escape_arms(slope: float, budget: int, rng, t0: float = 100.0,
                           c: float = 3.0, loss: str = "mse") -> pd.DataFrame:
    """Escape times log-normal around T0 + c e^(slope m), known to the step (as exact
    crossings are: in (t - 1, t]), censored at the budget."""
    rows = []
    for m in range(11):
        for seed in range(10):
            true = (t0 + c * np.exp(slope * m)) * np.exp(rng.normal(0, 0.2))
            step = int(np.ceil(true))
            reached = step <= budget
            rows.append({"init": "saturated_wrong", "loss": loss, "optimizer": "sgd",
                         "severity": float(m), "seed": seed,
                         "escape_low": float(step - 1) if reached else float(budget),
                         "escape_time": float(step) if reached else np.inf,
                         "escape_reached": reached})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("slope", [1.0, 2.0])
def test_the_growth_law_is_recovered_from_censored_data(slope):
    """T0 + c e^(b m) with T0 = 100: b is recovered within its CI, whatever part of the
    budget the top severities are censored at; the theory column is the loss spec's."""
    loss = {1.0: "mse", 2.0: "mse_softmax"}[slope]
    arms = _synthetic_escape_arms(slope, budget=10_000, rng=np.random.default_rng(1),
                                  loss=loss)
    row = growth_table(arms).iloc[0]
    assert row["severities"] == "0-10" and row["n_arms"] == 110
    assert row["n_censored"] == (~arms["escape_reached"]).sum()
    if slope == 2.0:
        assert row["n_censored"] >= 40  # 3 e^(2 m) passes 10,000 steps from m = 4.1
    assert row["ci_low"] <= slope <= row["ci_high"]
    assert row["ci_high"] - row["ci_low"] < 0.4
    assert row["t0"] == pytest.approx(100, rel=0.15)
    assert row["theory"] == slope


def test_the_window_is_the_declared_one_and_a_log_line_would_be_wrong():
    """Over a declared window m = 4..10 the fit uses those arms only. The old log-linear
    slope over all m would be well below 1 on the same data: T0 hides the stall."""
    arms = _synthetic_escape_arms(1.0, budget=10**6, rng=np.random.default_rng(2))
    row = growth_table(arms, {"saturated_wrong": (4.0, 10.0)}).iloc[0]
    assert row["severities"] == "4-10" and row["n_arms"] == 70
    assert row["ci_low"] <= 1.0 <= row["ci_high"]
    naive = np.polyfit(arms["severity"], np.log(arms["escape_time"]), 1)[0]
    assert naive < 0.7


def test_no_stall_gives_no_slope_but_says_why():
    """Cross-entropy's case: T is flat in m, so b is not identifiable: NaN, with T0 kept
    and a sentence that says the stall is too small."""
    arms = _synthetic_escape_arms(0.0, budget=10_000, rng=np.random.default_rng(3), c=1.0,
                                  loss="cce")
    table = growth_table(arms)
    row = table.iloc[0]
    assert np.isnan(row["slope"]) and row["t0"] == pytest.approx(101, rel=0.15)
    assert row["theory"] == 0.0
    assert "cce too small a stall to fit b" in growth_sentences(table)[0]


def test_local_slopes_by_hand():
    arms = pd.DataFrame({"severity": [0.0, 0.0, 2.0, 2.0, 4.0, 4.0],
                         "escape_time": [10, 10, 10 * np.e**2, 10 * np.e**2, np.inf, np.inf],
                         "escape_reached": [True, True, True, True, False, False],
                         "escape_low": [9, 9, 70, 70, 1000, 1000]})
    # d log T / dm: (2 - 0) / 2 = 1; then censored: at least log(1000 / 73.9) / 2 = 1.30
    assert local_slopes(arms) == "1.00, ≥1.30"


def test_an_all_censored_family_has_no_slope():
    fit = fit_growth([100, 100, 100], [np.inf] * 3, [1, 2, 3], [0, 0, 0])
    assert np.isnan(fit["slope"]) and np.isnan(fit["ci_low"])


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


def test_the_exact_sign_flip_p_value_and_its_floor():
    from study.analysis.paired import sign_flip_p

    assert sign_flip_p(np.ones(5)) == pytest.approx(2 / 32)  # the floor with 5 pairs
    assert sign_flip_p(np.ones(15)) == pytest.approx(2 / 2**15)
    # by hand: values 1, 2, -0.5; |mean| of the 8 sign patterns >= 2.5/3 only for
    # (+,+,-), (+,+,+), (-,-,+), (-,-,-): p = 4/8
    assert sign_flip_p(np.array([1.0, 2.0, -0.5])) == pytest.approx(0.5)


def _every_sign_pattern_p(values: np.ndarray) -> float:
    """The reference: mean |flipped mean| >= |observed mean| over all 2^n sign patterns,
    enumerated by brute force (the harness's own test before scipy's permutation_test)."""
    import itertools

    signs = np.array(list(itertools.product([1.0, -1.0], repeat=len(values))))
    means = np.abs(signs @ values / len(values))
    return float(np.mean(means >= abs(values.mean()) - 1e-12))


def test_the_sign_flip_p_value_equals_a_brute_force_enumeration():
    """Same p-values as enumerating every sign pattern, ties included: censored times at
    the budget, integer step counts, means that are 0 but for rounding."""
    from study.analysis.paired import sign_flip_p

    rng = np.random.default_rng(1)
    cases = [np.zeros(5), np.full(5, np.log(2)), np.array([np.log(2), -np.log(2)] * 3),
             np.array([0.6, -0.2, -1.1, 0.1, 0.4, 0.2])]  # a mean of 0 up to rounding
    for n in (2, 3, 5, 8, 12, 16):
        mine = rng.integers(50, 200, n).astype(float)
        theirs = rng.integers(50, 200, n).astype(float)
        mine[rng.random(n) < 0.3] = theirs[rng.random(n) < 0.3] = 300.0  # the budget
        cases += [np.log(mine) - np.log(theirs), rng.normal(0.3, 1.0, n),
                  np.round(rng.normal(0.0, 1.0, n), 1)]
    for values in cases:
        assert sign_flip_p(values) == _every_sign_pattern_p(values), values


def test_paired_contrasts_find_a_real_slowdown_with_15_seeds():
    """mse takes 1.3x cce's steps on every seed (plus noise): with 15 pairs the exact test
    can and does reach significance after Holm; with 5 it cannot (floor 0.0625)."""
    from study.analysis.paired import paired_contrasts

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(15):
        base = 200 * np.exp(rng.normal(0, 0.2))
        for loss, factor in [("cce", 1.0), ("mse", 1.3), ("bce", 1.0)]:
            t = base * factor * np.exp(rng.normal(0, 0.05))
            rows.append({"loss": loss, "condition": loss, "optimizer": "sgd", "init": "scaled",
                         "severity": 4.0, "seed": seed,
                         "time": t, "reached": True, "budget": 1000})
    arms = pd.DataFrame(rows)
    table = paired_contrasts(arms).set_index("loss")
    assert table.loc["mse", "ratio"] == pytest.approx(1.3, rel=0.05)
    assert table.loc["mse", "ci_low"] > 1.2 and table.loc["mse", "significant"]
    assert table.loc["mse", "p_min"] == pytest.approx(2 / 2**15)
    assert not table.loc["bce", "significant"]
    five = paired_contrasts(arms[arms["seed"] < 5]).set_index("loss")
    assert five.loc["mse", "p_value"] >= 0.0625 and not five.loc["mse", "significant"]


def test_a_relative_target_sits_between_chance_and_the_control_plateau():
    from study.analysis.load import relative_target

    rows = [{"run_id": f"r{i}", "init": init, "metric": "val_accuracy", "step": step,
             "value": value}
            for i, (init, final) in enumerate([("glorot", 0.4), ("glorot", 0.5),
                                               ("glorot", 0.6), ("scaled", 0.9)])
            for step, value in [(0, 0.1), (100, final)]]
    # plateau: the median final control accuracy, 0.5; chance 1/10: halfway is 0.3
    assert relative_target(0.5, pd.DataFrame(rows), 10) == pytest.approx(0.3)
    assert relative_target(1.0, pd.DataFrame(rows), 10) == pytest.approx(0.5)
