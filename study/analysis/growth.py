"""Growth with severity: how a stall's length grows with how bad the start is, as a law.

Per (init family, loss): a log-normal accelerated-failure-time model of the escape time,
log T = a + b * severity + sigma * noise, over the family's stall regime (the upper half of
its severities, ``stall_regime``), fitted by lifelines to interval-censored times: an
arm's crossing lies between two logged steps (the schedule keeps them within 5%), and an arm
that never escapes is right-censored at the budget. The slope b is the growth per unit of
severity on the natural-log scale: T grows like e^(b * severity).

The theory's value for ``saturated_wrong`` (Nielsen, ch. 3): a sigmoid output at
pre-activation m moves at a rate carrying sigma'(m) ~ e^-m under squared error, so the stall
grows like e^m, slope 1 per unit m; cross-entropy cancels sigma'(z), slope 0.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from study.analysis.convergence import CONFIDENCE

COLUMNS = ["init", "loss", "optimizer", "severities", "slope", "ci_low", "ci_high", "n_arms",
           "n_censored", "theory"]
SQUARED = {"mse", "quadratic"}  # squared error on sigmoid outputs
CROSS_ENTROPY = {"bce", "cce", "scce"}


def theory_slope(init: str, loss: str) -> float:
    """The slope the mechanism predicts, where it predicts one (NaN elsewhere)."""
    if init != "saturated_wrong":
        return np.nan
    return 1.0 if loss in SQUARED else 0.0 if loss in CROSS_ENTROPY else np.nan


def growth_table(arms: pd.DataFrame, event: str = "escape") -> pd.DataFrame:
    """One row per (init family with at least two severities, loss condition): the AFT slope
    of log(event time) against severity with its 95% CI, the arms and how many were
    censored, and the theory's slope."""
    rows = []
    families = arms[arms["init"].isin(_families(arms))]
    for (init, loss), cell in families.groupby(["init", "loss"]):
        cell = stall_regime(cell)
        slope, low, high = fit_slope(cell[f"{event}_low"], cell[f"{event}_time"],
                                     cell["severity"])
        loss_name = cell["loss_name"].iloc[0] if "loss_name" in cell else loss
        rows.append({"init": init, "loss": loss,
                     "optimizer": cell["optimizer"].iloc[0] if "optimizer" in cell else "sgd",
                     "severities": f"{cell['severity'].min():g}-{cell['severity'].max():g}",
                     "slope": slope, "ci_low": low, "ci_high": high, "n_arms": len(cell),
                     "n_censored": int((~cell[f"{event}_reached"]).sum()),
                     "theory": theory_slope(init, loss_name)})
    return pd.DataFrame(rows, columns=COLUMNS)


def stall_regime(cell: pd.DataFrame) -> pd.DataFrame:
    """The upper half of a family's severities (at least three of them, or all there are).
    The escape time is the ordinary learning time every start needs plus the stall,
    T = T0 + c e^(b m): at small severities T0 dominates and log T is flat whatever b is, so
    a straight line through every severity would understate b (from saturated_wrong under
    mse, 0.35 over m = 0..10 against about 1 over m = 5..10)."""
    severities = np.sort(cell["severity"].unique())
    keep = severities[min(len(severities) // 2, max(len(severities) - 3, 0)):]
    return cell[cell["severity"].isin(keep)]


def _families(arms: pd.DataFrame) -> list[str]:
    severities = arms.groupby("init")["severity"].nunique()
    return list(severities[severities >= 2].index)


def fit_slope(low, time, severity) -> tuple[float, float, float]:
    """The AFT slope of log T on severity and its CI, from crossings known to lie in
    (low, time] (time inf: right-censored). NaN where the data cannot identify it (every
    arm censored, or none varying)."""
    from lifelines import LogNormalAFTFitter

    low, time = np.asarray(low, float), np.asarray(time, float)
    # The stall ends at a latent time in (low, time]: the model is continuous, the steps are
    # its discretization. A crossing already at step 0 counts as (0, 0.5].
    data = pd.DataFrame({"lower": low, "upper": np.maximum(time, 0.5),
                         "severity": np.asarray(severity, float)})
    if np.isinf(data["upper"]).all() or data["severity"].nunique() < 2:
        return np.nan, np.nan, np.nan
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter = LogNormalAFTFitter(alpha=1 - CONFIDENCE).fit_interval_censoring(
                data, "lower", "upper", formula="severity")
    except Exception:  # lifelines' optimizer can fail on degenerate data: say so as NaN
        return np.nan, np.nan, np.nan
    key = ("mu_", "severity")
    bounds = fitter.confidence_intervals_.loc[key]
    return float(fitter.params_[key]), float(bounds.iloc[0]), float(bounds.iloc[1])


def growth_sentences(table: pd.DataFrame) -> list[str]:
    """The law in words, one sentence per family: each loss's growth rate with its CI."""
    lines = []
    for init, family in table.dropna(subset=["slope"]).groupby("init"):
        parts = [f"{row.loss} e^({row.slope:.2f} s) (95% CI {row.ci_low:.2f} to "
                 f"{row.ci_high:.2f}{'' if np.isnan(row.theory) else f'; theory {row.theory:g}'})"
                 for row in family.sort_values("slope", ascending=False).itertuples()]
        lines.append(f"From {init}, the escape time grows with severity s as "
                     + "; ".join(parts) + ".")
    return lines
