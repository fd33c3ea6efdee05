"""The connection to the store: the MLflow client (made on first use), every call retried
through one outage clock (``patiently``), and the housekeeping a study does before it trains:
its experiment, the sweep of what a dead process left, the arms already stored."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlparse

from study.claims import owner_is_gone, schema_lock
from study.errors import ConfigError, StoreFull, StoreUnreachable, quote
from study.tracking import server_claim, sql_writes
from study.tracking.artifacts import artifact_location, relocate_artifacts
from study.tracking.empty_store import start_from_template
from study.tracking.faults import out_of_room, reason, unreachable
from study.tracking.retries import STORE_TIMEOUT_S, Outage, requests_once
from study.tracking.store import absolute_uri, check_store, default_tracking_uri, sqlite_path

T = TypeVar("T")


class StoreConnection:
    """A study's store, checked before anything is written (``check_store``), its MLflow
    client made on first use."""

    def __init__(self, tracking_uri: str | None = None,
                 store_timeout: float = STORE_TIMEOUT_S):
        uri = tracking_uri or default_tracking_uri()
        check_store(uri)  # as given: made absolute, 'sqlite:///' would name the folder
        self.uri = absolute_uri(uri)
        # Only a server can go away and come back; a local store's errors are reported at once.
        self.patient = urlparse(self.uri).scheme in ("http", "https")
        self.store_timeout = store_timeout
        self.outage = Outage(store_timeout)
        # MLflow prints a "View run ... at" line per run to stdout for a server store: 2 per
        # arm; the study prints its own link once.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"

    @property
    def impatient(self) -> bool:
        """Set when the study stops for another reason (Ctrl-C): an outage is not waited out."""
        return self.outage.stopped

    @impatient.setter
    def impatient(self, value: bool) -> None:
        self.outage.stopped = value

    def requests_once(self):
        """While a study runs, MLflow makes each HTTP request once, with a short timeout:
        ``patiently`` does the retrying, within the store timeout."""
        return requests_once()

    def patiently(self, attempt: Callable[[], T],
                  waiting: Callable[[float, float], None] = lambda waited, budget: None) -> T:
        """``attempt()``, tried again with backoff while a tracking server does not answer,
        until the outage has lasted ``store_timeout`` seconds: then StoreUnreachable. A store
        with no room left raises StoreFull at once. ``waiting`` hears every second how long
        the outage has lasted, and the budget."""
        def once() -> T:
            try:
                return attempt()
            except Exception as err:
                if out_of_room(err, sqlite_path(self.uri)):
                    raise self.full(err) from None
                raise

        def retryable(err: Exception) -> bool:
            return not isinstance(err, StoreFull) and self.patient and unreachable(err)

        def give_up(err: Exception) -> StoreUnreachable:
            why = reason(err, os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?"))
            return StoreUnreachable(self.uri, self.store_timeout, why)

        return self.outage.call(once, retryable, give_up, waiting)

    def full(self, err: BaseException) -> StoreFull:
        """The store has no room: the error the CLI turns into one line and exit 1."""
        while err.__cause__ is not None:  # sqlite3's own words, not SQLAlchemy's wrapping
            err = err.__cause__
        why = (os.strerror(err.errno) if isinstance(err, OSError) and err.errno
               else reason(err))
        return StoreFull(self.uri, why)

    def _experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            _not_in_trash(experiment)
            return experiment.experiment_id
        return self.client.create_experiment(name, artifact_location(self.uri, name))

    def _write_ahead_log(self) -> None:
        # SQLite's write-ahead log makes each commit cheaper (about 20% per arm here) and
        # lets `make ui` read while a study writes. The mode is stored in the file, once.
        if sqlite_path(self.uri) is not None:
            import sqlite3

            with contextlib.closing(sqlite3.connect(sqlite_path(self.uri))) as db:
                db.execute("PRAGMA journal_mode=WAL")

    @functools.cached_property
    def client(self):
        # Made on first use: a SQLite store's file and tables are created with the client,
        # and a study that fails its checks must leave no file behind.
        import logging

        from mlflow.tracking import MlflowClient

        # "Creating initial MLflow database tables..." is MLflow's news, not the user's; and
        # it logs a traceback for each database error (a full disk: one per try) before
        # raising it, which the study reports in one line or raises itself.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        db = sqlite_path(self.uri)
        with schema_lock(db):  # a new store's tables, one process at once
            if db is not None:
                start_from_template(db)
            try:
                client = MlflowClient(tracking_uri=self.uri)
                client.search_experiments(max_results=1)
            except Exception as err:
                if out_of_room(err, db):
                    raise self.full(err) from None
                raise
        relocate_artifacts(self.uri)
        return client

    @functools.cached_property
    def sqlite_store(self):
        """MLflow's store behind the client when it is a SQLite file, tuned to commit
        without waiting for the disk (``sql_writes``); None for any other store."""
        store = sql_writes.sqlite_store(self.client)
        if store is not None:
            sql_writes.tune(store)
        return store

    def claim(self, study: str) -> contextlib.AbstractContextManager[None]:
        """Hold ``study`` on a store without a lock file (a tracking server, a database) for
        the ``with`` block (``server_claim``)."""
        return server_claim.hold(self, study)

    def sweep(self, experiment: str, locked: bool) -> int:
        """Runs of this study left RUNNING by a process that is gone: parents end KILLED,
        half-written children are deleted. With the study held by this process (its lock
        on a SQLite store, its claim on a server), every RUNNING run of the study is such a
        run; without, those whose owner ran on this machine and has ended. Returns how many
        runs it cleaned up."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return 0
        running = self.client.search_runs([found.experiment_id],
                                          "attributes.status = 'RUNNING'", max_results=50000)
        parents = {r.info.run_id: r for r in running if r.data.tags.get("study.role")
                   == "parent"}
        dead = {run_id for run_id, run in parents.items()
                if locked or owner_is_gone(run.data.tags)}
        for run_id in dead:
            self.client.set_terminated(run_id, "KILLED")
        halves = [r for r in running if "study.arm" in r.data.tags
                  and (r.data.tags.get("mlflow.parentRunId") not in parents
                       or r.data.tags.get("mlflow.parentRunId") in dead)]
        for run in halves:
            self.client.delete_run(run.info.run_id)
        return len(dead) + len(halves)

    def supersede(self, experiment: str, config_hash: str) -> int:
        """``--force``: this study's arms stored under this config go to MLflow's trash
        (deleted, restorable with ``mlflow runs restore``), so the retrained runs replace them
        instead of sitting beside them, and an interrupted ``--force`` rerun resumes from the
        arms it retrained. Returns how many runs it moved."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return 0
        old = self.client.search_runs(
            [found.experiment_id], f"tags.`study.config_hash` = '{config_hash}'",
            max_results=50000)
        children = [run for run in old if "study.arm" in run.data.tags]
        for run in children:
            self.client.delete_run(run.info.run_id)
        return len(children)

    def check_active(self, experiment: str) -> None:
        """Refuse a study whose experiment is in MLflow's trash: MLflow takes no run into
        it, and a new experiment of that name cannot be made until it is gone."""
        found = self.patiently(lambda: self.client.get_experiment_by_name(experiment))
        if found is not None:
            _not_in_trash(found)

    def experiment_of(self, name: str) -> str:
        return self.client.get_experiment_by_name(name).experiment_id

    def store_exists(self) -> bool:
        path = sqlite_path(self.uri)
        return path is None or path.exists()

    def finished_arms(self, experiment: str, config_hash: str) -> set[str]:
        """Keys of the arms already FINISHED in this experiment under this config hash."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return set()
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`study.config_hash` = '{config_hash}' "
                          "and attributes.status = 'FINISHED'",
            max_results=50000)
        return {run.data.tags["study.arm"] for run in runs if "study.arm" in run.data.tags}


def _not_in_trash(experiment) -> None:
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"experiment {quote(experiment.name)} (id {experiment.experiment_id}) is in "
            "MLflow's trash: restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}), or pick another name (--set name=...), or empty "
            "the trash for good (mlflow gc)")

