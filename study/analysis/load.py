"""Read a study back from MLflow into tidy pandas: the only code that reads the store.

A report is rebuilt from the store alone: nothing here looks at configs or training code.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from urllib.parse import urlparse

import numpy as np
import pandas as pd

ARM_COLUMNS = ["run_id", "arm", "loss", "optimizer", "init", "severity", "seed", "lr",
               "diverged"]
KEYS = ARM_COLUMNS[:8]  # what each row of a history carries of its arm


@dataclass(frozen=True)
class Study:
    """One study as stored: its arms (one row each) and their metric histories (tidy)."""

    experiment: str
    parent_run_id: str
    config_hash: str
    target: float  # the val_accuracy threshold for steps-to-target
    escape: float  # the val_accuracy level that ends a stall (escape time)
    arms: pd.DataFrame  # ARM_COLUMNS plus the other params
    history: pd.DataFrame  # KEYS + step, metric, value
    levels: tuple[float, ...] = ()  # val_accuracy levels whose crossings the report gives
    n_classes: int = 0
    # init family -> (lowest, highest) severity of the growth fit, as the config declared
    growth_window: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the factor of each rate's neighbourhood the study ran (2: x1/2 and x2); 1 without a band
    lr_band: float = 2.0

    @property
    def all_levels(self) -> tuple[float, ...]:
        return self.levels or tuple(sorted({self.escape, self.target}))

    def metric(self, name: str) -> pd.DataFrame:
        return self.history[self.history["metric"] == name]


def _client(tracking_uri: str):
    with warnings.catch_warnings():
        # MLflow imports tqdm.auto, which warns inside a notebook without ipywidgets.
        warnings.filterwarnings("ignore", message="IProgress not found")
        from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def experiments(tracking_uri: str) -> list[str]:
    """Names of the experiments that hold at least one study parent run."""
    client = _client(tracking_uri)
    names = []
    for experiment in client.search_experiments():
        runs = client.search_runs([experiment.experiment_id],
                                  filter_string="tags.`study.role` = 'parent'", max_results=1)
        if runs:
            names.append(experiment.name)
    return sorted(names)


def load_study(tracking_uri: str, experiment: str, parent_run_id: str | None = None) -> Study:
    """The arms of a study and their full metric histories.

    With ``parent_run_id``, that invocation's arms; otherwise the arms of the latest parent
    run's config: every FINISHED child run with its config hash (a rerun that skipped
    finished arms still gets them), the newest run of each arm.
    """
    client = _client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no experiment {experiment!r} in {tracking_uri}; "
                         f"studies there: {', '.join(experiments(tracking_uri)) or 'none'}")
    runs = client.search_runs([found.experiment_id], max_results=50000,
                              order_by=["attributes.start_time DESC"])
    parents = [r for r in runs if r.data.tags.get("study.role") == "parent"]
    if parent_run_id is not None:
        parents = [r for r in parents if r.info.run_id == parent_run_id]
    if not parents:
        raise ValueError(f"experiment {experiment!r} holds no study parent run"
                         + (f" {parent_run_id}" if parent_run_id else ""))
    parent = parents[0]
    digest = parent.data.tags["study.config_hash"]
    children = [r for r in runs if "study.arm" in r.data.tags and r.info.status == "FINISHED"]
    if parent_run_id is not None:
        children = [r for r in children
                    if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    else:
        children = [r for r in children if r.data.tags.get("study.config_hash") == digest]
    newest: dict[str, object] = {}
    for run in children:  # newest first
        newest.setdefault(run.data.tags["study.arm"], run)
    arms = _arms_table(list(newest.values()))
    history = _histories(client, tracking_uri, arms)
    target = float(parent.data.params.get("target", "nan"))
    if parent.data.params.get("target_mode") == "relative":
        target = relative_target(target, history, int(parent.data.params["n_classes"]))
    params = parent.data.params
    escape = float(params.get("escape", "0.5"))
    declared = re.findall(r"[0-9.eE+-]+", params.get("levels", ""))  # "[0.5, 0.9]" or "0.5,0.9"
    levels = tuple(sorted({level for level in (*map(float, declared), escape, target)
                           if np.isfinite(level)}))
    window = {init: tuple(bounds) for init, bounds
              in json.loads(params.get("growth_window", "{}")).items()}
    band = json.loads(params.get("lr_band", "null")) or {"factor": 1.0}
    return Study(experiment, parent.info.run_id, digest, target, escape, arms, history,
                 levels, int(params.get("n_classes", "0")), window, float(band["factor"]))


def relative_target(fraction: float, history: pd.DataFrame, n_classes: int) -> float:
    """The val_accuracy ``fraction`` of the way from chance to the control's plateau: the
    median final val_accuracy of the control (glorot) arms, every loss pooled."""
    accuracy = history[history["metric"] == "val_accuracy"]
    control = accuracy[accuracy["init"] == "glorot"]
    if control.empty:
        raise ValueError("target_mode relative needs control (glorot) arms in the study")
    plateau = control.sort_values("step").groupby("run_id")["value"].last().median()
    chance = 1.0 / n_classes
    return float(chance + fraction * (plateau - chance))


def _arms_table(runs) -> pd.DataFrame:
    rows = []
    for run in runs:
        params, tags = run.data.params, run.data.tags
        rows.append({"run_id": run.info.run_id, "arm": tags["study.arm"],
                     "diverged": tags.get("study.diverged") == "true", **params})
    table = pd.DataFrame(rows, columns=None if rows else ARM_COLUMNS)
    for column, kind in [("severity", float), ("seed", int), ("lr", float)]:
        table[column] = table[column].astype(kind)
    for column in ("batch_size", "epochs"):
        if column in table:
            table[column] = table[column].astype(int)
    if "optimizer" not in table:  # runs stored before optimizers were an axis used SGD
        table["optimizer"] = "sgd"
    table["optimizer"] = table["optimizer"].fillna("sgd")
    first = [c for c in ARM_COLUMNS if c in table]
    table = table[first + [c for c in table.columns if c not in first]]
    return table.sort_values(["init", "severity", "loss", "seed", "lr"], ignore_index=True)


def _histories(client, tracking_uri: str, arms: pd.DataFrame) -> pd.DataFrame:
    run_ids = list(arms["run_id"])
    if urlparse(tracking_uri).scheme == "sqlite":
        raw = _sqlite_histories(tracking_uri, run_ids)
    else:
        raw = _client_histories(client, run_ids)
    keys = arms[KEYS]
    history = raw.merge(keys, on="run_id")
    return history[KEYS + ["step", "metric", "value"]].sort_values(
        ["run_id", "metric", "step"], ignore_index=True)


def _sqlite_histories(tracking_uri: str, run_ids: list[str]) -> pd.DataFrame:
    # One query for every history: the client's one call per (run, metric) costs ~5 ms each,
    # minutes for a few hundred arms. MLflow stores NaN as value 0 with is_nan set.
    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri)
    frames = []
    with engine.connect() as connection:
        for start in range(0, len(run_ids), 500):  # SQLite caps bound parameters
            chunk = run_ids[start:start + 500]
            query = sqlalchemy.text(
                "SELECT run_uuid, key, step, value, is_nan FROM metrics "
                "WHERE run_uuid IN :ids").bindparams(sqlalchemy.bindparam("ids", expanding=True))
            frames.append(pd.read_sql(query, connection, params={"ids": chunk}))
    engine.dispose()
    raw = pd.concat(frames) if frames else pd.DataFrame(
        columns=["run_uuid", "key", "step", "value", "is_nan"])
    raw["value"] = np.where(raw["is_nan"].astype(bool), np.nan, raw["value"].astype(float))
    raw = raw.rename(columns={"run_uuid": "run_id", "key": "metric"})
    return raw[["run_id", "metric", "step", "value"]].astype({"step": int})


def _client_histories(client, run_ids: list[str]) -> pd.DataFrame:
    rows = []
    for run_id in run_ids:
        for name in client.get_run(run_id).data.metrics:
            rows += [(run_id, name, m.step, m.value)
                     for m in client.get_metric_history(run_id, name)]
    return pd.DataFrame(rows, columns=["run_id", "metric", "step", "value"])


def neuron_table(study: Study, epochs: tuple[int, ...] = (0, 150, 300)) -> pd.DataFrame:
    """The single neuron's output at the given epochs, one row per (start, loss)."""
    output = study.metric("output")
    table = output[output["step"].isin(epochs)].pivot_table(
        index=["severity", "loss"], columns="step", values="value")
    table.columns = [f"output at epoch {e}" for e in table.columns]
    table.index = table.index.set_names(["start (initial output)", "loss"])
    return table.round(3)
