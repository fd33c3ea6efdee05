"""Crossings as stored: for every arm and level, the first step at which val_accuracy
reaches the level.

The trainers find crossings exactly (an evaluation after every step while a level is still
to be crossed) and log a metric ``crossing_<level>`` per level reached (value and step: the
step): the crossing then lies in (step - 1, step]. Where an arm has no such metric, the
logged curve gives the crossing: the first logged step at or above the level, in (the
logged step before, that step]; for an arm that logged exact crossings this finds none
(a logged value at or above the level would have been crossed exactly), so it is censored,
and stores written before exact crossings keep their curve rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.analysis.load import Study
from study.train.common import crossing_key

COLUMNS = ["arm", "level", "step", "censored", "run_id", "low", "exact"]


def crossings(study: Study) -> pd.DataFrame:
    """One row per (arm, level) of ``study.all_levels``: ``step`` the first step at or above
    the level (NaN when censored), ``low`` < the true step <= ``step`` (censored: the last
    step seen, the level not reached by then), ``exact`` when it comes from a
    ``crossing_<level>`` metric."""
    arms = study.arms.set_index("run_id")["arm"]
    rows = []
    for run_id, history in study.history.groupby("run_id"):
        marks = history[history["metric"].str.startswith("crossing_")]
        marked = dict(zip(marks["metric"], marks["step"], strict=True))
        curve = history[history["metric"] == "val_accuracy"].sort_values("step")
        last = float(history["step"].max())
        for level in study.all_levels:
            step = marked.get(crossing_key(level))
            if step is not None:
                found = (float(step), float(max(step - 1, 0)))
            else:
                found = _from_curve(curve["step"].to_numpy(), curve["value"].to_numpy(),
                                    level, last)
            rows.append((arms[run_id], level, found[0], bool(np.isnan(found[0])), run_id,
                         found[1], step is not None))
    return pd.DataFrame(rows, columns=COLUMNS)


def _from_curve(steps: np.ndarray, values: np.ndarray, level: float, last: float):
    """(first logged step at or above ``level``, the logged step before it), or (NaN, last)."""
    hits = np.flatnonzero(values >= level)
    if not len(hits):
        return np.nan, last
    first = hits[0]
    return float(steps[first]), float(steps[first - 1] if first else 0)
