"""Run a study: config -> grid of arms -> data -> trainer -> tracking. ``run_study`` is pure
orchestration: it owns no maths and writes to MLflow only through ``StudyTracker``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from study.claims import study_lock
from study.config import StudyConfig, config_hash
from study.data import load_study_data, make_available
from study.errors import StoreFull, StoreUnreachable
from study.executors import LocalExecutor, executor_for
from study.grid import Arm, expand_grid
from study.inits import INITS, Starts
from study.models import build_model, describe
from study.optimizers import OPTIMIZERS
from study.plan import ASK_ABOVE_GB, Estimate, Preflight, check_fits_data, check_memory, estimate
from study.tracking import STORE_TIMEOUT_S, ArmWriter, StudyTracker, arm_params, sqlite_path
from study.train.common import ArmResult


@dataclass
class StudyResult:
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_ids: dict[str, str] = field(default_factory=dict)  # arm key -> child run id
    results: dict[str, ArmResult] = field(default_factory=dict)  # arm key -> history
    skipped: list[str] = field(default_factory=list)  # arm keys already FINISHED in the store
    superseded: int = 0  # earlier runs of these arms moved to the trash by --force
    wall_seconds: float = 0.0  # training and logging, data loading excluded
    logging_seconds: float = 0.0  # of which training waited for MLflow writes
    writer_busy_seconds: float = 0.0  # MLflow writes in all, mostly overlapping training

    @property
    def diverged(self) -> list[str]:
        return [key for key, result in self.results.items() if result.diverged]


def check_model_and_starts(config: StudyConfig, splits) -> str:
    """Build the model and draw every start once, so that a model builder that fails or
    given weights of the wrong shape (or an optimizer this Keras lacks) stop as a
    ConfigError before any MLflow run exists.
    Returns the model's name for the child runs' params and its parameter count.
    The user's own losses are made and probed here too (``study.losses.probe``)."""
    from study.losses import loss_spec, probe

    for custom in config.custom_losses:
        probe(loss_spec(config, custom.name), splits.n_classes)
    outputs = {config.loss_output(loss) for loss in config.losses}
    models = [build_model(config.model, splits.input_shape, splits.n_classes, output,
                          config.trainer)
              for output in sorted(outputs)]
    for optimizer in config.optimizers:
        OPTIMIZERS[optimizer.name].check_available()
    starts = Starts(models[0], config.inits.get("fixed"))
    for init, severities in config.inits.items():  # a draw of each scheme and severity;
        for severity in INITS[init].severities(severities):  # seeds change values only
            starts(init, severity, config.seeds[0])
    return describe(models[0], config.model), models[0].count_params()


def preflight(config: StudyConfig) -> Preflight:
    """Load the data and run every check that needs it, once: the batch fits the data, the
    smallest chunk the memory budget, the model builds and every start draws."""
    from study.train.batched import model_size

    splits = load_study_data(config)
    check_fits_data(config, splits)
    check_memory(config, splits)
    model, params = check_model_and_starts(config, splits)
    _, units = model_size(config.model, splits.input_shape, splits.n_classes,
                          config.loss_output(config.losses[0]), config.trainer)
    return Preflight(config, splits, tuple(expand_grid(config)),
                     config_hash(config, splits.source_sha256), model, params, units)


def measured_estimate(config: StudyConfig, flight: Preflight, arms: list[Arm]) -> Estimate:
    """The estimate from a few real steps of the study's own first group when the batched
    trainer runs in this process (that group stays traced for training), else from the
    calibration."""
    costs = None
    # A store too big to write without asking needs no probe to say so: the size does not
    # depend on it, and a huge study's first group takes seconds to trace.
    huge = estimate(config, flight, arms).store_bytes > ASK_ABOVE_GB * 1e9
    if config.trainer == "batched" and config.executor == "local" and arms and not huge:
        from study.train.batched import probe

        costs = probe(config, flight.splits, arms)
    return estimate(config, flight, arms, costs)


def run_study(config: StudyConfig, tracking_uri: str | None = None, *, progress: bool = True,
              force: bool = False, store_timeout: float = STORE_TIMEOUT_S,
              confirm: Callable[[Estimate], None] = lambda estimate: None,
              say: Callable[[str], None] = lambda line: None,
              executor=None) -> StudyResult:
    """Train every arm of ``config`` and log it to MLflow.

    Arms already FINISHED in the store under the same config hash are skipped (a rerun
    resumes an interrupted study) unless ``force``. ``confirm`` hears the study's size before
    any MLflow run exists, and may stop it by raising. A tracking server that stops
    answering mid-study is retried for ``store_timeout`` seconds, then StoreUnreachable; a
    store with no room left stops the study at once with StoreFull (the parent run FAILED
    if it can still be written).
    ``say`` hears where the arms train; ``executor`` (default: the one the config names,
    ``study.executors``) trains them.
    """
    tracker = StudyTracker(tracking_uri, store_timeout)  # an unusable store fails first
    make_available(config.dataset)  # before any run is created
    flight = preflight(config)
    with tracker.requests_once():
        return _resume(flight, tracker, progress=progress, force=force, confirm=confirm,
                       say=say, executor=executor)


def _resume(flight: Preflight, tracker: StudyTracker, *, progress: bool, force: bool,
            confirm: Callable[[Estimate], None], say: Callable[[str], None],
            executor) -> StudyResult:
    """Train the arms without a FINISHED run in the store (every arm if ``force``)."""
    config, arms, digest = flight.config, list(flight.arms), flight.digest
    # A store that does not exist yet is not created just to learn it holds nothing.
    if tracker.store_exists():
        tracker.check_active(config.name)  # an experiment in the trash takes no run
    done = set() if force or not tracker.store_exists() else tracker.patiently(
        lambda: tracker.finished_arms(config.name, digest))
    planned = measured_estimate(config, flight, [a for a in arms if a.key not in done])
    confirm(planned)  # may stop a big study

    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    db = sqlite_path(tracker.uri)
    # Connected before the store is touched: a cluster that cannot be reached is bad input
    # (one line, exit 2, nothing written); no cluster starts when every arm is stored.
    if executor is None:
        executor = LocalExecutor() if len(done) == len(arms) else executor_for(config, say)
    # One process at a time writes a study into a store: a lock file beside a SQLite store,
    # a claim the server arbitrates otherwise.
    held = study_lock(db, config.name, tracker.uri) if db is not None else \
        tracker.claim(config.name)
    with executor as trains, held:
        # what a dead process left: with the study held, any RUNNING run of it
        tracker.patiently(lambda: tracker.sweep(config.name, locked=True))
        superseded = tracker.patiently(
            lambda: tracker.supersede(config.name, digest)) if force else 0
        done = tracker.patiently(lambda: tracker.finished_arms(config.name, digest))
        todo: list[Arm] = [arm for arm in arms if arm.key not in done]
        if not todo:  # every arm is in the store: nothing to train, no empty parent run
            return StudyResult(tracker.uri,
                               tracker.patiently(lambda: tracker.experiment_of(config.name)),
                               "", skipped=[arm.key for arm in arms])
        try:
            result = _train_and_log(flight, tracker, todo, done, config_yaml, progress, trains)
        except KeyboardInterrupt as err:  # the CLI says how many arms the store kept
            err.arms_kept = tracker.arms_written
            raise
        except (StoreUnreachable, StoreFull) as err:  # the CLI says what is stored and
            err.arms_stored = len(done) + tracker.arms_written
            err.arms_total = len(arms)  # what a rerun trains
            raise
        result.superseded = superseded
        return result


def _train_and_log(flight: Preflight, tracker: StudyTracker, todo: list[Arm], done: set[str],
                   config_yaml: str, progress: bool, executor) -> StudyResult:
    from study.progress import alerting
    from study.progress import progress as progress_of

    config, splits, digest, model = flight.config, flight.splits, flight.digest, flight.model
    arms = list(flight.arms)

    with tracker.study(config, config_yaml, digest, arms, splits.n_classes) as parent_run_id:
        result = StudyResult(tracker.uri, tracker.experiment_id, parent_run_id,
                             skipped=[arm.key for arm in arms if arm.key in done])
        # a bar on a terminal, a line every tenth of the arms in a log (study.progress)
        bar = progress_of(len(todo), config.name, "arm", disable=not progress,
                          bar_format="{l_bar}{bar}| {n:.0f}/{total} arms [{elapsed}<{remaining}"
                                     "{postfix}]")
        started = time.perf_counter()
        # MLflow may still be writing when training ends: the bar says how far it has got
        with bar, ArmWriter(tracker, bar.set_postfix_str, alerting(bar)) as writer:
            def advance(arms: float) -> None:  # fractions of arms add up to a hair over
                bar.update(min(arms, bar.total - bar.n))
                writer.check()  # the store is gone for good: stop training now

            for arm, arm_result in executor.train_arms(todo, config, splits, advance):
                writer.write(arm, arm_result, arm_params(arm, config, model))
                result.results[arm.key] = arm_result
        result.run_ids = writer.run_ids()
        result.wall_seconds = time.perf_counter() - started
        result.logging_seconds = writer.wait_seconds
        result.writer_busy_seconds = writer.busy_seconds
    return result
