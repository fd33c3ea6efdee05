"""Loss against loss on paired seeds: a small, pre-stated family of contrasts that can answer.

An arm's seed fixes its start and its minibatch order whatever its loss, so the arms of one
seed under two losses form a pair, and the contrast is the paired log-ratio of their times.
The family is stated before looking: from each start, each loss against ``cce`` (the
textbook's cross-entropy). Per contrast: the geometric-mean ratio with a percentile-bootstrap
95% CI, and an exact sign-flip permutation test of the mean log-ratio (scipy's
``permutation_test`` over every one of the 2^n sign patterns for n <= 16 pairs); Holm's
correction runs inside the family. With n pairs the smallest two-sided p-value attainable
is 2 / 2^n: 0.0625 with 5 seeds, 6.1e-5 with 15, which is printed so a reader sees what
the design could have found.

A censored time (the target not reached within the budget) enters at the budget, a lower
bound on the true time, so a ratio with a censored arm is itself a bound; a contrast where
at least half the pairs hold a censored arm is flagged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from study.analysis.convergence import CONFIDENCE, start_name

REFERENCE = "cce"
COLUMNS = ["start", "init", "severity", "loss", "versus", "pairs", "censored_pairs", "ratio",
           "ci_low", "ci_high", "p_value", "p_min", "p_holm", "significant", "bound"]


def paired_contrasts(arms: pd.DataFrame, reference: str = REFERENCE,
                     time: str = "time", reached: str = "reached") -> pd.DataFrame:
    """One row per (start, condition whose loss is not ``reference``): the paired contrast
    of ``time`` (steps to target by default; ``escape_time`` for the escape) against the
    ``reference`` loss under the same optimizer."""
    from statsmodels.stats.multitest import multipletests

    rows = []
    budget = float(arms["budget"].max()) if len(arms) else 0.0
    for (init, severity, _), start in arms.groupby(["init", "severity", "optimizer"]):
        base = start[start["loss"] == reference].set_index("seed")
        if base.empty:
            continue
        for condition, cell in start[start["loss"] != reference].groupby("condition"):
            paired = cell.set_index("seed")[[time, reached]].join(
                base[[time, reached]], rsuffix="_ref", how="inner")
            if len(paired) < 2:
                continue
            mine = paired[time].replace(np.inf, budget).clip(lower=1.0).to_numpy()
            theirs = paired[f"{time}_ref"].replace(np.inf, budget).clip(lower=1.0).to_numpy()
            censored = int((~paired[reached] | ~paired[f"{reached}_ref"]).sum())
            rows.append({"start": start_name(init, severity), "init": init,
                         "severity": severity, "loss": condition,
                         "versus": base["condition"].iloc[0],
                         "pairs": len(paired), "censored_pairs": censored,
                         **_contrast(np.log(mine) - np.log(theirs)),
                         "bound": "censored" if censored >= len(paired) / 2 else ""})
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm",
                                                                        "significant")])
    if len(table):
        reject, holm, _, _ = multipletests(table["p_value"], alpha=1 - CONFIDENCE,
                                           method="holm")
        table["p_holm"], table["significant"] = holm, reject
    return table.reindex(columns=COLUMNS)


def _contrast(log_ratios: np.ndarray) -> dict:
    n = len(log_ratios)
    mean = float(np.mean(log_ratios))
    if np.all(log_ratios == log_ratios[0]):
        low = high = mean
    else:
        ci = stats.bootstrap((log_ratios,), np.mean, confidence_level=CONFIDENCE,
                             n_resamples=4000, method="percentile",
                             rng=np.random.default_rng(0)).confidence_interval
        low, high = float(ci.low), float(ci.high)
    return {"ratio": float(np.exp(mean)), "ci_low": float(np.exp(low)),
            "ci_high": float(np.exp(high)), "p_value": sign_flip_p(log_ratios),
            "p_min": min(1.0, 2.0 / 2**n)}


def sign_flip_p(values: np.ndarray, exact_up_to: int = 16) -> float:
    """Two-sided permutation p-value of mean(values) = 0 under sign flips (pairs whose
    difference is exactly 0 carry no sign and stay in): exact, over all 2^n sign patterns,
    for n <= ``exact_up_to``; else from 100,000 random patterns."""
    values = np.asarray(values, float)
    n = len(values)
    return float(stats.permutation_test(
        (values,), _mean, vectorized=True, permutation_type="samples",
        n_resamples=2**n if n <= exact_up_to else 100_000, alternative="two-sided",
        rng=np.random.default_rng(0)).pvalue)


def _mean(values: np.ndarray, axis: int) -> np.ndarray:
    # Rounded to 1e-12, so sign patterns whose means are equal but for the order of
    # summation tie with the observed one (a mean of 0 stays 0 under every flip).
    return np.round(np.mean(values, axis=axis), 12)
