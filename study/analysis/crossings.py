"""Crossings as stored: for every arm and level, the first step at which val_accuracy
reaches the level.

Stores written by trainers that find crossings exactly hold a metric ``crossing_<level>``
per level reached (value and step: the step) and the parent param ``levels``: the crossing
then lies in (step - 1, step], and a level in ``levels`` without its metric was not reached
(censored). For levels a store does not hold exactly (stores written before, a relative
target) the logged curve gives the crossing: the first logged step at or above the level,
known to lie in (the logged step before, that step].
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.analysis.load import Study
from study.train.common import crossing_key

COLUMNS = ["run_id", "arm", "level", "step", "low", "censored", "exact"]


def crossings(study: Study) -> pd.DataFrame:
    """One row per (arm, level) for the study's ``levels``, target and escape: ``step`` the
    first step at or above the level (NaN when censored), ``low`` < the true step <=
    ``step`` (censored: the last step seen, the level not reached by then), ``exact`` when
    it comes from a ``crossing_<level>`` metric."""
    levels = sorted({v for v in (*study.levels, study.target, study.escape)
                     if not np.isnan(v)})
    exact = {crossing_key(level) for level in study.levels}
    arms = study.arms.set_index("run_id")["arm"]
    rows = []
    for run_id, history in study.history.groupby("run_id"):
        marks = history[history["metric"].str.startswith("crossing_")]
        marked = dict(zip(marks["metric"], marks["step"], strict=True))
        curve = history[history["metric"] == "val_accuracy"].sort_values("step")
        last = float(history["step"].max())
        for level in levels:
            key = crossing_key(level)
            if key in exact:
                step = marked.get(key)
                row = ((step, max(step - 1, 0)) if step is not None else (np.nan, last))
            else:
                row = _from_curve(curve["step"].to_numpy(), curve["value"].to_numpy(), level,
                                  last)
            rows.append((run_id, arms[run_id], level, float(row[0]), float(row[1]),
                         bool(np.isnan(row[0])), key in exact))
    return pd.DataFrame(rows, columns=COLUMNS)


def _from_curve(steps: np.ndarray, values: np.ndarray, level: float, last: float):
    """(first logged step at or above ``level``, the logged step before it), or (NaN, last)."""
    hits = np.flatnonzero(values >= level)
    if not len(hits):
        return np.nan, last
    first = hits[0]
    return steps[first], steps[first - 1] if first else 0
