"""Analysis: read studies from MLflow (``load``), measure convergence (``convergence``), and
say when there is nothing to compare (``empty``)."""

from study.analysis.convergence import (
    answer_table,
    arm_metrics,
    describe_view,
    headline,
    kaplan_meier,
    performance_profile,
    report_table,
    select_lr,
    start_name,
    summarize,
)
from study.analysis.empty import NothingToReport, nothing_to_report, require_arms
from study.analysis.growth import growth_sentences, growth_table
from study.analysis.load import Study, experiments, load_study, neuron_table

__all__ = [
    "NothingToReport", "Study", "answer_table", "arm_metrics", "describe_view", "experiments",
    "growth_sentences", "growth_table", "headline", "kaplan_meier", "load_study",
    "neuron_table", "nothing_to_report", "performance_profile", "report_table",
    "require_arms", "select_lr", "start_name", "summarize",
]
