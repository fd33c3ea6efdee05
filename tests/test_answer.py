"""The answer between losses, on crossing times whose ratios are known by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.analysis import answer as answers
from study.analysis.convergence import lr_edge_warnings
from study.analysis.load import Study

BUDGET = 2000


def times_of(rows: list[tuple]) -> pd.DataFrame:
    """rows: (loss, init, severity, lr, [times per seed]); None is never (censored)."""
    out = []
    for loss, init, severity, lr, times in rows:
        for seed, time in enumerate(times):
            out.append({"run_id": f"{loss}{init}{severity}{lr}{seed}", "arm": "",
                        "loss": loss, "optimizer": "sgd", "init": init,
                        "severity": float(severity), "seed": seed, "lr": float(lr),
                        "level": 0.9, "time": float(BUDGET if time is None else time),
                        "reached": time is not None})
    return pd.DataFrame(out)


def study(lr_band: float = 2.0) -> Study:
    return Study("synthetic", "parent", "hash", 0.9, 0.5, pd.DataFrame(), pd.DataFrame(),
                 (0.5, 0.9), 10, {}, lr_band)


def rows_of(table, init="saturated_wrong", rule="tuned_on_control"):
    return table[(table["init"] == init) & (table["lr_rule"] == rule)].set_index("loss")


def test_the_paired_ratio_by_hand():
    """Per seed mse takes 3x, 2x, 3x cce's steps: the geometric mean is 18^(1/3) = 2.621,
    and every bootstrap resample's mean lies between the smallest and largest ratio."""
    times = times_of([("cce", "glorot", 0, 1, [50, 50, 50]),
                      ("mse", "glorot", 0, 32, [60, 60, 60]),
                      ("cce", "saturated_wrong", 8, 1, [100, 200, 400]),
                      ("mse", "saturated_wrong", 8, 32, [300, 400, 1200])])
    table = rows_of(answers.answer(study(), None, times))
    assert table.loc["cce", "fastest"] and not table.loc["mse", "fastest"]
    assert table.loc["cce", "ratio"] == 1.0
    assert table.loc["mse", "ratio"] == pytest.approx(18 ** (1 / 3))
    assert 2.0 <= table.loc["mse", "ci_low"] <= table.loc["mse", "ratio"] \
        <= table.loc["mse", "ci_high"] <= 3.0 + 1e-12
    assert table.loc["mse", "bound"] == "" and table.loc["mse", "n_seeds"] == 3
    assert table.loc["cce", "steps"] == pytest.approx((100 * 200 * 400) ** (1 / 3))


def test_a_censored_numerator_is_a_lower_bound_with_a_one_sided_interval():
    times = times_of([("cce", "glorot", 0, 1, [50, 50, 50, 50]),
                      ("mse", "glorot", 0, 32, [60, 60, 60, 60]),
                      ("cce", "saturated_wrong", 8, 1, [100, 100, 200, 200]),
                      ("mse", "saturated_wrong", 8, 32, [None, 500, None, 800])])
    row = rows_of(answers.answer(study(), None, times)).loc["mse"]
    assert row["bound"] == ">=" and row["censored"] == 2
    # per seed: 2000/100, 500/100, 2000/200, 800/200 = 20, 5, 10, 4
    assert row["ratio"] == pytest.approx((20 * 5 * 10 * 4) ** 0.25)
    assert np.isnan(row["ci_high"]) and 4.0 <= row["ci_low"] <= row["ratio"]
    words = answers.ratio_words(next(rows_of(answers.answer(study(), None, times))
                                     .loc[["mse"]].reset_index().itertuples()))
    assert words.startswith("≥ 7.95x (95% lower bound") and "2 of 4 seeds never got there" \
        in words


def test_one_seed_gives_no_interval_and_says_so():
    times = times_of([("cce", "glorot", 0, 1, [50]), ("mse", "glorot", 0, 32, [60]),
                      ("cce", "saturated_wrong", 8, 1, [100]),
                      ("mse", "saturated_wrong", 8, 32, [300])])
    table = answers.answer(study(), None, times)
    row = rows_of(table).loc["mse"]
    assert row["ratio"] == pytest.approx(3.0)
    assert np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])
    assert "3.00x (one seed: no interval)" in answers.answer_sentences(table, 0.9, 2.0)[0]


def test_the_two_rules_and_the_band():
    """bce is tuned on the control at 16 (8 and 32 slower there); from the bad start its
    best rate is 32. cce ran one rate. The band spans bce's rates within x2 of the rule's."""
    times = times_of([
        ("cce", "glorot", 0, 1, [100, 100]),
        ("bce", "glorot", 0, 8, [200, 200]), ("bce", "glorot", 0, 16, [90, 90]),
        ("bce", "glorot", 0, 32, [150, 150]),
        ("cce", "saturated_wrong", 8, 1, [100, 100]),
        ("bce", "saturated_wrong", 8, 8, [400, 400]), ("bce", "saturated_wrong", 8, 16, [200, 200]),
        ("bce", "saturated_wrong", 8, 32, [80, 80])])
    table = answers.answer(study(), None, times)
    tuned, best = rows_of(table), rows_of(table, rule="best_for_start")
    assert tuned.loc["bce", "lr"] == 16 and tuned.loc["bce", "ratio"] == pytest.approx(2.0)
    assert tuned.loc["cce", "fastest"]
    assert (tuned.loc["bce", "ratio_low"], tuned.loc["bce", "ratio_high"]) == \
        pytest.approx((0.8, 4.0))
    assert best.loc["bce", "lr"] == 32 and best.loc["bce", "fastest"]
    assert best.loc["cce", "ratio"] == pytest.approx(1.25)
    words = answers.answer_sentences(table, 0.9, 2.0)[0]
    assert "cce is fastest" in words
    assert "At each loss's best rate from this start the fastest is bce: the verdict " \
        "depends on the rate rule" in words
    assert "bce can match or beat it at some rates" in words


def test_tied_rates_are_a_band_not_a_tie_break():
    times = times_of([("cce", "glorot", 0, 1, [100, 100]), ("cce", "glorot", 0, 2, [100, 100]),
                      ("mse", "glorot", 0, 32, [300, 300]),
                      ("cce", "saturated_wrong", 8, 1, [100, 150]),
                      ("cce", "saturated_wrong", 8, 2, [120, 120]),
                      ("mse", "saturated_wrong", 8, 32, [300, 300])])
    row = rows_of(answers.answer(study(), None, times)).loc["cce"]
    assert row["lr_tied"] == "1, 2"
    # the band covers both tied rates: 1 (itself, 1.0) and 2 (120/100, 120/150)
    assert row["ratio_low"] == pytest.approx(np.sqrt(1.2 * 0.8))
    assert row["ratio_high"] == 1.0


def test_losses_that_are_the_same_update_are_checked_at_matched_rates():
    times = times_of([("mse", "glorot", 0, 32, [60, 70, 80]),
                      ("quadratic", "glorot", 0, 6.4, [60, 70, 81]),
                      ("quadratic", "glorot", 0, 4, [90, 90, 90])])
    table = answers.equivalences(times, n_classes=10)
    assert len(table) == 1  # 32 x 2/10 = 6.4; quadratic at 4 has no mse partner
    row = table.iloc[0]
    assert (row["loss"], row["same_as"], row["same_as_lr"]) == ("mse", "quadratic",
                                                                pytest.approx(6.4))
    assert row["same_step"] == pytest.approx(2 / 3)
    assert row["ratio"] == pytest.approx((80 / 81) ** (1 / 3))


def test_several_optimizers_keep_loss_and_optimizer_apart():
    """Two optimizers: each loss is compared with cce under its own optimizer, so the
    contrasts are found (the old 'mse · adam' loss name lost them)."""
    from study.analysis.convergence import condition_names
    from study.analysis.paired import paired_contrasts

    rows = []
    for optimizer, slow in [("sgd", 3.0), ("adam", 1.5)]:
        for seed in range(4):
            for loss, factor in [("cce", 1.0), ("mse", slow)]:
                rows.append({"loss": loss, "optimizer": optimizer, "init": "scaled",
                             "severity": 4.0, "seed": seed, "time": 100.0 * factor * (1 + seed),
                             "reached": True, "budget": 2000})
    arms = pd.DataFrame(rows)
    arms["condition"] = condition_names(arms)
    table = paired_contrasts(arms).set_index("loss")
    assert list(table.index) == ["mse · adam", "mse · sgd"]
    assert table.loc["mse · sgd", "versus"] == "cce · sgd"
    assert table.loc["mse · sgd", "ratio"] == pytest.approx(3.0)
    assert table.loc["mse · adam", "ratio"] == pytest.approx(1.5)


def test_lr_edge_warnings_only_where_a_loss_ran_a_grid():
    """cce ran one pre-tuned rate: no edge. bce's best of [2, 8] is at an edge."""
    rows = []
    for seed in range(3):
        rows += [{"condition": "cce", "init": "glorot", "severity": 0.0, "lr": 1.0,
                  "time": 100.0, "final_val_nll": 0.3, "seed": seed},
                 {"condition": "bce", "init": "glorot", "severity": 0.0, "lr": 2.0,
                  "time": 200.0, "final_val_nll": 0.3, "seed": seed},
                 {"condition": "bce", "init": "glorot", "severity": 0.0, "lr": 8.0,
                  "time": 100.0, "final_val_nll": 0.3, "seed": seed}]
    warnings = lr_edge_warnings(pd.DataFrame(rows))
    assert len(warnings) == 1 and warnings[0].startswith(
        "bce's best learning rate, 8, is at the upper edge of the rates it ran (2, 8)")


def test_the_band_runs_only_from_the_controls_and_the_worst_starts():
    from study.config import load_config
    from study.grid import expand_grid

    config = load_config("configs/default.yaml")
    arms = expand_grid(config)
    rates = {(a.init, a.severity): set() for a in arms}
    for arm in arms:
        if arm.loss == "mse":
            rates[(arm.init, arm.severity)].add(arm.lr)
    assert rates[("saturated_wrong", 8.0)] == rates[("glorot", 0.0)] == {16.0, 32.0, 64.0}
    assert rates[("saturated_wrong", 0.0)] == rates[("large_normal", 0.0)] == {16, 32, 64}
    assert rates[("saturated_wrong", 4.0)] == rates[("scaled", 2.0)] == {32.0}
    assert rates[("scaled", 4.0)] == {16.0, 32.0, 64.0}
    quadratic = {a.lr for a in arms if a.loss == "quadratic"}
    assert quadratic == {3.2, 6.4, 12.8}  # mse's rates x 2/C: the same updates
    assert len(arms) == 1140


def test_a_study_with_no_arms_says_so_instead_of_failing():
    from study.analysis import sections
    from study.analysis.load import ARM_COLUMNS

    empty = Study("nothing `<b>`", "parent", "hash", 0.9, 0.5, pd.DataFrame(columns=ARM_COLUMNS),
                  pd.DataFrame(columns=[*ARM_COLUMNS[:8], "step", "metric", "value"]))
    report = sections.build(empty)
    assert not report.ok and "has no finished arm" in report.problem
    assert sections.answer_words(report) == report.problem
    assert sections.title(report) == "**Study `` nothing `<b>` ``**: no arms stored."
    assert sections.answer_glance(report) is None and sections.medians(report) is None


def test_the_median_table_stays_as_wide_as_the_losses_with_several_optimizers():
    from study.analysis import arm_metrics, summarize
    from study.analysis.convergence import answer_table
    from tests.test_convergence import make_study

    arms = [{"loss": loss, "optimizer": optimizer, "init": "glorot", "seed": s,
             "reach": 64 if loss == "cce" else 200}
            for loss in ("cce", "mse", "bce") for optimizer in ("sgd", "adam")
            for s in range(2)]
    table = answer_table(summarize(arm_metrics(make_study(arms)))).data
    assert list(table.columns) == ["bce", "cce", "mse"]
    assert list(table.index) == [("glorot", "adam"), ("glorot", "sgd")]
    assert table.loc[("glorot", "sgd"), "cce"] == "64"


def test_a_study_without_equivalent_losses_has_an_empty_equivalence_table():
    times = times_of([("cce", "glorot", 0, 1, [60, 70]), ("bce", "glorot", 0, 16, [60, 80])])
    table = answers.equivalences(times, n_classes=10)
    assert table.empty and "level" in table.columns


def test_the_title_names_the_dataset_model_and_optimizer_the_arms_trained_with():
    """A study of one optimizer names it (its schedule included), its dataset and its model
    nowhere else in the report; each as a code span, so a file name cannot inject Markdown.
    A param that older runs lack is left out."""
    from study.analysis import sections
    from tests.test_convergence import make_study

    study = make_study([{"loss": loss, "init": "glorot", "seed": 0, "reach": 64,
                         "optimizer": "nadam+cosine_decay(decay_steps=300)"}
                        for loss in ("cce", "focal")])
    assert sections.title(sections.build(study)).startswith(
        "**Study `synthetic`**: 2 arms (optimizer `nadam+cosine_decay(decay_steps=300)`), 1 "
        "seeds, a budget of")
    study.arms["dataset"] = "/home/me/my `data` *1*.npz"
    study.arms["model"] = ["mlp-784-30-10-sigmoid", "my_models:build (25,578 params)"]
    assert sections.title(sections.build(study)).startswith(
        "**Study `synthetic`**: 2 arms (on ``/home/me/my `data` *1*.npz``, models "
        "`mlp-784-30-10-sigmoid`, `my_models:build (25,578 params)`, optimizer "
        "`nadam+cosine_decay(decay_steps=300)`), 1 seeds, a budget of")
