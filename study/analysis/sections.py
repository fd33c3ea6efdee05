"""The convergence report's content, computed once: what each cell of notebooks/report.ipynb
shows, or the sentence that says why there is nothing to show (a study with no arms, one
seed, no arm at the level). The notebook stays a thin view: one call per cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from study.analysis import answer as answers
from study.analysis.convergence import answer_table as median_table
from study.analysis.convergence import (
    arm_metrics,
    describe_view,
    headline,
    lr_edge_warnings,
    report_table,
    select_lr,
    summarize,
)
from study.analysis.crossings import crossings
from study.analysis.empty import nothing_to_report
from study.analysis.growth import growth_sentences, growth_table
from study.analysis.load import Study
from study.analysis.paired import paired_contrasts
from study.markup import md_code, md_lines, md_text
from study.markup import table as escaped


@dataclass
class Report:
    study: Study
    view: str = "own"
    problem: str = ""  # why the report has no numbers, when it has none
    all_arms: pd.DataFrame = field(default_factory=pd.DataFrame)
    arms: pd.DataFrame = field(default_factory=pd.DataFrame)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    answer: pd.DataFrame = field(default_factory=pd.DataFrame)
    times: pd.DataFrame = field(default_factory=pd.DataFrame)
    growth: pd.DataFrame = field(default_factory=pd.DataFrame)
    contrasts: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def ok(self) -> bool:
        return not self.problem


def build(study: Study, view: str = "own") -> Report:
    """Every table of the report, from the study's arms."""
    report = Report(study, view, problem=nothing_to_report(study) or "")
    if study.arms.empty:
        return report
    report.all_arms = arm_metrics(study)
    report.arms = select_lr(report.all_arms, view)
    report.summary = summarize(report.arms)
    report.times = answers.level_times(study, report.all_arms)
    report.answer = answers.answer(study, report.all_arms, report.times)
    report.growth = growth_table(report.arms, study.growth_window)
    report.contrasts = paired_contrasts(report.arms)
    return report


def title(report: Report) -> str:
    study = report.study
    name = f"**Study {md_code(study.experiment)}**"
    if report.study.arms.empty:
        return f"{name}: no arms stored."
    budget = int(report.all_arms["budget"].max())
    levels = ", ".join(f"{level:g}" for level in study.all_levels)
    return (f"{name}: {len(report.all_arms):,} arms{_trained_on(study.arms)}, "
            f"{report.all_arms['seed'].nunique()} "
            f"seeds, a budget of {budget:,} steps; val_accuracy levels {levels} (target "
            f"{study.target:g}, escape {study.escape:g}). After the answer, the tables and "
            f"figures show {md_text(describe_view(report.all_arms, report.view))}.")


def _trained_on(arms: pd.DataFrame) -> str:
    """" on `dataset`, model `model`, optimizer `sgd+cosine_decay(...)`": what the arms ran,
    as their params hold it (a study with one optimizer names it nowhere else); a param that
    runs stored by older versions lack is left out."""
    parts = []
    for column, word in [("dataset", "on"), ("model", "model"), ("optimizer", "optimizer")]:
        values = sorted(arms[column].dropna().astype(str).unique()) if column in arms else []
        if values:
            plural = "s" if len(values) > 1 and column != "dataset" else ""
            parts.append(f"{word}{plural} {', '.join(md_code(v) for v in values)}")
    return f" ({', '.join(parts)})" if parts else ""


def answer_words(report: Report) -> str:
    if not report.ok:
        return report.problem
    lines = answers.answer_sentences(report.answer, report.study.target, report.study.lr_band)
    if not lines:
        return ("No init family with a bad start in this study, so there is no bad start to "
                "answer for; the tables below compare the losses from each start.")
    one_seed = report.all_arms["seed"].nunique() < 2
    note = ["With one seed there are no intervals: run more seeds."] if one_seed else []
    return md_lines(lines + note)


def answer_glance(report: Report):
    if not report.ok or report.answer.empty:
        return None
    frame = answers.answer_at_a_glance(report.answer)
    return escaped(frame.style) if len(frame) else None


def equivalence_words(report: Report) -> str:
    if not report.ok:
        return ""
    table = answers.equivalences(report.times, report.study.n_classes)
    if table.empty:  # no two losses of the study are one update at matched rates
        return ""
    table = table[table["level"] == report.study.target]
    lines = []
    for (loss, other), rows in table.groupby(["loss", "same_as"]):
        if loss == "scce":
            share = rows["same_step"].min()
            text = ("scce is cce from integer labels: at the same rates they reach "
                    f"val_accuracy {report.study.target:g} at the same step in "
                    + ("every arm" if share == 1 else f"{share:.0%} or more of the arms"))
        else:
            factor = rows["same_as_lr"].iloc[0] / rows["lr"].iloc[0]
            text = (f"{loss} at rate η is {other} at η × {factor:g} (the same update: "
                    f"2/C with C = {report.study.n_classes} classes). At matched rates ("
                    + ", ".join(f"{a:g} and {b:g}" for a, b in zip(rows["lr"],
                                                                  rows["same_as_lr"],
                                                                  strict=True))
                    + f") they reach val_accuracy {report.study.target:g} at the same step in "
                    f"{rows['same_step'].min():.0%}-{rows['same_step'].max():.0%} of the arms "
                    "(float32 rounding differs between the two, and chaotic arms drift apart), "
                    "so any gap between them in this report is the learning rate, not the loss")
        lines.append(f"{text}.")
    return md_lines(lines)


def growth_words(report: Report) -> str:
    if not report.ok or report.growth.empty:
        return "No init family with three or more severities in this study."
    return md_lines(growth_sentences(report.growth))


def growth_shown(report: Report) -> pd.DataFrame | None:
    if not report.ok or report.growth.empty:
        return None
    table = report.growth.copy()
    for column in ("slope", "ci_low", "ci_high", "theory"):
        table[column] = table[column].map(lambda x: "" if np.isnan(x) else f"{x:.2f}")
    table["t0"] = table["t0"].map(lambda x: "" if np.isnan(x) else f"{x:,.0f}")
    table["stall_at_top"] = table["stall_at_top"].map(
        lambda x: "" if np.isnan(x) else f"{x:,.0f}")
    shown = table.rename(columns={"slope": "b", "ci_low": "b 95% CI low",
                                  "ci_high": "b 95% CI high", "t0": "T0 (steps)",
                                  "stall_at_top": "stall at the top severity (steps)",
                                  "theory": "theory b",
                                  "local_slopes": "local slopes d log T / ds"})
    return escaped(shown.style.hide(axis="index"))


def slowdown_words(report: Report) -> str:
    if not report.ok:
        return ""
    return md_lines(headline(report.summary, report.study.target))


def medians(report: Report):
    return escaped(median_table(report.summary)) if report.ok else None


def reached_anything(report: Report) -> bool:
    return report.ok and bool(report.arms["reached"].any())


def never_reached(report: Report) -> str:
    """What to say instead of empty panels."""
    budget = int(report.all_arms["budget"].max()) if report.ok else 0
    return (f"No arm reached val_accuracy {report.study.target:g} within the budget of "
            f"{budget:,} steps, so there is nothing to draw here: a longer budget (more "
            "epochs) would show when they get there.")


def lr_words(report: Report) -> str:
    if not report.ok:
        return ""
    warnings = lr_edge_warnings(report.all_arms)
    return md_lines(warnings) or \
        f"Rates used: {md_text(describe_view(report.all_arms, report.view))}."


def several_rates(report: Report) -> bool:
    return report.ok and report.all_arms.groupby("condition")["lr"].nunique().max() > 1


def contrasts_shown(report: Report):
    if not report.ok or report.contrasts.empty:
        return None
    frame = report.contrasts.drop(columns=["init", "severity", "versus"]).set_index(
        ["start", "loss"])
    return escaped(frame.style.format(precision=4))


def summary_shown(report: Report):
    return escaped(report_table(report.summary).style) if report.ok else None


def other_view_words(report: Report) -> str:
    if not report.ok:
        return ""
    other = "shared" if report.view == "own" else "own"
    rates = report.all_arms.groupby("condition")["lr"].apply(frozenset)
    if other == "shared" and rates.nunique() > 1:
        return ("Each loss ran rates of its own, so there is no one rate that every loss ran; "
                "the answer above already compares them at fair rates and across each "
                "loss's band.")
    arms = select_lr(report.all_arms, other)
    return (f"Now {md_text(describe_view(report.all_arms, other))}:\n\n"
            + md_lines(headline(summarize(arms), report.study.target)))


def write_tables(report: Report, out_dir: str) -> None:
    """The report's tables beside its HTML, for anyone's own analysis."""
    if not report.ok and report.all_arms.empty:
        return
    report.summary.to_csv(f"{out_dir}/summary.csv", index=False)
    report.growth.to_csv(f"{out_dir}/growth.csv", index=False)
    report.contrasts.to_csv(f"{out_dir}/contrasts.csv", index=False)
    report.answer[["start", "loss", "optimizer", "level", "lr_rule", "lr", "lr_tied",
                   "ratio", "ci_low", "ci_high", "bound", "censored", "n_seeds", "ratio_low",
                   "ratio_high"]].to_csv(f"{out_dir}/answer.csv", index=False)
    crossings(report.study)[["arm", "level", "step", "censored"]].to_csv(
        f"{out_dir}/crossings.csv", index=False)
