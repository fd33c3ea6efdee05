"""Nothing to compare: a study whose latest parent run has no finished arm (every arm
refused, or a rerun into a new config that trained none), or whose arms all diverged. The
report says so in a sentence instead of drawing empty figures."""

from __future__ import annotations

from study.analysis.load import Study


class NothingToReport(Exception):
    """Raised by the report notebook's first cell; its message is the sentence it shows."""


def nothing_to_report(study: Study) -> str | None:
    """The sentence that says why there is nothing to compare, or None when there is."""
    arms = study.arms
    if arms.empty:
        return (f"Study {study.experiment!r} has no finished arm under its latest config "
                f"(parent run {study.parent_run_id}), so there is nothing to compare: run "
                "the study again (python -m study run CONFIG) to train its arms.")
    if arms["diverged"].all():
        return (f"All {len(arms)} arms of study {study.experiment!r} diverged (their loss "
                "became NaN or infinite), so no loss reached the target and there is "
                "nothing to compare: lower the learning rate, or use a milder start.")
    return None


def require_arms(study: Study) -> None:
    """Raise ``NothingToReport`` (the report ends there, saying why) when there is nothing
    to compare."""
    reason = nothing_to_report(study)
    if reason is not None:
        raise NothingToReport(reason)
