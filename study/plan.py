"""Before a study trains: does it fit the data and the memory budget, and what will it cost?

Everything here runs before any MLflow run exists, so a study that cannot run stops with
one line and exit 2 and leaves nothing behind, and a big one says its size first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.config import StudyConfig
from study.data import Splits
from study.errors import ConfigError
from study.grid import Arm, by_group
from study.train.common import Schedule, steps_per_epoch

# MLflow's SQLite store: about 10 ms of the writer thread per 160 values of an arm (its Core
# path, study.tracking.sql_writes; 30 ms through MLflow's ORM) and 290 bytes a logged value,
# plus 5 kB a run. The writer overlaps training, but on two cores it takes CPU from it: about
# half of its time shows in the wall time (docs/trainers.md).
SECONDS_PER_ARM_WRITE = 0.01
WRITE_SHARE = 0.5
BYTES_PER_VALUE, BYTES_PER_RUN = 290, 5000
# An arm evaluates val_accuracy after every step while a level is still to be crossed: how
# long that lasts is what the study measures, from none of its budget to all of it, so no one
# share fits every study (at a single 0.5 the default study came out x1.6 and cnn x0.7).
# Calibrated per model and dataset instead, from the share of arm-steps measured on this
# project's studies: an MLP on digits 0.25 (default) and 0.35 (optimizers); the CNN on digits
# 0.83 (57% of its arms never reach 0.9 in 10 epochs). Any other model or data: half.
PENDING_SHARES = {("mlp", "digits"): 0.3, ("cnn", "digits"): 0.83}
PENDING_SHARE = 0.5
# Without a probe (``make show``, the reference trainer): the batched trainer's costs of the
# default model (64-30-10 MLP, batch 10, 359 validation examples) per slot, measured here,
# scaled by the work of a step and of an evaluation for other models and data.
REFERENCE_STEP_S = 1.2e-5  # per slot-step, whole
REFERENCE_CROSS_S = 8e-5  # per slot, one val_accuracy over 359 examples
REFERENCE_TRACE_S = 2.5  # per group
REFERENCE_WORK = 2260 * 10  # parameters x batch of the default model
REFERENCE_EVAL = 2260 * 359  # parameters x validation examples
REFERENCE_SECONDS_PER_ARM_STEP = 1.6e-3  # the reference trainer: one Keras fit per arm
# Above either, `study run` asks before it starts (or, with no terminal, wants --yes).
ASK_ABOVE_MINUTES = 30
ASK_ABOVE_GB = 5


@dataclass(frozen=True)
class Preflight:
    """What a study's checks and its training need, built once before anything is written:
    its data, its arms, its config digest, and its model's name, parameters and units (the
    model is built once for all of them)."""

    config: StudyConfig
    splits: Splits
    arms: tuple[Arm, ...]
    digest: str
    model: str  # the child runs' ``model`` param
    params: int
    units: int  # activations per example


@dataclass(frozen=True)
class Estimate:
    arms: int
    steps: int  # per arm
    values: int  # logged per arm
    seconds: float
    store_bytes: int

    def describe(self) -> str:
        return (f"{self.arms:,} arms x {self.steps:,} steps, about {_duration(self.seconds)} "
                f"and {self.store_bytes / 1e6:,.0f} MB of MLflow store")

    @property
    def needs_confirmation(self) -> bool:
        return self.seconds > ASK_ABOVE_MINUTES * 60 or self.store_bytes > ASK_ABOVE_GB * 1e9


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_fits_data(config: StudyConfig, splits: Splits) -> None:
    n_train = len(splits.x_train)
    if config.batch_size > n_train:
        raise ConfigError(f"batch_size: {config.batch_size} is more than the {n_train:,} "
                          f"training examples of {config.dataset}; use at most {n_train}")


def check_memory(config: StudyConfig, splits: Splits) -> None:
    """The batched trainer's smallest chunk (one set of slots) must fit the budget."""
    if config.trainer != "batched":
        return
    from study.train import batched

    budget = config.memory_budget_mb * 2**20
    fixed = batched.evaluation_bytes(config, splits)
    need = fixed + batched.SLOT_MULTIPLE * batched.bytes_per_arm(config, splits)
    if need > budget:
        per_epoch = batched.SLOT_MULTIPLE * 4 * config.batch_size * steps_per_epoch(
            len(splits.x_train), config.batch_size)
        spare = budget - fixed - (need - fixed - per_epoch * config.epochs)
        fits = max(0, int(spare // per_epoch))
        raise ConfigError(f"memory_budget_mb: the smallest chunk of this study needs about "
                          f"{need / 2**20:,.0f} MB, more than the {config.memory_budget_mb:,} "
                          f"MB budget; at most {fits:,} epochs fit it (or raise "
                          "memory_budget_mb)")


def estimate(config: StudyConfig, flight: Preflight, arms: list[Arm],
             costs=None) -> Estimate:
    """Time and store size of training ``arms``: from ``costs`` measured on the study's own
    first group (``batched.probe``) when given, else from this machine's calibration."""
    splits = flight.splits
    schedule = Schedule(steps_per_epoch(len(splits.x_train), config.batch_size),
                        config.epochs)
    values = len(schedule.steps) * 6 + len(schedule.accuracy_steps)
    writes = len(arms) * SECONDS_PER_ARM_WRITE * math.ceil(values / 160)
    if config.trainer == "batched":
        costs = costs or calibrated(config, flight)
        seconds = _batched_seconds(config, splits, arms, schedule, costs)
    else:
        work = max(1.0, flight.params * config.batch_size / REFERENCE_WORK)
        seconds = len(arms) * schedule.total_steps * REFERENCE_SECONDS_PER_ARM_STEP * work
    return Estimate(len(arms), schedule.total_steps, values, seconds + WRITE_SHARE * writes,
                    len(arms) * (values * BYTES_PER_VALUE + BYTES_PER_RUN))


def _batched_seconds(config, splits, arms, schedule, costs) -> float:
    """Each group's tracing (but the probe's, already paid), then per chunk: its training
    steps (every slot), its in-loop val_accuracy (after every step while an arm has a level
    to cross) and the full evaluations of its arms."""
    from study.train import batched

    groups = {key: len(members) for key, members in by_group(arms).items()}
    steps, full = schedule.total_steps, len(schedule.steps)
    share = pending_share(config)
    seconds = 0.0
    for n in groups.values():
        size = batched.chunk_size(config, splits, n)
        for first in range(0, n, size):
            arms_in, slots = min(size, n - first), batched.slots_for(size)
            seconds += (steps * costs.step_s * slots / costs.slots
                        + costs.cross_s * arms_in * steps * share
                        + costs.full_s * arms_in * full)
    return seconds + costs.trace_s * max(0, len(groups) - costs.traced)


def pending_share(config: StudyConfig) -> float:
    """The share of arm-steps assumed to evaluate the crossings (``PENDING_SHARES``)."""
    kind = "builder" if config.model.builder else config.model.kind
    return PENDING_SHARES.get((kind, config.dataset), PENDING_SHARE)


def calibrated(config: StudyConfig, flight: Preflight):
    """The batched trainer's costs without a probe: the default model's, measured on this
    project's machine, scaled by the work of a step and of an evaluation."""
    from study.train.batched import Costs
    from study.train.common import train_eval_rows

    splits = flight.splits
    step = max(1.0, flight.params * config.batch_size / REFERENCE_WORK)
    val = max(1.0, flight.params * len(splits.x_val) / REFERENCE_EVAL)
    n_eval = len(train_eval_rows(len(splits.x_train)))
    full = val * (1 + 3 * n_eval / len(splits.x_val))  # a val pass, a train forward+backward
    return Costs(16, REFERENCE_TRACE_S, 16 * REFERENCE_STEP_S * step,
                 REFERENCE_CROSS_S * val, REFERENCE_CROSS_S * full)
