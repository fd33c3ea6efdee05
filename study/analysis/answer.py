"""The answer between losses: from each start, how many times the fastest loss's steps each
loss takes to each level, paired by seed, at a fair learning rate, and whether the verdict
survives the learning rate halved or doubled.

A seed gives every loss the same start and the same minibatch order, so the losses of one
seed form a matched set and the unit of the answer is the paired ratio: a loss's steps to a
level over the fastest loss's, per seed, summarized by the geometric mean with a
percentile-bootstrap 95% CI over seeds. A censored time (the level not reached within the
budget, or a diverged arm) enters at the budget, a lower bound on the true time: a ratio
with a censored numerator is a lower bound and gets a one-sided lower confidence bound, one
with a censored denominator an upper bound, and one with both says nothing ("?").

The learning rate is a nuisance parameter, so every ratio is given under two rules:
``tuned_on_control`` (each loss at the rate that reaches the level fastest from the control
start, among the rates run from both) and ``best_for_start`` (each loss at its best rate from
this start), and with the band (``ratio_low``, ``ratio_high``) over the rates within the
study's ``lr_band`` factor of the chosen one. "Fastest" is by the geometric mean of steps
over seeds (censored at the budget): a continuous score, so rates and losses rarely tie; a
tie is kept as a tie (both listed, the band spans both), never broken by another measure.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from study.analysis.convergence import CONFIDENCE, condition_name, loss_order
from study.analysis.load import Study
from study.inits import CONTROL, INITS, start_name

RULES = ("tuned_on_control", "best_for_start")
CONDITION = ["loss", "optimizer"]
COLUMNS = ["start", "init", "severity", "loss", "optimizer", "level", "lr_rule", "lr",
           "lr_tied", "ratio", "ci_low", "ci_high", "bound", "censored", "n_seeds",
           "ratio_low", "ratio_high", "steps", "fastest"]


# ---- crossings ------------------------------------------------------------------------------


def level_times(study: Study, arms: pd.DataFrame) -> pd.DataFrame:
    """One row per (arm, level): ``time``, the first step at which val_accuracy reaches the
    level (the budget when it never does: ``reached`` False)."""
    from study.analysis.crossings import crossings

    budget = float(study.history["step"].max()) if len(study.history) else 0.0
    found = crossings(study).rename(columns={"step": "time"})
    found["reached"] = ~found["censored"].astype(bool)
    found["time"] = found["time"].where(found["reached"], budget).astype(float)
    keys = arms[["run_id", "arm", *CONDITION, "init", "severity", "seed", "lr"]]
    return keys.merge(found[["arm", "level", "time", "reached"]], on="arm")


# ---- the rules ------------------------------------------------------------------------------


def _score(times: pd.Series) -> float:
    """Geometric mean of steps over seeds (a step-0 crossing counts as 1)."""
    return float(np.exp(np.mean(np.log(np.maximum(times.to_numpy(float), 1.0)))))


def _scores(times: pd.DataFrame) -> pd.Series:
    """Per (loss, optimizer, lr): the geometric-mean steps over seeds."""
    return times.groupby([*CONDITION, "lr"])["time"].apply(_score)


def _control(times: pd.DataFrame) -> pd.DataFrame:
    return times[times["init"] == CONTROL]


def chosen_rates(start: pd.DataFrame, control: pd.DataFrame, rule: str) -> dict:
    """(loss, optimizer) -> the tied best rates under ``rule`` (sorted): tuned on the
    control among the rates this start also ran, or the best from this start."""
    judged = start if rule == "best_for_start" or control.empty else \
        control[control["lr"].isin(start["lr"].unique())]
    chosen = {}
    for condition, scores in _scores(judged).groupby(level=CONDITION):
        ran = set(start.loc[(start["loss"] == condition[0])
                            & (start["optimizer"] == condition[1]), "lr"])
        scores = scores[scores.index.get_level_values("lr").isin(ran)]
        if len(scores):
            best = scores[scores == scores.min()].index.get_level_values("lr")
            chosen[condition] = sorted(best)
    return chosen


# ---- paired ratios --------------------------------------------------------------------------


def paired_ratio(mine: pd.DataFrame, theirs: pd.DataFrame) -> dict:
    """The paired ratio of two conditions' times over their common seeds: geometric mean,
    95% CI (percentile bootstrap over seeds; one-sided where censoring makes the ratio a
    bound), the bound, and the seeds behind it."""
    paired = mine.set_index("seed")[["time", "reached"]].join(
        theirs.set_index("seed")[["time", "reached"]], rsuffix="_ref", how="inner")
    n = len(paired)
    if not n:
        return {"ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "bound": "",
                "censored": 0, "n_seeds": 0}
    logs = (np.log(np.maximum(paired["time"].to_numpy(float), 1.0))
            - np.log(np.maximum(paired["time_ref"].to_numpy(float), 1.0)))
    numerator, denominator = ~paired["reached"], ~paired["reached_ref"]
    bound = {(False, False): "", (True, False): ">=", (False, True): "<=",
             (True, True): "?"}[(bool(numerator.any()), bool(denominator.any()))]
    ratio = float(np.exp(logs.mean()))
    low, high = _ci(logs, bound)
    return {"ratio": ratio, "ci_low": low, "ci_high": high, "bound": bound,
            "censored": int(numerator.sum()), "n_seeds": n}


def _ci(logs: np.ndarray, bound: str) -> tuple[float, float]:
    """Two-sided 95% CI of the geometric mean, or the one-sided 95% bound that censoring
    leaves meaningful; NaN where none can be computed (one seed, or '?')."""
    if len(logs) < 2 or bound == "?":
        return np.nan, np.nan
    if np.all(logs == logs[0]):
        value = float(np.exp(logs[0]))
        return (value if bound != "<=" else np.nan), (value if bound != ">=" else np.nan)
    one_sided = bound in (">=", "<=")
    level = 1 - 2 * (1 - CONFIDENCE) if one_sided else CONFIDENCE  # 90% two-sided = 95% one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        ci = stats.bootstrap((logs,), np.mean, confidence_level=level, n_resamples=2000,
                             method="percentile", rng=np.random.default_rng(0))
    low, high = float(np.exp(ci.confidence_interval.low)), \
        float(np.exp(ci.confidence_interval.high))
    if bound == ">=":
        return low, np.nan
    if bound == "<=":
        return np.nan, high
    return low, high


# ---- the answer -----------------------------------------------------------------------------


def answer(study: Study, arms: pd.DataFrame, times: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (start, loss, optimizer, level, rule): the paired ratio to the fastest
    loss with its CI, the band over the rate neighbourhood, and the steps behind it."""
    times = level_times(study, arms) if times is None else times
    rows = []
    for level, at_level in times.groupby("level"):
        control = _control(at_level)
        for (init, severity), start in at_level.groupby(["init", "severity"]):
            for rule in RULES:
                rows += [{"start": start_name(init, severity), "init": init,
                          "severity": severity, "level": level, "lr_rule": rule, **row}
                         for row in _start_rows(start, control, rule, study.lr_band)]
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["level", "init", "severity", "lr_rule"], kind="stable",
                             ignore_index=True)


def _start_rows(start: pd.DataFrame, control: pd.DataFrame, rule: str,
                factor: float) -> list[dict]:
    chosen = chosen_rates(start, control, rule)
    if not chosen:
        return []

    def arms_of(condition, lr):
        return start[(start["loss"] == condition[0]) & (start["optimizer"] == condition[1])
                     & (start["lr"] == lr)]

    steps = {c: _score(arms_of(c, rates[0])["time"]) for c, rates in chosen.items()}
    best = min(steps.values())
    tied = [c for c in chosen if steps[c] == best]
    order = loss_order([c[0] for c in tied])
    fastest = min(tied, key=lambda c: (order.index(c[0]), c[1]))
    reference = arms_of(fastest, chosen[fastest][0])
    rows = []
    for condition, rates in chosen.items():
        neighbours = sorted(set(start.loc[(start["loss"] == condition[0])
                                          & (start["optimizer"] == condition[1]), "lr"]))
        band = [lr for lr in neighbours
                if rates[0] / factor * (1 - 1e-9) <= lr <= rates[-1] * factor * (1 + 1e-9)]
        band_ratios = [paired_ratio(arms_of(condition, lr), reference)["ratio"]
                       for lr in band]
        rows.append({"loss": condition[0], "optimizer": condition[1], "lr": rates[0],
                     "lr_tied": ", ".join(f"{r:g}" for r in rates),
                     **paired_ratio(arms_of(condition, rates[0]), reference),
                     "ratio_low": float(np.nanmin(band_ratios)),
                     "ratio_high": float(np.nanmax(band_ratios)),
                     "steps": steps[condition], "fastest": condition in tied})
    return rows


def worst_starts(table: pd.DataFrame) -> list[tuple[str, float]]:
    """Each family's worst (highest-severity) start, in the report's order: what the answer
    opens with. A scheme without severities is its own worst start; the control is left out."""
    starts = dict.fromkeys(zip(table["init"], table["severity"], strict=True))
    worst = {}
    for init, severity in starts:
        if INITS.get(init) and INITS[init].control:
            continue
        worst[init] = max(worst.get(init, severity), severity)
    return sorted(worst.items())


def verdict(table: pd.DataFrame, init: str, severity: float, level: float) -> dict:
    """Which losses are fastest from a start to a level under each rule, and whether that
    holds across the rate band (no other loss, at any rate of its band, beats the fastest
    at the slowest rate of its own band)."""
    cell = table[(table["init"] == init) & (table["severity"] == severity)
                 & (table["level"] == level)]
    found = {}
    for rule, rows in cell.groupby("lr_rule"):
        fastest = rows[rows["fastest"]]
        others = rows[~rows["fastest"]]
        worst_fastest = fastest["ratio_high"].max()
        overtaken = others[others["ratio_low"] <= worst_fastest]
        found[rule] = {"fastest": list(zip(fastest["loss"], fastest["optimizer"],
                                           strict=True)),
                       "steps": float(fastest["steps"].min()),
                       "overtaken_by": list(zip(overtaken["loss"], overtaken["optimizer"],
                                                strict=True))}
    return found


# ---- the answer in words --------------------------------------------------------------------

_SIGN = {"": "", ">=": "≥ ", "<=": "≤ ", "?": "? "}
RULE_WORDS = {"tuned_on_control": "each loss at the rate tuned on the control start",
              "best_for_start": "each loss at its best rate from this start"}


def _names(conditions: list[tuple[str, str]], several: bool) -> list[str]:
    names = [condition_name(loss, optimizer, several) for loss, optimizer in conditions]
    return loss_order(names)


def ratio_words(row, seeds_total: int | None = None) -> str:
    """'1.18x (95% CI 1.03-1.33)', '≥ 9.9x (95% lower bound 8.6; 7 of 10 seeds never got
    there)', or a ratio without an interval and the reason."""
    text = f"{_SIGN[row.bound]}{row.ratio:.2f}x" if row.ratio < 10 else \
        f"{_SIGN[row.bound]}{row.ratio:.1f}x"
    if row.bound == "?":
        return "unknown (both it and the fastest loss never got there in some seeds)"
    if row.n_seeds < 2:
        return f"{text} (one seed: no interval)"
    never = f"; {row.censored} of {row.n_seeds} seeds never got there" if row.censored else ""
    if row.bound == ">=":
        return f"{text} (95% lower bound {row.ci_low:.2f}{never})"
    if row.bound == "<=":
        return f"{text} (95% upper bound {row.ci_high:.2f}; the fastest loss never got there " \
               "in some seeds)"
    return f"{text} (95% CI {row.ci_low:.2f}-{row.ci_high:.2f})"


def answer_sentences(table: pd.DataFrame, level: float, factor: float) -> list[str]:
    """One paragraph per family's worst start at ``level``: the fastest loss and every other
    loss's ratio to it under the control-tuned rates, whether the best rates from this start
    change the fastest loss, and whether the verdict holds across the rate band."""
    if table.empty:
        return []
    several = table["optimizer"].nunique() > 1
    lines = []
    for init, severity in worst_starts(table):
        cell = table[(table["init"] == init) & (table["severity"] == severity)
                     & (table["level"] == level)]
        if cell.empty:
            continue
        found = verdict(table, init, severity, level)
        rule = "tuned_on_control" if "tuned_on_control" in found else "best_for_start"
        rows = cell[cell["lr_rule"] == rule]
        fastest = _names(found[rule]["fastest"], several)
        name = start_name(init, severity)
        if rows["bound"].eq("?").all() or rows[rows["fastest"]]["censored"].gt(0).all():
            lines.append(f"From {name}, no loss reaches val_accuracy {level:g} in every seed "
                         "within the budget: a longer budget would tell them apart.")
            continue
        others = [f"{_label(row, several)} {ratio_words(row)}"
                  for row in _ordered(rows[~rows["fastest"]], several)]
        tie = " (tied)" if len(fastest) > 1 else ""
        text = (f"From {name} to val_accuracy {level:g}, {' and '.join(fastest)}{tie} "
                f"{'are' if len(fastest) > 1 else 'is'} fastest "
                f"({found[rule]['steps']:,.0f} steps, geometric mean over seeds; "
                f"{RULE_WORDS[rule]}). Paired by seed, the others take " + "; ".join(others)
                + " as many steps.")
        if rule == "tuned_on_control" and "best_for_start" in found:
            best = _names(found["best_for_start"]["fastest"], several)
            text += (" At each loss's best rate from this start the fastest is the same."
                     if best == fastest else " At each loss's best rate from this start the "
                     f"fastest is {' and '.join(best)}: the verdict depends on the rate rule.")
        if factor > 1 and rows["ratio_low"].ne(rows["ratio_high"]).any():
            text += " " + _band_words(rows, found[rule], several, factor)
        lines.append(text)
    return lines


def _band_words(rows: pd.DataFrame, found: dict, several: bool, factor: float) -> str:
    """What survives every loss's rate anywhere in its band: the losses that stay slower
    than the fastest loss at every pairing of rates, and those that can catch it."""
    overtaken = _names(found["overtaken_by"], several)
    slower = rows[~rows["fastest"] & ~rows.apply(
        lambda r: (r.loss, r.optimizer) in found["overtaken_by"], axis=1)]
    worst_fastest = rows.loc[rows["fastest"], "ratio_high"].max()
    parts = []
    if len(slower):
        names = loss_order(_label(r, several) for r in slower.itertuples())
        margin = slower["ratio_low"].min() / worst_fastest
        parts.append(f"{', '.join(names)} stay slower than the fastest at every pairing of "
                     f"rates (by at least {margin:.2f}x)")
    if overtaken:
        parts.append(f"{', '.join(overtaken)} can match or beat it at some rates within that "
                     "band: between those, the order depends on the rate")
    if not parts:
        return ""
    return f"With each loss's rate anywhere from /{factor:g} to x{factor:g} of it, " \
        + "; ".join(parts) + "."


def _label(row, several: bool) -> str:
    return condition_name(row.loss, row.optimizer, several)


def _ordered(rows: pd.DataFrame, several: bool):
    order = loss_order(_label(r, several) for r in rows.itertuples())
    return sorted(rows.itertuples(), key=lambda r: order.index(_label(r, several)))


def answer_at_a_glance(table: pd.DataFrame, rule: str = "tuned_on_control") -> pd.DataFrame:
    """Each family's worst start: rows (start, loss), one column per level, each cell the
    ratio to the fastest loss with its bound sign and the band in brackets."""
    several = table["optimizer"].nunique() > 1
    worst = worst_starts(table)
    is_worst = np.array([(i, s) in worst for i, s in zip(table["init"], table["severity"],
                                                          strict=True)], bool)
    rows = table[(table["lr_rule"] == rule).to_numpy() & is_worst]
    cells = {}
    for row in rows.itertuples():
        text = "–" if row.bound == "?" else f"{_SIGN[row.bound]}{row.ratio:.2f}"
        if row.ratio_low != row.ratio_high:
            text += f" [{row.ratio_low:.2f}, {row.ratio_high:.2f}]"
        cells[(row.start, _label(row, several), f"{row.level:g}")] = text
    if not cells:
        return pd.DataFrame()
    frame = pd.Series(cells).unstack()
    frame.index.names, frame.columns.name = ["start", "loss"], "val_accuracy level"
    order = loss_order(frame.index.get_level_values("loss"))
    return frame.sort_index(key=lambda index: index.map(order.index) if index.name == "loss"
                            else index)


# ---- losses that are the same update ----------------------------------------------------------

EQUIVALENCE_COLUMNS = ["loss", "lr", "same_as", "same_as_lr", "optimizer", "level", "ratio",
                       "ci_low", "ci_high", "bound", "censored", "n_seeds", "same_step"]


def equivalences(times: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """For each loss that is another's update up to the rate (``LossSpec.same_update_as``),
    run with it at matched rates: per level, the paired ratio of their steps over every
    (start, seed) they share, and the fraction of arms whose crossing is the same step."""
    from study.losses import LOSSES

    rows = []
    for loss, spec in LOSSES.items():
        if spec.same_update_as is None or not n_classes:
            continue
        other, factor = spec.same_update_as[0], spec.same_update_as[1](n_classes)
        for (optimizer, level), cell in times.groupby(["optimizer", "level"]):
            mine, theirs = cell[cell["loss"] == loss], cell[cell["loss"] == other]
            for lr in sorted(mine["lr"].unique()):
                matched = theirs[np.isclose(theirs["lr"], lr * factor, rtol=1e-9)]
                if matched.empty:
                    continue
                pair = mine[mine["lr"] == lr].assign(seed=lambda f: f["init"] + "|"
                                                     + f["severity"].astype(str) + "|"
                                                     + f["seed"].astype(str))
                matched = matched.assign(seed=lambda f: f["init"] + "|"
                                         + f["severity"].astype(str) + "|"
                                         + f["seed"].astype(str))
                both = pair.set_index("seed")["time"].to_frame().join(
                    matched.set_index("seed")["time"], rsuffix="_other", how="inner")
                rows.append({"loss": loss, "lr": lr, "same_as": other,
                             "same_as_lr": lr * factor, "optimizer": optimizer,
                             "level": level, **paired_ratio(pair, matched),
                             "same_step": float((both["time"] == both["time_other"]).mean())})
    return pd.DataFrame(rows, columns=EQUIVALENCE_COLUMNS)
