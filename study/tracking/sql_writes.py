"""A child run written cheaply to a SQLite store: created, then its metrics and FINISHED.

MLflow's SQL store turns every logged value into an ORM object, flushes them one by one and
reads the run's latest values back, in a transaction per call: about three quarters of a
study's writing time (docs/trainers.md). For MLflow's own SQL store on a SQLite file, and
only there, ``create_run`` writes the run and its tags, and ``finish_run`` inserts the
metric rows with one SQLAlchemy Core statement per table, computes the ``latest_metrics``
rows as MLflow does, and marks the run FINISHED, all in one transaction. The params, which
may hold the user's own strings, still go through ``log_batch`` and its checks. Any other
store (a tracking server, another database, a store class a later MLflow brings) takes
MLflow's API. tests/test_writes.py checks the rows against MLflow's own, table by table.
"""

from __future__ import annotations

import sqlite3

# The columns this module writes: MLflow's tables as the rows are checked against
# (tests/test_writes.py). Tables of another MLflow take MLflow's API.
COLUMNS = {"runs": {"run_uuid", "name", "source_type", "source_name", "entry_point_name",
                    "user_id", "status", "start_time", "end_time", "deleted_time",
                    "source_version", "lifecycle_stage", "artifact_uri", "experiment_id"},
           "tags": {"key", "value", "run_uuid"},
           "metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"},
           "latest_metrics": {"key", "value", "timestamp", "step", "is_nan", "run_uuid"}}


def sqlite_store(client):
    """The client's store if it is exactly MLflow's SQL store on a SQLite file, with the
    tables and helpers this module was written against, else None."""
    try:
        from mlflow.store.tracking.dbmodels.models import (
            SqlLatestMetric,
            SqlMetric,
            SqlRun,
            SqlTag,
        )
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.tracking.fluent import get_active_model_id
        from mlflow.utils.validation import _validate_metric  # noqa: F401

        store = client._tracking_client.store
    except (ImportError, AttributeError):
        return None
    if type(store) is not SqlAlchemyStore or store.db_type != "sqlite":
        return None
    tables = {model.__tablename__: set(model.__table__.c.keys())
              for model in (SqlRun, SqlTag, SqlMetric, SqlLatestMetric)}
    if tables != COLUMNS:
        return None
    if get_active_model_id() is not None:  # then MLflow logs metrics to that model too
        return None
    return store


def tune(store) -> None:
    """Commit without waiting for the disk: each connection of the store's engine runs
    ``synchronous=NORMAL``. In write-ahead-log mode (the study's stores) a commit then
    survives a crash or kill -9 of the process, only not a power cut, and the file is never
    corrupt; readers (``mlflow ui``) are unaffected."""
    from sqlalchemy import event

    if not event.contains(store.engine, "checkout", _commit_without_sync):
        event.listen(store.engine, "checkout", _commit_without_sync)


def _commit_without_sync(dbapi_connection, record, proxy) -> None:
    # On checkout, not connect: the engine is MLflow's, cached per URI, and may hold
    # connections made before this listener.
    if isinstance(dbapi_connection, sqlite3.Connection) and not record.info.get("tuned"):
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")
        record.info["tuned"] = True


def create_run(store, experiment_id: str, run_name: str, tags: dict[str, str],
               start_time: int | None) -> str:
    """A new RUNNING run with ``tags`` and its name, the rows ``MlflowClient.create_run``
    writes, in one transaction; raises, writing nothing, if the experiment is not active.
    Returns the run's id."""
    import uuid

    from mlflow.entities import LifecycleStage, RunStatus, SourceType
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun, SqlTag
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.uri import append_to_uri_path
    from sqlalchemy import insert, select

    experiments = SqlExperiment.__table__
    run_id = uuid.uuid4().hex
    with store.engine.begin() as connection:
        found = connection.execute(
            select(experiments.c.artifact_location, experiments.c.lifecycle_stage)
            .where(experiments.c.experiment_id == int(experiment_id))).first()
        if found is None or found.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(f"The experiment {experiment_id} must be in the 'active' "
                                  "state.", INVALID_PARAMETER_VALUE)
        connection.execute(insert(SqlRun.__table__), [{
            "run_uuid": run_id, "name": run_name, "experiment_id": int(experiment_id),
            "artifact_uri": append_to_uri_path(found.artifact_location, run_id, "artifacts"),
            "source_type": SourceType.to_string(SourceType.UNKNOWN), "source_name": "",
            "entry_point_name": "", "user_id": tags.get(MLFLOW_USER, "unknown"),
            "status": RunStatus.to_string(RunStatus.RUNNING),
            "start_time": start_time or get_current_time_millis(), "end_time": None,
            "deleted_time": None, "source_version": "",
            "lifecycle_stage": LifecycleStage.ACTIVE}])
        connection.execute(insert(SqlTag.__table__), [
            {"run_uuid": run_id, "key": key, "value": value}
            for key, value in {**tags, MLFLOW_RUN_NAME: run_name}.items()])
    return run_id


def metric_rows(store, run_id: str, metrics) -> list[dict]:
    """The ``metrics`` table's rows for ``metrics`` (MLflow ``Metric``s), as ``log_batch``
    writes them: validated, NaN stored as 0 with is_nan, infinities as the largest float,
    each (key, timestamp, step, value, is_nan) once, in the order given."""
    from mlflow.utils.validation import _validate_metric

    rows, seen = [], set()
    for metric in metrics:
        value = float(metric.value)
        _validate_metric(metric.key, value, metric.timestamp, metric.step)
        is_nan, value = store.sanitize_metric_value(value)
        row = (metric.key, metric.timestamp, metric.step, value, is_nan)
        if row not in seen:
            seen.add(row)
            rows.append({"run_uuid": run_id, "key": metric.key, "value": value,
                         "timestamp": metric.timestamp, "step": metric.step,
                         "is_nan": is_nan})
    return rows


def latest_rows(rows: list[dict]) -> list[dict]:
    """The ``latest_metrics`` rows of a new run: per key, the row MLflow keeps, the first
    with the greatest (step, timestamp, value)."""
    latest: dict[str, dict] = {}
    for row in rows:
        kept = latest.get(row["key"])
        if kept is None or (row["step"], row["timestamp"], row["value"]) > \
                (kept["step"], kept["timestamp"], kept["value"]):
            latest[row["key"]] = row
    return list(latest.values())


def finish_run(store, run_id: str, metrics, end_time: int | None) -> None:
    """``metrics`` logged to the RUNNING run ``run_id`` and the run FINISHED at ``end_time``
    (now if None), in one transaction; raises, writing nothing, if the run is not active."""
    from mlflow.entities import LifecycleStage, RunStatus
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun
    from mlflow.utils.time import get_current_time_millis
    from sqlalchemy import insert, update

    rows = metric_rows(store, run_id, metrics)
    runs = SqlRun.__table__
    with store.engine.begin() as connection:
        if rows:
            connection.execute(insert(SqlMetric.__table__), rows)
            connection.execute(insert(SqlLatestMetric.__table__), latest_rows(rows))
        finished = connection.execute(
            update(runs).where(runs.c.run_uuid == run_id,
                               runs.c.lifecycle_stage == LifecycleStage.ACTIVE)
            .values(status=RunStatus.to_string(RunStatus.FINISHED),
                    end_time=end_time or get_current_time_millis()))
        if finished.rowcount != 1:  # rolled back: no metric of it stays either
            raise MlflowException(f"The run {run_id} must be in the 'active' state.",
                                  INVALID_PARAMETER_VALUE)
