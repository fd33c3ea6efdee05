"""Growth with severity: how a stall's length grows with how bad the start is, as a law.

The mechanism decides the model. An escape time is an ordinary learning time plus a stall:
T(s) = T0 + c e^(b s). T0 is what every start needs (the control's learning time), the
stall c e^(b s) is what the severity s adds. The theory per unit of saturated_wrong's m sits
on each loss spec (``LossSpec.stall_slope``): squared error on a sigmoid output moves at a
rate carrying sigma'(m) ~ e^-m, so b = 1; on a softmax the wrong start is a logit gap of 2m,
so b = 2; cross-entropy cancels the derivative, so b = 0. A straight line of log T against s
(the accelerated-failure-time fit used before) is the wrong model: where T0 dominates, log T
is flat whatever b is, so its slope depends on which severities it is fitted over.

The fit: maximum likelihood with log-normal noise around T(s), every crossing interval-
censored (it lies in (low, time]; an arm that never escapes is right-censored at the budget),
over the severities the config's ``growth_window`` declared before the data were seen
(default: all of the family's). The 95% CI comes from a bootstrap clustered by seed: a seed's
severities share its start and minibatch order, so seeds, not arms, are resampled. Local
slopes, the change of log(median T) between neighbouring severities, are shown beside the
fit: they rise towards b as the stall outgrows T0.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import optimize, special

from study.analysis.convergence import CONFIDENCE

COLUMNS = ["init", "loss", "optimizer", "severities", "slope", "ci_low", "ci_high", "t0",
           "stall_at_top", "n_arms", "n_censored", "theory", "local_slopes"]
RESAMPLES = 200
SLOPE_BOUNDS = (-3.0, 6.0)


def theory_slope(init: str, loss: str) -> float:
    """The slope the mechanism predicts (the loss spec's), where it predicts one."""
    from study.inits import INITS
    from study.losses import LOSSES

    if init not in INITS or not INITS[init].saturates_output or loss not in LOSSES:
        return np.nan
    slope = LOSSES[loss].stall_slope
    return np.nan if slope is None else float(slope)


def in_window(cell: pd.DataFrame, window: tuple[float, float] | None) -> pd.DataFrame:
    if window is None:
        return cell
    return cell[cell["severity"].between(*window)]


def growth_table(arms: pd.DataFrame, windows: dict | None = None,
                 event: str = "escape") -> pd.DataFrame:
    """One row per (init family with three or more severities in its window, loss,
    optimizer): the fitted b of T0 + c e^(b s) with its clustered-bootstrap 95% CI, T0, the
    stall at the window's top severity, the arms (censored ones), the theory's b and the
    local slopes."""
    windows = windows or {}
    rows = []
    for (init, loss, optimizer), cell in arms.groupby(["init", "loss", "optimizer"]):
        cell = in_window(cell, windows.get(init))
        severities = np.sort(cell["severity"].unique())
        if len(severities) < 3:
            continue
        fit = fit_growth(cell[f"{event}_low"], cell[f"{event}_time"], cell["severity"],
                         cell["seed"])
        rows.append({"init": init, "loss": loss, "optimizer": optimizer,
                     "severities": f"{severities[0]:g}-{severities[-1]:g}", **fit,
                     "n_arms": len(cell), "n_censored": int((~cell[f"{event}_reached"]).sum()),
                     "theory": theory_slope(init, loss),
                     "local_slopes": local_slopes(cell, event)})
    return pd.DataFrame(rows, columns=COLUMNS)


def local_slopes(cell: pd.DataFrame, event: str = "escape") -> str:
    """d log(median T) / ds between neighbouring severities ('≥' where the upper median is
    censored, so the slope is a lower bound; '?' past that)."""
    times = cell[f"{event}_time"].where(cell[f"{event}_reached"], np.inf)
    medians = times.groupby(cell["severity"]).median().clip(lower=1.0)
    parts = []
    for (s0, t0), (s1, t1) in zip(medians.items(), list(medians.items())[1:], strict=False):
        if np.isinf(t0):
            parts.append("?")
        elif np.isinf(t1):
            budget = cell[f"{event}_low"].max()
            parts.append(f"≥{np.log(budget / t0) / (s1 - s0):.2f}")
        else:
            parts.append(f"{np.log(t1 / t0) / (s1 - s0):.2f}")
    return ", ".join(parts)


def _neg_log_likelihood(theta, s, log_low, log_high):
    """Minus the log-likelihood of crossings in (low, high] under log T ~ N(log(T0 + c
    e^(b s)), sigma^2), and its gradient in (log T0, log c, b, log sigma)."""
    log_t0, log_c, b, log_sigma = theta
    mu = np.logaddexp(log_t0, log_c + b * s)  # log(T0 + c e^(b s))
    sigma = np.exp(log_sigma)
    z_high, z_low = (log_high - mu) / sigma, (log_low - mu) / sigma
    upper, lower = special.log_ndtr(z_high), special.log_ndtr(z_low)
    # log(Phi(high) - Phi(low)), stable where both are close to 1
    mass = upper + np.log1p(-np.exp(np.minimum(lower - upper, -1e-12)))

    def density_over_mass(z):  # phi(z) / (Phi(high) - Phi(low)), and z times it; 0 at +-inf
        finite = np.isfinite(z)
        safe = np.where(finite, z, 0.0)
        ratio = np.where(finite, np.exp(-0.5 * safe**2 - 0.5 * np.log(2 * np.pi) - mass), 0.0)
        return ratio, ratio * safe

    high, z_high_ratio = density_over_mass(z_high)
    low, z_low_ratio = density_over_mass(z_low)
    d_mu = -(high - low) / sigma  # d mass / d mu
    share_t0 = np.exp(log_t0 - mu)  # d mu / d log T0; d mu / d log c is 1 minus it
    gradient = np.array([np.sum(d_mu * share_t0), np.sum(d_mu * (1 - share_t0)),
                         np.sum(d_mu * (1 - share_t0) * s),
                         np.sum(-(z_high_ratio - z_low_ratio))])
    return -np.sum(mass), -gradient


def _fit(s, log_low, log_high, start=None):
    """The maximum-likelihood (log T0, log c, b, log sigma), from ``start`` or from a few
    starting slopes."""
    finite = np.isfinite(log_high)
    guess_t0 = np.median(log_high[finite]) if finite.any() else np.max(log_low)
    starts = [start] if start is not None else [
        np.array([guess_t0, guess_t0 - b * s.max() - 1.0, b, np.log(0.5)])
        for b in (0.0, 0.5, 1.0, 2.0)]
    bounds = [(-5, 25), (-60, 25), SLOPE_BOUNDS, (np.log(0.01), np.log(5))]
    best = None
    for x0 in starts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optimize.minimize(_neg_log_likelihood, x0, args=(s, log_low, log_high),
                                       method="TNC", jac=True, bounds=bounds)
        if best is None or result.fun < best.fun:
            best = result
    return best.x


def fit_growth(low, time, severity, seed, resamples: int = RESAMPLES) -> dict:
    """b (``slope``) of T(s) = T0 + c e^(b s) from crossings in (low, time] (time inf:
    right-censored), with a bootstrap over seeds for its CI; NaN where the data cannot
    identify it: every arm censored, fewer than three severities, or no stall (the fitted
    stall at the top severity, ``stall_at_top``, is less than T0)."""
    data = pd.DataFrame({"low": np.asarray(low, float), "time": np.asarray(time, float),
                         "s": np.asarray(severity, float), "seed": np.asarray(seed)})
    empty = {"slope": np.nan, "ci_low": np.nan, "ci_high": np.nan, "t0": np.nan,
             "stall_at_top": np.nan}
    if np.isinf(data["time"]).all() or data["s"].nunique() < 3:
        return empty
    # A crossing at step 0 lies in (0, 0.5]: the model is continuous, steps discretize it.
    log_low = np.log(np.maximum(data["low"].to_numpy(), 1e-300))
    log_low[data["low"].to_numpy() <= 0] = -np.inf
    log_high = np.log(np.maximum(data["time"].to_numpy(), 0.5))
    s = data["s"].to_numpy()
    theta = _fit(s, log_low, log_high)
    t0, stall = float(np.exp(theta[0])), float(np.exp(theta[1] + theta[2] * s.max()))
    if stall < t0:
        # Less than a doubling of the escape time at the top severity: the stall term is too
        # small for its growth rate to mean anything (cross-entropy's case), say so instead.
        return {**empty, "t0": t0, "stall_at_top": stall}
    seeds = data["seed"].unique()
    rows_of = {seed: np.flatnonzero(data["seed"].to_numpy() == seed) for seed in seeds}
    rng = np.random.default_rng(0)
    slopes = []
    if len(seeds) >= 2:
        for _ in range(resamples):
            rows = np.concatenate([rows_of[seed] for seed in rng.choice(seeds, len(seeds))])
            if np.isinf(log_high[rows]).all() or len(np.unique(s[rows])) < 3:
                continue
            slopes.append(_fit(s[rows], log_low[rows], log_high[rows], theta)[2])
    tail = (1 - CONFIDENCE) / 2
    low_b, high_b = (np.quantile(slopes, [tail, 1 - tail]) if len(slopes) >= 20
                     else (np.nan, np.nan))
    return {"slope": float(theta[2]), "ci_low": float(low_b), "ci_high": float(high_b),
            "t0": t0, "stall_at_top": stall}


def growth_sentences(table: pd.DataFrame) -> list[str]:
    """The law in words, one sentence per family: each loss's b with its CI beside the
    theory's, or why there is none."""
    lines = []
    for init, family in table.groupby("init", sort=False):
        parts = []
        for row in family.sort_values("slope", ascending=False, na_position="last").itertuples():
            name = row.loss if family["optimizer"].nunique() == 1 else \
                f"{row.loss} ({row.optimizer})"
            theory = "" if np.isnan(row.theory) else f"; theory {row.theory:g}"
            if np.isnan(row.slope) and np.isfinite(row.t0):
                grows = (row.t0 + row.stall_at_top) / row.t0
                parts.append(f"{name} too small a stall to fit b (T at the top severity is "
                             f"{grows:.2f}x T0{theory})")
            elif np.isnan(row.slope):
                parts.append(f"{name} not identifiable (every arm censored{theory})")
            elif np.isnan(row.ci_low):
                parts.append(f"{name} b = {row.slope:.2f} (no CI: too few seeds{theory})")
            else:
                parts.append(f"{name} b = {row.slope:.2f} (95% CI {row.ci_low:.2f} to "
                             f"{row.ci_high:.2f}{theory})")
        symbol = _symbol(init)
        lines.append(f"From {init}, the escape time grows as T0 + c e^(b {symbol}) over "
                     f"{symbol} = {family['severities'].iloc[0]}: " + "; ".join(parts) + ".")
    return lines


def _symbol(init: str) -> str:
    from study.inits import INITS

    return (INITS[init].symbol if init in INITS else "") or "s"
