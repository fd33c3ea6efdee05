"""The study's runs: one parent run per invocation (the config, its hash, the git commit,
package versions) and one nested child run per arm, written when the arm finishes: its
params, tags and metrics in ``log_batch`` calls, then FINISHED. An arm that did not finish
has no run, so every child run in the store is complete."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from study.claims import this_process
from study.config import StudyConfig
from study.errors import ConfigError, StoreFull, StoreUnreachable
from study.grid import Arm, exact, optimizer_of
from study.tracking import sql_writes
from study.tracking.connection import StoreConnection
from study.tracking.context import context_tags, mlflow_tags, package_versions
from study.tracking.describe import (
    NOTE_HASH_TAG,
    NOTE_TAG,
    experiment_note,
    may_write_note,
    note_hash,
)
from study.tracking.faults import REACH_TIMEOUT_S, environment, out_of_room, unreachable
from study.tracking.retries import STORE_TIMEOUT_S
from study.tracking.store import sqlite_path
from study.train.common import ArmResult


def arm_params(arm: Arm, config: StudyConfig, model: str) -> dict[str, str]:
    optimizer = optimizer_of(config, arm)
    return {"loss": arm.loss, "init": arm.init, "severity": exact(arm.severity),
            "seed": str(arm.seed), "optimizer": arm.optimizer,
            "optimizer_name": optimizer.name, "lr": exact(arm.lr), "dataset": config.dataset,
            "model": model, "batch_size": str(config.batch_size), "epochs": str(config.epochs),
            "trainer": config.trainer,
            **{f"optimizer.{key}": str(value) for key, value in optimizer.options.items()},
            **{f"loss.{key}": value for custom in config.custom_losses  # the user's own loss
               if custom.name == arm.loss for key, value in custom.model_dump().items()
               if key != "name"}}


def parent_params(config: StudyConfig, config_hash: str, arms: list[Arm],
                  n_classes: int) -> dict[str, str]:
    """What the analysis reads back from the parent run: the study's levels, modes and
    sizes."""
    return {"config_hash": config_hash, "n_arms": str(len(arms)), "dataset": config.dataset,
            "trainer": config.trainer, "executor": config.executor,
            "target": f"{config.target:g}", "escape": f"{config.escape:g}",
            "levels": ",".join(f"{v:g}" for v in config.crossing_levels),
            "target_mode": config.target_mode,
            "growth_window": json.dumps(config.growth_window),
            "lr_band": json.dumps(config.lr_band.model_dump() if config.lr_band else None),
            "n_classes": str(n_classes)}


class StudyTracker(StoreConnection):
    """The one writer of a study's runs (``study``, ``write_arm``, ``log_report``)."""

    def __init__(self, tracking_uri: str | None = None,
                 store_timeout: float = STORE_TIMEOUT_S):
        super().__init__(tracking_uri, store_timeout)
        self.abandoned: list[str] = []  # child runs of failed tries not yet deleted
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.arms_written = 0  # child runs written whole by this tracker
        self.config_hash: str | None = None
        self.best_lr: bool | None = None  # the child runs' study.best_lr tag, if known
        self.several_optimizers = False  # then run names say the optimizer
        self.run_context: dict[str, str] = {}  # MLflow's user and source tags

    @contextlib.contextmanager
    def study(self, config: StudyConfig, config_yaml: str, config_hash: str,
              arms: list[Arm], n_classes: int) -> Iterator[str]:
        """The parent run, open while the study trains; FAILED or KILLED if it is cut short."""
        from mlflow.entities import Param, RunTag

        self._open_experiment(config.name)
        self.patiently(lambda: self._describe(config, arms))
        self.config_hash = config_hash
        context = context_tags()
        self.run_context = mlflow_tags(context)  # who and from what, on every child run too
        tags = {"study.role": "parent", "study.config_hash": config_hash, **context,
                **this_process()}
        run = self.patiently(lambda: self.client.create_run(
            self.experiment_id, run_name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags=tags))
        self.parent_run_id = run.info.run_id
        self._publish_views(config, config_hash, arms)
        versions = package_versions()
        params = parent_params(config, config_hash, arms, n_classes)
        self.patiently(lambda: self.client.log_batch(
            self.parent_run_id, params=[Param(key, value) for key, value in params.items()],
            tags=[RunTag(f"version.{name}", v) for name, v in versions.items()]))
        self.patiently(lambda: self.client.log_text(self.parent_run_id, config_yaml,
                                                    "config.yaml"))
        self.patiently(lambda: self.client.log_dict(self.parent_run_id, versions,
                                                    "environment.json"))
        try:
            yield self.parent_run_id
        except BaseException as err:
            # One short try: a server that is gone leaves the parent RUNNING, and the next
            # run's sweep marks it KILLED and deletes its unfinished children.
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception), \
                    environment(MLFLOW_HTTP_REQUEST_TIMEOUT=REACH_TIMEOUT_S):
                self._close_parent(status)
            raise
        self.patiently(lambda: self._close_parent("FINISHED"))

    def _open_experiment(self, name: str) -> None:
        """The study's experiment, made if new, in write-ahead-log mode."""
        try:
            self.experiment_id = self.patiently(lambda: self._experiment(name))
            self._write_ahead_log()
            _ = self.sqlite_store  # commits without waiting for the disk from here on
        except (StoreUnreachable, StoreFull):
            raise
        except Exception as err:  # a read-only file or folder, a server that refuses
            if out_of_room(err, sqlite_path(self.uri)):
                raise self.full(err) from None
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            raise ConfigError(f"MLflow store {self.uri} cannot be written ({reason})") \
                from None

    def _describe(self, config: StudyConfig, arms: list[Arm]) -> None:
        """The experiment's description, unless someone wrote their own in MLflow."""
        tags = self.client.get_experiment(self.experiment_id).tags
        if may_write_note(tags):
            note = experiment_note(config, arms)
            self.client.set_experiment_tag(self.experiment_id, NOTE_TAG, note)
            self.client.set_experiment_tag(self.experiment_id, NOTE_HASH_TAG, note_hash(note))

    def _close_parent(self, status: str) -> None:
        """Delete the children this invocation left unfinished (a try whose delete failed, a
        run created by a request whose answer was lost), then end the parent run."""
        unfinished = self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
                                  "and attributes.status = 'RUNNING'", max_results=50000)
        for run in unfinished:
            self.client.delete_run(run.info.run_id)
        self.abandoned.clear()
        self.client.set_terminated(self.parent_run_id, status)

    def _publish_views(self, config: StudyConfig, config_hash: str, arms: list[Arm]) -> None:
        """The study's saved views in MLflow (one per start) and what the child runs need
        for them: a readable name, the start tag, the best-lr tag when it is known now."""
        from study import browse

        self.several_optimizers = len(config.optimizers) > 1
        # One rate per loss: every arm is at its loss's chosen rate. A grid of rates: the
        # report picks each loss's best and tags the arms then.
        self.best_lr = True if browse.one_rate_per_loss(arms) else None
        browse.publish_views(self.client, self.experiment_id, browse.starts_of(arms),
                             bool(self.best_lr), config_hash)

    def log_report(self, parent_run_id: str, paths: list[Path]) -> None:
        """The rendered report, its summary and figures, under ``report/`` on the parent."""
        for path in paths:
            sub = "report/figures" if path.suffix == ".png" else "report"
            self.client.log_artifact(parent_run_id, str(path), sub)

    def write_arm(self, arm: Arm, result: ArmResult, params: dict[str, str],
                  waiting: Callable[[float, float], None] = lambda waited, budget: None) -> str:
        """A finished arm's child run, complete (``_write_arm_once``), tried again as a whole
        while a tracking server does not answer, within the store timeout. Returns the run
        id."""
        run_id = self.patiently(lambda: self._write_arm_once(arm, result, params), waiting)
        self.arms_written += 1
        return run_id

    def _write_arm_once(self, arm: Arm, result: ArmResult, params: dict[str, str]) -> str:
        """Its tags as the run is created, then params and metrics in as few batched calls as
        MLflow allows, then FINISHED (on a SQLite store, the run, then the metrics and
        FINISHED in one transaction, are written by ``sql_writes``). If a write fails, the
        run is deleted, so no half-written arm stays visible; if the delete fails too (the
        server is gone), the run stays RUNNING, and is deleted by the next try, at the end
        of the study or by the next run's sweep."""
        from mlflow.entities import Metric, Param

        from study.browse import arm_tags, run_name

        while self.abandoned:  # an earlier try's run, maybe FINISHED by an answer that was lost
            self.client.delete_run(self.abandoned[-1])
            self.abandoned.pop()

        tags = {**self.run_context, "mlflow.parentRunId": self.parent_run_id,
                "study.arm": arm.key,
                "study.config_hash": self.config_hash,
                "study.diverged": str(result.diverged).lower(),
                **arm_tags(arm, self.best_lr)}
        if result.diverged:
            tags["study.diverged_at_step"] = str(result.diverged_at)
        title = run_name(arm, self.several_optimizers)
        if self.sqlite_store is not None:  # the same rows, at a fraction of the cost
            run_id = sql_writes.create_run(self.sqlite_store, self.experiment_id, title, tags,
                                           result.started_ms)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=title, tags=tags,
                                            start_time=result.started_ms).info.run_id
        try:
            now = int(time.time() * 1000)
            metrics = [Metric(name, value, result.step_ms.get(step, now), step)
                       for name, points in result.history.items() for step, value in points]
            params = [Param(k, v) for k, v in params.items()]
            if self.sqlite_store is not None:
                self.client.log_batch(run_id, params=params)
                sql_writes.finish_run(self.sqlite_store, run_id, metrics, result.finished_ms)
            else:
                first = 1000 - len(params)  # at most 1000 entities (100 params) a batch
                self.client.log_batch(run_id, metrics=metrics[:first], params=params)
                for start in range(first, len(metrics), 1000):
                    self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
                self.client.set_terminated(run_id, "FINISHED", end_time=result.finished_ms)
        except BaseException as err:
            self.abandoned.append(run_id)
            if not (self.patient and unreachable(err)):  # a server that is gone: next try
                with contextlib.suppress(Exception):
                    self.client.delete_run(run_id)
                    self.abandoned.pop()
            raise
        return run_id

