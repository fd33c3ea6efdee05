"""Convergence: how fast each arm reaches the target, and what the seeds say with uncertainty.

Per arm: steps-to-target (censored when the budget ends first), the area under the
validation error curve, final and best yardsticks, the gradient norm at step 0.
Per cell (loss, init, severity): medians with bootstrap CIs over seeds, Kaplan-Meier
time-to-target, the slowdown against the family's control, and performance profiles (the
loss-against-loss tests are in ``paired``). A diverged arm never reaches the target: it counts as
censored at the full budget (DeepOBS counts misses as the full budget too), and its error
after divergence counts as 1.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from study.analysis.crossings import crossings
from study.analysis.load import Study
from study.inits import CONTROL, start_name

# A condition is what the study compares: a loss under an optimizer. ``condition`` names it
# for tables and legends ("mse", or "mse · adam" with several optimizers); ``loss`` and
# ``optimizer`` stay the facts they are, for everything that looks a loss or optimizer up.
CELL = ["condition", "init", "severity"]
UNDER = " · "
CONFIDENCE = 0.95


# ---- per arm ------------------------------------------------------------------------------


def arm_metrics(study: Study) -> pd.DataFrame:
    """One row per arm: the arm's keys and its convergence measures."""
    budget = int(study.history["step"].max())
    found = crossings(study).set_index(["run_id", "level"])
    rows = []
    for run_id, history in study.history.groupby("run_id"):
        wide = history.pivot(index="step", columns="metric", values="value")
        # val_accuracy at its own (denser) steps, a diverged arm's NaN kept
        accuracy = history[history["metric"] == "val_accuracy"].set_index("step")["value"]
        target, escape = found.loc[(run_id, study.target)], found.loc[(run_id, study.escape)]
        rows.append({"run_id": run_id, **_convergence(wide, accuracy, budget),
                     "reached": not target["censored"], "steps_to_target": target["step"],
                     # for survival analysis: the event time, or the censoring time (the
                     # whole budget)
                     "time": float(budget if target["censored"] else target["step"]),
                     "escape_reached": not escape["censored"], "escape_low": escape["low"],
                     "escape_time": np.inf if escape["censored"] else escape["step"]})
    measures = pd.DataFrame(rows)
    keys = ["run_id", "arm", "loss", "optimizer", "init", "severity", "seed", "lr", "diverged"]
    arms = study.arms[keys].merge(measures, on="run_id")
    return arms.assign(condition=condition_names(arms))


def condition_name(loss: str, optimizer: str, several: bool) -> str:
    """How tables and legends name a (loss, optimizer) condition."""
    return f"{loss}{UNDER}{optimizer}" if several else loss


def condition_names(arms: pd.DataFrame) -> pd.Series:
    """The loss's name, or "loss · optimizer" when the study has several optimizers."""
    if arms["optimizer"].nunique() > 1:
        return arms["loss"] + UNDER + arms["optimizer"]
    return arms["loss"].copy()


def crossing(accuracy: pd.Series, level: float, budget: int, name: str) -> dict:
    """When val_accuracy first reaches ``level``, as an interval between two logged steps:
    ``{name}_low`` < true step <= ``{name}_time`` (the schedule keeps them within 5%). Not
    reached within the budget: right-censored, ``{name}_low`` the last step, time inf."""
    steps = accuracy.index.to_numpy()
    hits = np.flatnonzero(accuracy.to_numpy() >= level)
    if not len(hits):
        return {f"{name}_reached": False, f"{name}_low": float(steps[-1]) if len(steps)
                else float(budget), f"{name}_time": np.inf}
    first = hits[0]
    return {f"{name}_reached": True, f"{name}_low": float(steps[first - 1]) if first else 0.0,
            f"{name}_time": float(steps[first])}


def _convergence(wide: pd.DataFrame, accuracy: pd.Series, budget: int) -> dict:
    accuracy = accuracy.sort_index()
    steps = accuracy.index.to_numpy()
    error = (1.0 - accuracy).fillna(1.0).to_numpy()
    if steps[-1] < budget:  # diverged: the worst error for the rest of the budget
        steps, error = np.append(steps, budget), np.append(error, 1.0)
    full = wide.dropna(subset=["val_nll"])  # the steps with every measure
    return {
        "budget": budget,
        "auc_val_error": float(np.trapezoid(error, steps) / budget) if budget else np.nan,
        "final_val_accuracy": accuracy.iloc[-1],
        "best_val_accuracy": accuracy.max(),
        "final_val_nll": full["val_nll"].iloc[-1],
        "best_val_nll": full["val_nll"].min(),
        "final_val_brier": full["val_brier"].iloc[-1],
        "grad_norm_0": full["grad_norm"].iloc[0],
    }


# ---- learning-rate views ------------------------------------------------------------------


def best_lrs(arms: pd.DataFrame) -> pd.Series:
    """Each loss's best learning rate on the control init, by the outcome: the median steps
    to the target (a censored arm at the budget), ties broken by median final val_nll (a
    diverged arm's NaN counts as worst)."""
    scores = lr_scores(arms)
    best = scores.sort_values(["median_steps", "median_final_val_nll"]).groupby(
        level="condition").head(1)
    return best.reset_index(level="lr")["lr"].rename("lr")


def lr_scores(arms: pd.DataFrame) -> pd.DataFrame:
    """Per (condition, lr) on the control init: median steps to target and median final
    val_nll, the outcome against the learning rate that the report shows. Only the rates a
    condition ran from every one of its starts compete: a rate run from a few starts only
    (the band of ``lr_band``) cannot give a view of the whole study."""
    control = _control_rows(arms)
    common = common_rates(arms)
    control = control[[pair in common for pair in zip(control["condition"], control["lr"],
                                                      strict=True)]]
    control = control.assign(final_val_nll=control["final_val_nll"].fillna(np.inf))
    return control.groupby(["condition", "lr"]).agg(median_steps=("time", "median"),
                                                    median_final_val_nll=("final_val_nll",
                                                                          "median"))


def common_rates(arms: pd.DataFrame) -> set[tuple[str, float]]:
    """(condition, lr) pairs that the condition ran from every one of its starts."""
    starts = arms.groupby("condition")[["init", "severity"]].apply(
        lambda c: len(c.drop_duplicates()))
    per_rate = arms.groupby(["condition", "lr"])[["init", "severity"]].apply(
        lambda c: len(c.drop_duplicates()))
    return {(condition, lr) for (condition, lr), n in per_rate.items()
            if n == starts[condition]}


def lr_edge_warnings(arms: pd.DataFrame) -> list[str]:
    """A condition whose best rate on the control is the smallest or largest of the rates
    it ran there may do better outside them: say so, for each condition that ran two or
    more rates (one pre-tuned rate has no edge to be at)."""
    control = _control_rows(arms)
    lines = []
    for condition, lr in best_lrs(arms).items():
        rates = sorted(control.loc[control["condition"] == condition, "lr"].unique())
        if len(rates) >= 2 and lr in (rates[0], rates[-1]):
            lines.append(f"{condition}'s best learning rate, {lr:g}, is at the "
                         f"{'lower' if lr == rates[0] else 'upper'} edge of the rates it ran "
                         f"({', '.join(f'{r:g}' for r in rates)}): a rate outside them may "
                         "be better")
    return lines


def shared_lr(arms: pd.DataFrame) -> float:
    """The one learning rate that keeps every loss closest to its own best: the lr with the
    smallest median (over losses) ratio of val_nll to that loss's best val_nll."""
    control = _control_rows(arms)
    nll = control.assign(final_val_nll=control["final_val_nll"].fillna(np.inf))
    medians = nll.groupby(["condition", "lr"])["final_val_nll"].median().unstack("lr")
    ratio = medians.div(medians.min(axis=1), axis=0)
    return float(ratio.median(axis=0).idxmin())


def _control_rows(arms: pd.DataFrame) -> pd.DataFrame:
    control = arms[arms["init"] == CONTROL]
    return control if len(control) else arms  # without a control, tune on everything


def select_lr(arms: pd.DataFrame, view: str) -> pd.DataFrame:
    """The arms of one view: ``own`` (each loss at its own best lr) or ``shared``."""
    if view == "own":
        chosen = best_lrs(arms)
        return arms[arms["lr"] == arms["condition"].map(chosen)].reset_index(drop=True)
    if view == "shared":
        return arms[arms["lr"] == shared_lr(arms)].reset_index(drop=True)
    raise ValueError(f"unknown lr view {view!r}; valid: own, shared")


def describe_view(arms: pd.DataFrame, view: str) -> str:
    if arms["lr"].nunique() == 1:
        return f"every loss at the one learning rate of the study, {arms['lr'].iloc[0]:g}"
    if view == "shared":
        return f"every loss at the shared learning rate {shared_lr(arms):g}"
    chosen = best_lrs(arms)
    chosen = chosen.reindex(loss_order(chosen.index))
    rates = ", ".join(f"{loss} {lr:g}" for loss, lr in chosen.items())
    common = common_rates(arms)
    if all(sum(c == condition for c, _ in common) == 1 for condition in chosen.index):
        return f"each loss at the one rate it ran from every start ({rates})"
    return f"each loss at its own best learning rate on the control init ({rates})"


# ---- per cell -----------------------------------------------------------------------------


def median_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Median with a percentile-bootstrap CI over seeds (NaN bounds with fewer than 2)."""
    values = np.asarray(values, dtype=float)
    median = float(np.median(values))
    if len(values) < 2:
        return median, np.nan, np.nan
    if np.all(values == values[0]):
        return median, median, median
    result = stats.bootstrap((values,), np.median, confidence_level=confidence,
                             n_resamples=2000, method="percentile",
                             rng=np.random.default_rng(0))
    return median, float(result.confidence_interval.low), float(result.confidence_interval.high)


def kaplan_meier(times, reached):
    """A fitted lifelines KaplanMeierFitter of time-to-target; censored arms count as such."""
    from lifelines import KaplanMeierFitter

    return KaplanMeierFitter().fit(np.asarray(times, float), np.asarray(reached, bool))


def summarize(arms: pd.DataFrame) -> pd.DataFrame:
    """One row per (loss, init, severity): counts, medians with CIs, KM median, slowdown."""
    rows = []
    for (condition, init, severity), cell in arms.groupby(CELL):
        median, low, high = median_ci(cell["time"])
        km_median = float(kaplan_meier(cell["time"], cell["reached"]).median_survival_time_)
        final = median_ci(cell["final_val_accuracy"].fillna(0.0))
        rows.append({
            "condition": condition, "loss": cell["loss"].iloc[0],
            "optimizer": cell["optimizer"].iloc[0], "init": init, "severity": severity,
            "lr": _lrs(cell),
            "seeds": len(cell), "reached": int(cell["reached"].sum()),
            "diverged": int(cell["diverged"].sum()),
            "median_steps": median, "steps_ci_low": low, "steps_ci_high": high,
            "steps_bound": median_is_bound(cell["reached"]),
            "km_median_steps": km_median,
            "median_auc_val_error": float(cell["auc_val_error"].median()),
            "median_final_val_accuracy": final[0],
            "final_val_accuracy_ci_low": final[1], "final_val_accuracy_ci_high": final[2],
            "median_grad_norm_0": float(cell["grad_norm_0"].median()),
            **_escape(cell),
        })
    summary = pd.DataFrame(rows)
    slow = slowdowns(arms)
    if len(slow):
        summary = summary.merge(slow, on=CELL, how="left")
    return summary


def _escape(cell: pd.DataFrame) -> dict:
    """Median steps to the escape level (a censored arm at the budget), and whether that
    median is only a lower bound."""
    if "escape_time" not in cell:
        return {}
    times = cell["escape_time"].where(cell["escape_reached"], cell["budget"])
    return {"median_escape_steps": float(times.median()),
            "escape_bound": median_is_bound(cell["escape_reached"])}


def _lrs(cell: pd.DataFrame) -> str:
    return ", ".join(f"{lr:g}" for lr in sorted(cell["lr"].unique()))


def slowdowns(arms: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Steps-to-target from each start over steps-to-target from its family's control
    (``family_reference``), per loss:
    the ratio of medians, with a paired bootstrap CI over seeds (a seed shares its control
    weights and minibatch order across inits). ``slowdown_bound`` says how censoring bends it."""
    rows = []
    for (loss, init, severity), cell in arms.groupby(CELL):  # loss: the condition
        reference = family_reference(arms, init)
        if (init, severity) == reference:
            continue
        control_rows = arms[(arms["init"] == reference[0])
                            & (arms["severity"] == reference[1])].set_index(["condition",
                                                                              "seed"])
        control, control_reached = control_rows["time"], control_rows["reached"]
        if loss not in control.index.get_level_values("condition"):
            continue
        paired = cell.set_index("seed")["time"].to_frame("bad").join(
            control.loc[loss].rename("control"), how="inner")
        bad, ctrl = paired["bad"].to_numpy(), np.maximum(paired["control"].to_numpy(), 1.0)
        ratio = float(np.median(bad) / np.median(ctrl))
        low = high = np.nan
        if len(paired) >= 2 and not (np.all(bad == bad[0]) and np.all(ctrl == ctrl[0])):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.DegenerateDataWarning)
                ci = stats.bootstrap((bad, ctrl), lambda b, c, axis: np.median(b, axis=axis)
                                     / np.median(c, axis=axis), paired=True, vectorized=True,
                                     confidence_level=confidence, n_resamples=2000,
                                     method="percentile", rng=np.random.default_rng(0))
            low, high = float(ci.confidence_interval.low), float(ci.confidence_interval.high)
        elif len(paired) >= 2:
            low = high = ratio
        rows.append({"condition": loss, "init": init, "severity": severity,
                     "reference": start_name(*reference), "slowdown": ratio,
                     "slowdown_ci_low": low, "slowdown_ci_high": high,
                     "slowdown_bound": _bound(median_is_bound(cell["reached"]),
                                              median_is_bound(control_reached.loc[loss])),
                     "censored_arms": int((~cell["reached"]).sum()
                                          + (~control_reached.loc[loss]).sum())})
    return pd.DataFrame(rows, columns=CELL + ["reference", "slowdown", "slowdown_ci_low",
                                              "slowdown_ci_high", "slowdown_bound",
                                              "censored_arms"])


def family_reference(arms: pd.DataFrame, init: str) -> tuple[str, float]:
    """The start a family is compared with: its own control (scaled k=1, saturated_wrong
    m=0) when the study ran it, else the control init (glorot)."""
    from study.inits import INITS

    own = INITS[init].reference if init in INITS else None
    if own is not None and ((arms["init"] == init) & (arms["severity"] == own)).any():
        return (init, own)
    return (CONTROL, 0.0)


def median_is_bound(reached: pd.Series) -> bool:
    """A median over seeds is only a lower bound on the true one when at least half of the
    seeds' times are censored; with fewer, it is the median of observed times."""
    return bool((~reached.astype(bool)).sum() * 2 >= len(reached))


def _bound(start_censored: bool, control_censored: bool) -> str:
    """How to read a slowdown: a censored time is a lower bound on the true one, so a ratio
    with a censored numerator is a lower bound (">="), with a censored denominator an upper
    bound ("<="), and with both it says nothing ("?")."""
    return {(False, False): "", (True, False): ">=", (False, True): "<=",
            (True, True): "?"}[(start_censored, control_censored)]


def performance_profile(arms: pd.DataFrame, taus=None) -> pd.DataFrame:
    """For each loss, the fraction of problems (init, severity, seed) on which it reaches
    the target within a factor tau of the fastest loss on that problem (Dolan-More)."""
    # groupby, not pivot_table: only (init, severity, seed) problems that exist, but every
    # loss as a column even where it never reached the target (all NaN)
    problems = arms.groupby(["init", "severity", "seed", "condition"])["steps_to_target"].min(
        ).unstack("condition")
    best = problems.min(axis=1)
    ratios = problems.div(best.replace(0, 1), axis=0).fillna(np.inf)  # misses never count
    if taus is None:
        finite = ratios.to_numpy()[np.isfinite(ratios.to_numpy())]
        top = max(2.0, float(finite.max()) * 1.1) if finite.size else 2.0
        taus = np.geomspace(1.0, top, 200)
    return pd.DataFrame({loss: [(ratios[loss] <= tau).mean() for tau in taus]
                         for loss in ratios.columns}, index=pd.Index(taus, name="tau"))


# ---- the answer in words ------------------------------------------------------------------

_BOUND_SIGN = {"": "", ">=": "≥", "<=": "≤", "?": "? "}


def loss_order(losses) -> list[str]:
    """Losses (or conditions) in the registry's order (bce, cce, scce, mse, ...), each
    loss's optimizers together, other names after: the same order in every table and
    sentence."""
    from study.losses import LOSSES

    known = list(LOSSES)

    def key(name: str):
        loss, _, optimizer = name.partition(UNDER)
        return (known.index(loss) if loss in known else len(known), loss, optimizer)

    return sorted(dict.fromkeys(losses), key=key)


def start_order(summary: pd.DataFrame) -> list[tuple[str, float]]:
    """(init, severity) pairs: the control first, then by scheme and severity."""
    pairs = dict.fromkeys(zip(summary["init"], summary["severity"], strict=True))
    return sorted(pairs, key=lambda p: (p[0] != CONTROL, p[0], p[1]))


def fastest(start: pd.DataFrame) -> pd.DataFrame:
    """The rows of one start whose median steps to the target is the smallest, every tied
    loss included, none when no loss's median reached it."""
    reached = start[~start["steps_bound"].astype(bool)]
    if reached.empty:
        return reached
    return reached[reached["median_steps"] == reached["median_steps"].min()]


def _fastest_words(start: pd.DataFrame) -> str:
    best = fastest(start)
    if best.empty:
        return "No loss reaches the target from this start within the budget for most seeds."
    names = loss_order(best["condition"])
    steps = f"median {best['median_steps'].iloc[0]:,.0f} steps"
    if len(names) == 1:
        return f"Fastest from this start: {names[0]} ({steps})."
    return f"Fastest from this start: {', '.join(names)}, tied ({steps})."


def headline(summary: pd.DataFrame, target: float) -> list[str]:
    """One sentence per bad start, from the numbers: each loss's slowdown against the control
    with its CI, in the fixed loss order, and which loss (or tied losses) reach the target
    first from that start."""
    lines = []
    if "slowdown" not in summary or summary["slowdown"].isna().all():
        return ["No control (glorot) arms in this study, so no slowdowns to report."]
    rows = summary.dropna(subset=["slowdown"])
    for init, severity in start_order(rows):
        start = rows[(rows["init"] == init) & (rows["severity"] == severity)]
        parts = []
        for loss in loss_order(start["condition"]):
            row = next(start[start["condition"] == loss].itertuples())
            if row.slowdown_bound == "?":
                parts.append(f"{row.condition} unknown (censored from both starts)")
                continue
            bound = _BOUND_SIGN[row.slowdown_bound]
            budget_set = getattr(row, "censored_arms", 0) > 0  # an end may be the budget's
            ci = (f" (95% CI {row.slowdown_ci_low:.1f}-{row.slowdown_ci_high:.1f}"
                  f"{', an end set by the budget' if budget_set else ''})"
                  if np.isfinite(row.slowdown_ci_low) else "")
            parts.append(f"{row.condition} {bound}{row.slowdown:.1f}x{ci}")
        lines.append(
            f"From {start_name(init, severity)}, reaching val_accuracy {target:g} takes "
            f"{'; '.join(parts)} the steps it takes from {start['reference'].iloc[0]}. "
            + _fastest_words(start))
    return lines


def answer_table(summary: pd.DataFrame):
    """Median steps to the target over seeds at a glance ('≥' where at least half the seeds
    never reached it, so the median is a lower bound), the fastest condition of each start
    in bold, every tie included: start x loss, or with several optimizers (start,
    optimizer) x loss, so the table stays as wide as the losses. A pandas Styler."""
    several = summary["optimizer"].nunique() > 1
    losses = loss_order(summary["loss"])
    rows = [(start_name(*s), optimizer) for s in start_order(summary)
            for optimizer in (sorted(summary["optimizer"].unique()) if several else [""])]
    index = pd.MultiIndex.from_tuples(rows, names=["start", "optimizer"]) if several else \
        pd.Index([r[0] for r in rows], name="start")
    cells = pd.DataFrame("", index=index, columns=losses)
    bold = pd.DataFrame(False, index=index, columns=losses)
    for init, severity in start_order(summary):
        start = summary[(summary["init"] == init) & (summary["severity"] == severity)]
        best = set(fastest(start)["condition"])
        for row in start.itertuples():
            at = (start_name(init, severity), row.optimizer) if several else \
                start_name(init, severity)
            cells.loc[at, row.loss] = f"{'≥ ' if row.steps_bound else ''}{row.median_steps:,.0f}"
            bold.loc[at, row.loss] = row.condition in best
    return cells.style.apply(
        lambda _: np.where(bold, "font-weight: bold; background-color: #e6f0f8", ""), axis=None)


def report_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as people read it: indexed by (start, loss), CIs in brackets."""

    def ci(value, low, high, fmt):
        if not np.isfinite(value):
            return "-"
        text = format(value, fmt)
        return text + (f" [{format(low, fmt)}, {format(high, fmt)}]" if np.isfinite(low) else "")

    rows = []
    for row in summary.itertuples():
        slowdown = getattr(row, "slowdown", np.nan)
        rows.append({
            "start": start_name(row.init, row.severity), "loss": row.condition, "lr": row.lr,
            "reached target": f"{row.reached}/{row.seeds}"
                              + (f" ({row.diverged} diverged)" if row.diverged else ""),
            "median steps [95% CI]": ("≥ " if row.steps_bound else "")
            + ci(row.median_steps, row.steps_ci_low, row.steps_ci_high, ",.0f"),
            "median steps to escape": ("≥ " if getattr(row, "escape_bound", False) else "")
            + f"{getattr(row, 'median_escape_steps', np.nan):,.0f}",
            "KM median steps": "not reached" if np.isinf(row.km_median_steps)
            else f"{row.km_median_steps:,.0f}",
            "slowdown vs its control [95% CI]": (_BOUND_SIGN.get(getattr(row, "slowdown_bound", ""),
                                                            "") + " ").lstrip()
            + ci(slowdown, getattr(row, "slowdown_ci_low", np.nan),
                 getattr(row, "slowdown_ci_high", np.nan), ".2f"),
            "final val accuracy [95% CI]": ci(row.median_final_val_accuracy,
                                              row.final_val_accuracy_ci_low,
                                              row.final_val_accuracy_ci_high, ".3f"),
            "mean val error (AUC)": f"{row.median_auc_val_error:.3f}",
        })
    table = pd.DataFrame(rows)
    order = {start: i for i, start in enumerate(
        dict.fromkeys(start_name(i, s) for i, s in sorted(
            zip(summary["init"], summary["severity"], strict=True),
            key=lambda p: (p[0] != CONTROL, p[0], p[1]))))}
    table = table.sort_values(["start", "loss"], key=lambda c: c.map(order) if c.name ==
                              "start" else c)
    return table.set_index(["start", "loss"])
