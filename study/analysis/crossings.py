"""Crossings: the first step at which an arm's val_accuracy reaches each of the study's
levels, read from the store (censored when the budget ends first)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.analysis.load import Study

COLUMNS = ["arm", "level", "step", "censored"]


def crossings(study: Study) -> pd.DataFrame:
    """One row per (arm, level): the first logged step with val_accuracy >= level."""
    accuracy = study.metric("val_accuracy").sort_values(["run_id", "step"])
    arm_of = study.arms.set_index("run_id")["arm"]
    rows = []
    for run_id, curve in accuracy.groupby("run_id"):
        steps, values = curve["step"].to_numpy(), curve["value"].to_numpy()
        for level in study.all_levels:
            hits = np.flatnonzero(values >= level)
            rows.append((arm_of[run_id], level, float(steps[hits[0]]) if len(hits) else np.nan,
                         not len(hits)))
    return pd.DataFrame(rows, columns=COLUMNS)
