"""Convergence measures on synthetic histories whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.analysis import (
    arm_metrics,
    headline,
    performance_profile,
    report_table,
    select_lr,
    summarize,
)
from study.analysis.convergence import best_lrs, kaplan_meier, median_ci, shared_lr
from study.analysis.load import Study

BUDGET = 1000


def make_study(arms: list[dict], target: float = 0.9) -> Study:
    """arms: dicts of loss, init, severity, seed, (lr), and ``reach``: the step at which
    val_accuracy jumps from 0.1 to 0.95 (None: never), or ``curve``: [(step, accuracy)];
    ``nll`` sets the final val_nll; ``diverge_at`` ends the history there with NaN."""
    arm_rows, history = [], []
    for i, arm in enumerate(arms):
        run_id = f"run{i}"
        lr = arm.get("lr", 0.5)
        curve = arm.get("curve")
        if curve is None:
            reach = arm.get("reach")
            steps = sorted({0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 500, BUDGET} | {reach or 0})
            curve = [(s, 0.95 if reach is not None and s >= reach else 0.1) for s in steps]
        if arm.get("diverge_at") is not None:
            curve = [(s, a) for s, a in curve if s < arm["diverge_at"]]
            curve.append((arm["diverge_at"], np.nan))
        keys = {"run_id": run_id, "loss": arm["loss"],
                "optimizer": arm.get("optimizer", "sgd"), "init": arm["init"],
                "severity": float(arm.get("severity", 0.0)), "seed": arm["seed"], "lr": lr}
        arm_rows.append({**keys, "arm": run_id, "diverged": arm.get("diverge_at") is not None})
        for j, (step, accuracy) in enumerate(curve):
            last = j == len(curve) - 1
            values = {"val_accuracy": accuracy,
                      "val_nll": arm.get("nll", 1.0) if last else 2.0,
                      "val_brier": 0.5, "grad_norm": arm.get("grad0", 1.0) if step == 0 else 0.5}
            history += [{**keys, "step": step, "metric": m, "value": v}
                        for m, v in values.items()]
    return Study("synthetic", "parent", "hash", target, 0.5, pd.DataFrame(arm_rows),
                 pd.DataFrame(history))


def test_steps_to_target_and_censoring():
    study = make_study([{"loss": "cce", "init": "glorot", "seed": 0, "reach": 64},
                        {"loss": "mse", "init": "glorot", "seed": 0, "reach": None}])
    arms = arm_metrics(study).set_index("loss")
    assert arms.loc["cce", "steps_to_target"] == 64 and arms.loc["cce", "reached"]
    assert arms.loc["cce", "time"] == 64
    assert np.isnan(arms.loc["mse", "steps_to_target"]) and not arms.loc["mse", "reached"]
    assert arms.loc["mse", "time"] == BUDGET and arms.loc["mse", "budget"] == BUDGET


def test_auc_of_the_validation_error_by_hand():
    study = make_study([{"loss": "cce", "init": "glorot", "seed": 0,
                         "curve": [(0, 0.1), (500, 0.9), (1000, 0.9)]}])
    # error 0.9 -> 0.1 over the first half, then 0.1: (0.5 * 500 + 0.1 * 500) / 1000 = 0.3
    assert arm_metrics(study)["auc_val_error"].iloc[0] == pytest.approx(0.3)


def test_a_diverged_arm_is_censored_at_the_budget_with_the_worst_error():
    study = make_study([
        {"loss": "cce", "init": "glorot", "seed": 0, "reach": 64},
        {"loss": "mse", "init": "glorot", "seed": 0,
         "curve": [(0, 0.1), (500, 0.1), (1000, 0.1)], "diverge_at": 500}])
    arms = arm_metrics(study).set_index("loss")
    assert arms.loc["mse", "diverged"] and not arms.loc["mse", "reached"]
    assert arms.loc["mse", "time"] == BUDGET
    # error 0.9 at step 0, NaN (error 1) at 500, and, as diverged, 1 until the budget:
    # trapezoids (0.9 + 1) / 2 * 500 + 1 * 500
    assert arms.loc["mse", "auc_val_error"] == pytest.approx((0.95 * 500 + 1.0 * 500) / 1000)
    summary = summarize(arm_metrics(study)).set_index("loss")
    assert summary.loc["mse", "diverged"] == 1 and summary.loc["mse", "reached"] == 0


def test_ties_give_a_degenerate_interval():
    study = make_study([{"loss": "cce", "init": "glorot", "seed": s, "reach": 64}
                        for s in range(4)])
    row = summarize(arm_metrics(study)).iloc[0]
    assert (row.median_steps, row.steps_ci_low, row.steps_ci_high) == (64, 64, 64)


def test_median_ci_brackets_the_median():
    median, low, high = median_ci([100, 200, 300, 400, 500])
    assert median == 300 and 100 <= low < 300 < high <= 500
    assert np.isnan(median_ci([5])[1])


def test_a_group_where_every_arm_is_censored():
    study = make_study([{"loss": "mse", "init": init, "seed": s, "reach": 8 if init ==
                         "glorot" else None, "severity": 4.0 if init != "glorot" else 0.0}
                        for init in ("glorot", "saturated_wrong") for s in range(3)])
    summary = summarize(arm_metrics(study)).set_index("init")
    bad = summary.loc["saturated_wrong"]
    assert bad.reached == 0 and bad.median_steps == BUDGET and np.isinf(bad.km_median_steps)
    assert bad.slowdown == pytest.approx(BUDGET / 8) and bad.slowdown_bound == ">="
    table = report_table(summarize(arm_metrics(study)))
    assert list(table.index) == [("glorot", "mse"), ("saturated_wrong m=4", "mse")]
    row = table.loc[("saturated_wrong m=4", "mse")]
    assert row["KM median steps"] == "not reached"
    assert row["median steps [95% CI]"].startswith("≥ 1,000")
    assert row["slowdown vs its control [95% CI]"] == "≥ 125.00 [125.00, 125.00]"


def test_kaplan_meier_median_with_a_censored_arm():
    km = kaplan_meier([10, 20, BUDGET], [True, True, False])
    # S = 2/3 after step 10, 1/3 after step 20: the median time is 20
    assert km.median_survival_time_ == 20
    assert km.survival_function_.loc[20].iloc[0] == pytest.approx(1 / 3)


def test_slowdown_is_the_ratio_of_medians_paired_by_seed():
    control = [100, 200, 300]
    bad = [300, 400, 900]
    study = make_study(
        [{"loss": "mse", "init": "glorot", "seed": s, "reach": t} for s, t in enumerate(control)]
        + [{"loss": "mse", "init": "scaled", "severity": 4.0, "seed": s, "reach": t}
           for s, t in enumerate(bad)])
    row = summarize(arm_metrics(study)).set_index("init").loc["scaled"]
    assert row.slowdown == pytest.approx(400 / 200)
    assert row.slowdown_ci_low <= 2.0 <= row.slowdown_ci_high
    assert row.slowdown_bound == ""
    text = headline(summarize(arm_metrics(study)), 0.9)
    assert text[0].startswith("From scaled k=4, reaching val_accuracy 0.9 takes mse 2.0x (95% CI")


def test_performance_profile_by_hand():
    # two problems: (glorot, seed 0) and (scaled k=2, seed 1); mse never reaches the target
    study = make_study([{"loss": "bce", "init": "glorot", "seed": 0, "reach": 100},
                        {"loss": "cce", "init": "glorot", "seed": 0, "reach": 200},
                        {"loss": "mse", "init": "glorot", "seed": 0, "reach": None},
                        {"loss": "bce", "init": "scaled", "severity": 2, "seed": 1, "reach": 30},
                        {"loss": "cce", "init": "scaled", "severity": 2, "seed": 1, "reach": 10},
                        {"loss": "mse", "init": "scaled", "severity": 2, "seed": 1,
                         "reach": None}])
    profile = performance_profile(arm_metrics(study), taus=[1.0, 1.5, 2.0, 3.0, 10.0])
    assert list(profile["bce"]) == [0.5, 0.5, 0.5, 1, 1]  # best once; 3x cce's once
    assert list(profile["cce"]) == [0.5, 0.5, 1, 1, 1]  # best once; 2x bce's once
    assert list(profile["mse"]) == [0, 0, 0, 0, 0]


def test_learning_rate_views():
    # control final val_nll by (loss, lr): bce best at 1.0, cce best at 0.1
    nll = {("bce", 0.1): 0.9, ("bce", 1.0): 0.3, ("cce", 0.1): 0.2, ("cce", 1.0): 0.25}
    study = make_study([{"loss": loss, "init": "glorot", "seed": s, "lr": lr, "reach": 64,
                         "nll": value} for (loss, lr), value in nll.items() for s in range(2)])
    arms = arm_metrics(study)
    assert best_lrs(arms).to_dict() == {"bce": 1.0, "cce": 0.1}
    # ratios to each loss's best: lr 0.1 -> (3.0, 1.0), lr 1.0 -> (1.0, 1.25); medians 2.0, 1.125
    assert shared_lr(arms) == 1.0
    own = select_lr(arms, "own")
    assert set(zip(own["loss"], own["lr"], strict=True)) == {("bce", 1.0), ("cce", 0.1)}
    assert set(select_lr(arms, "shared")["lr"]) == {1.0}
    with pytest.raises(ValueError, match="valid: own, shared"):
        select_lr(arms, "best")


def test_a_censored_control_makes_the_slowdown_an_upper_bound():
    study = make_study([{"loss": "mse", "init": init, "seed": s,
                         "reach": None if init == "glorot" else 100,
                         "severity": 0.0 if init == "glorot" else 2.0}
                        for init in ("glorot", "scaled") for s in range(3)])
    row = summarize(arm_metrics(study)).set_index("init").loc["scaled"]
    assert row.slowdown == pytest.approx(100 / BUDGET) and row.slowdown_bound == "<="
    assert "mse ≤0.1x" in headline(summarize(arm_metrics(study)), 0.9)[0]


def test_a_slowdown_censored_on_both_sides_is_unknown():
    study = make_study([{"loss": "cce", "init": init, "seed": s, "reach": None,
                         "severity": 0.0 if init == "glorot" else 2.0}
                        for init in ("glorot", "scaled") for s in range(3)])
    row = summarize(arm_metrics(study)).set_index("init").loc["scaled"]
    assert row.slowdown_bound == "?"
    assert "cce unknown (censored from both starts)" in headline(
        summarize(arm_metrics(study)), 0.9)[0]


def test_tied_losses_are_all_fastest_and_the_table_says_so():
    """bce and cce tie at a median of 100 from scaled k=2 (mse is slower, its median a
    bound): both are named fastest, in the registry's order, and both cells are bold."""
    from study.analysis import answer_table

    reach = {"bce": [100, 100, 300], "cce": [50, 100, 100], "mse": [200, None, None]}
    study = make_study([{"loss": loss, "init": init, "seed": s, "reach": t,
                         "severity": 0.0 if init == "glorot" else 2.0}
                        for loss, times in reach.items() for init in ("glorot", "scaled")
                        for s, t in enumerate(times)])
    summary = summarize(arm_metrics(study))
    lines = headline(summary, 0.9)
    assert lines[0].index("bce") < lines[0].index("cce") < lines[0].index("mse")  # fixed order
    assert lines[0].endswith("Fastest from this start: bce, cce, tied (median 100 steps).")
    table = answer_table(summary)
    assert table.data.to_dict("index") == {
        "glorot": {"bce": "100", "cce": "100", "mse": "≥ 1,000"},
        "scaled k=2": {"bce": "100", "cce": "100", "mse": "≥ 1,000"}}
    import re

    rule = re.search(r"([^{}]*)\{\s*font-weight: bold", table.to_html()).group(1)
    bold = set(re.findall(r"_row(\d)_col(\d)", rule))
    assert bold == {("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")}  # bce and cce, each row
