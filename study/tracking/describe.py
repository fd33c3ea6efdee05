"""The experiment's description in MLflow (its ``mlflow.note.content`` tag, Markdown shown
above the runs): what the study asks, what it varies, and how to read its runs, saved views
and report. Every string from the config is escaped (study.markup)."""

from __future__ import annotations

import hashlib

from study.config import StudyConfig
from study.grid import Arm
from study.inits import start_name

NOTE_TAG = "mlflow.note.content"  # MLflow's experiment description
NOTE_HASH_TAG = "study.note_sha256"  # of the description this program wrote last


def experiment_note(config: StudyConfig, arms: list[Arm]) -> str:
    """The description: the question, the losses, the starts, then how to read it."""
    from study.losses import LOSSES
    from study.markup import md_text

    def listed(items) -> str:
        return ", ".join(f"*{md_text(item)}*" for item in items)

    starts = list(dict.fromkeys(start_name(arm.init, arm.severity) for arm in arms))
    losses = [f"- *{md_text(loss)}*: {md_text(LOSSES[loss].summary)}" if loss in LOSSES
              else f"- *{md_text(loss)}*" for loss in config.losses]
    seeds = len(config.seeds)
    return "\n".join([
        f"**Study {md_text(config.name)}**: how fast does each classification loss learn on "
        f"{md_text(config.dataset)}, and from which starting weights does it stall? "
        f"{len(arms)} arms: every loss from every start, {seeds} seed{'s' * (seeds > 1)} each "
        f"(a seed fixes the start and the minibatch order, so losses are compared seed by "
        f"seed), optimizers {listed(opt.key for opt in config.optimizers)}.",
        "", "**Losses**:", "", *losses, "",
        f"**Starts**: {listed(starts)}.", "",
        "**How to read it**: each child run is one arm, named *loss · start · seed · learning "
        "rate* and coloured by loss; its curves start at step 0 (before training). "
        f"The answer is the step at which `val_accuracy` first reaches {config.escape:g} "
        f"(the stall is over) and {config.target:g} (the target), each loss's against the "
        "fastest loss's from the same start. The view menu's saved views, *losses from "
        "...*, show one start each, every loss at its own best learning rate, with "
        "`val_accuracy` and `val_nll` against step; the link the study prints opens one of "
        "them. Each parent run is one invocation of `study run` and holds the "
        "config (`config.yaml`) and package versions.", "",
        f"**Report**: make report EXPERIMENT={md_text(config.name)} writes "
        f"reports/{md_text(config.name)}/report.html with the answer, the ratios' "
        "confidence intervals and the figures, and logs them under `report/` on the latest "
        "parent run, whose description then holds the answer."])


def note_hash(note: str) -> str:
    return hashlib.sha256(note.encode()).hexdigest()


def may_write_note(tags: dict[str, str]) -> bool:
    """The description is the program's to write: there is none, or it is still the one
    this program wrote last (a description someone wrote in MLflow's UI is kept)."""
    note = tags.get(NOTE_TAG)
    return note is None or note_hash(note) == tags.get(NOTE_HASH_TAG)
