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
from study.train.common import Schedule, steps_per_epoch

# Measured on the 2-core machine (make bench): the batched trainer's whole-run cost per
# arm-step of the 64-30-10 MLP at batch 10, scaled by the work of a step for other models;
# MLflow's SQLite store: about 30 ms and 290 bytes a logged value, plus 5 kB a run.
SECONDS_PER_ARM_STEP = 1.2e-5
REFERENCE_WORK = 2260 * 10  # parameters x batch of the default model
SECONDS_PER_ARM_WRITE = 0.03
BYTES_PER_VALUE, BYTES_PER_RUN = 290, 5000
# Above either, `study run` asks before it starts (or, with no terminal, wants --yes).
ASK_ABOVE_MINUTES = 30
ASK_ABOVE_GB = 5


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


def estimate(config: StudyConfig, splits: Splits, n_arms: int, params: int) -> Estimate:
    schedule = Schedule(steps_per_epoch(len(splits.x_train), config.batch_size),
                        config.epochs)
    values = len(schedule.steps) * 6 + len(schedule.accuracy_steps)
    work = max(1.0, params * config.batch_size / REFERENCE_WORK)
    seconds = n_arms * (schedule.total_steps * SECONDS_PER_ARM_STEP * work
                        + SECONDS_PER_ARM_WRITE * math.ceil(values / 160))
    return Estimate(n_arms, schedule.total_steps, values, seconds,
                    n_arms * (values * BYTES_PER_VALUE + BYTES_PER_RUN))
