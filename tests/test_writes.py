"""A child run written by the SQLite fast path (``study.tracking.sql_writes``) is the run
MLflow's own ``log_batch`` and ``set_terminated`` write: the same rows in every table; a
failed write leaves no row of the arm; other stores take MLflow's API."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time

import pytest

from study.grid import expand_grid
from study.tracking import sql_writes
from study.tracking.runs import StudyTracker, arm_params
from study.train.common import ArmResult
from tests.conftest import tracking_uri

# What each table's rows are compared on: all their columns but the run's id (which names
# the artifact folder too).
TABLES = {"metrics": "key, value, timestamp, step, is_nan",
          "latest_metrics": "key, value, timestamp, step, is_nan",
          "params": "key, value", "tags": "key, value",
          "runs": "name, artifact_uri, source_type, source_name, entry_point_name, user_id, "
                  "status, start_time, end_time, deleted_time, source_version, "
                  "lifecycle_stage, experiment_id"}


def _result(finished_ms: int | None = 2_000_000) -> ArmResult:
    """An arm's history with what a real one may hold and more: over 1,000 values (several
    MLflow batches), NaN and infinities (a diverged arm), a value logged twice, two values
    at one step (a crossing's point), the greatest step at two timestamps."""
    result = ArmResult(started_ms=1_000_000, finished_ms=finished_ms)
    for step in range(0, 1300, 5):
        result.step_ms[step] = 1_000_000 + 7 * step
        for name, value in (("train_loss", 1 / (step + 1)), ("val_accuracy", step / 1300),
                            ("val_nll", 0.5), ("grad_norm", math.sin(step))):
            result.history.setdefault(name, []).append((step, value))
    result.history["train_loss"] += [(1300, math.nan), (1305, math.inf), (1305, -math.inf)]
    result.history["val_nll"] += [(5, 0.5), (5, 0.5)]  # the same value again
    result.history["val_accuracy"] += [(1295, 0.25)]  # the last step, a second value
    result.step_ms.update({1300: 3_000_000, 1305: 3_000_000})
    result.diverged_at = 1300
    return result


@pytest.fixture(scope="module")
def tracker(tmp_path_factory, smoke_config):
    """One store for the module's tests (a new store's tables take seconds to make)."""
    tracker = StudyTracker(tracking_uri(tmp_path_factory.mktemp("writes")))
    arms = expand_grid(smoke_config)
    with tracker.study(smoke_config, "name: smoke\n", "hash", arms, 10):
        yield tracker, arms


def _rows(uri: str, run_id: str) -> dict[str, list[tuple]]:
    path = uri.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = {table: sorted(db.execute(f"SELECT {columns} FROM {table} WHERE "
                                         f"run_uuid = ?", (run_id,)).fetchall())
                for table, columns in TABLES.items()}
    (run,) = rows["runs"]
    rows["runs"] = [(run[0], run[1].replace(run_id, "<id>"), *run[2:])]
    return rows


def _write(tracker: StudyTracker, arm, result: ArmResult, fast: bool, smoke_config) -> str:
    if not fast:  # as for any other store: MLflow's log_batch and set_terminated
        tracker.__dict__["sqlite_store"] = None
    try:
        return tracker.write_arm(arm, result, arm_params(arm, smoke_config, "mlp"))
    finally:
        tracker.__dict__.pop("sqlite_store", None)


@pytest.mark.parametrize("finished_ms", [2_000_000, None])
def test_the_fast_path_writes_the_rows_log_batch_writes(tracker, smoke_config, finished_ms):
    tracker, arms = tracker
    assert tracker.sqlite_store is not None
    result = _result(finished_ms)
    by_mlflow = _rows(tracker.uri, _write(tracker, arms[0], result, False, smoke_config))
    by_fast_path = _rows(tracker.uri, _write(tracker, arms[0], result, True, smoke_config))
    assert len(by_mlflow["metrics"]) == 4 * 260 + 3 + 1  # duplicates once
    assert ("train_loss", 0.0, 3_000_000, 1300, 1) in by_mlflow["metrics"]  # NaN: 0, is_nan
    # the first of the greatest (step, timestamp, value): inf, stored as the largest float
    assert ("train_loss", 1.7976931348623157e308, 3_000_000, 1305, 0) in \
        by_mlflow["latest_metrics"]
    if finished_ms is None:  # both "now": equal up to the time between the two writes
        now = time.time() * 1000
        for rows in (by_mlflow["runs"], by_fast_path["runs"]):
            assert now - 60_000 < rows[0][8] <= now
            rows[0] = (*rows[0][:8], None, *rows[0][9:])
    for table in TABLES:
        assert by_fast_path[table] == by_mlflow[table], table
    assert by_fast_path["runs"][0][6] == "FINISHED"
    assert by_fast_path["runs"][0][1].endswith("/<id>/artifacts")


def test_a_failed_transaction_leaves_no_row_and_the_run_is_deleted(tracker, smoke_config,
                                                                   monkeypatch):
    """The latest values' insert fails after the metrics' insert, in the same transaction:
    no metric row stays, and the arm's run is deleted, as when MLflow's write fails."""
    tracker, arms = tracker
    monkeypatch.setattr(sql_writes, "latest_rows", lambda rows: rows[:1] * 2)
    with pytest.raises(Exception, match="UNIQUE constraint failed: latest_metrics"):
        _write(tracker, arms[0], _result(), True, smoke_config)
    path = tracker.uri.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path)) as db:
        deleted = db.execute("SELECT r.run_uuid, r.status FROM runs r JOIN tags t USING "
                             "(run_uuid) WHERE r.lifecycle_stage = 'deleted' "
                             "AND t.key = 'study.arm'").fetchall()
        assert len(deleted) == 1 and deleted[0][1] == "RUNNING"
        assert db.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ?",
                          (deleted[0][0],)).fetchone() == (0,)
    assert not tracker.abandoned


def test_a_run_not_active_takes_no_metric(tracker):
    tracker, arms = tracker
    from mlflow.entities import Metric

    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.client.delete_run(run_id)
    with pytest.raises(Exception, match="must be in the 'active' state"):
        sql_writes.finish_run(tracker.sqlite_store, run_id, [Metric("m", 1.0, 1, 0)], None)
    assert _rows(tracker.uri, run_id)["metrics"] == []
    assert tracker.client.get_run(run_id).info.status == "RUNNING"


def test_the_store_commits_without_waiting_for_the_disk(tracker):
    tracker, _ = tracker
    with tracker.sqlite_store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_other_stores_take_mlflows_api():
    from mlflow.tracking import MlflowClient

    assert sql_writes.sqlite_store(MlflowClient("http://127.0.0.1:9")) is None


def test_an_experiment_not_active_takes_no_run(tracker):
    tracker, _ = tracker
    experiment_id = tracker.client.create_experiment("gone")
    tracker.client.delete_experiment(experiment_id)
    with pytest.raises(Exception, match="must be in the 'active' state"):
        sql_writes.create_run(tracker.sqlite_store, experiment_id, "arm", {"k": "v"}, None)
    assert tracker.client.search_runs([experiment_id], run_view_type=3) == []


def test_tables_of_another_mlflow_take_mlflows_api(tracker, monkeypatch):
    tracker, _ = tracker
    assert sql_writes.sqlite_store(tracker.client) is tracker.sqlite_store
    monkeypatch.setitem(sql_writes.COLUMNS, "metrics", sql_writes.COLUMNS["metrics"] - {"step"})
    assert sql_writes.sqlite_store(tracker.client) is None
