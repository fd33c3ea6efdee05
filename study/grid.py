"""The grid of arms: every (loss, init, severity, seed, lr) combination a study trains."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from study.config import StudyConfig
from study.inits import INITS


@dataclass(frozen=True, order=True)
class Arm:
    init: str
    severity: float
    seed: int
    lr: float
    loss: str

    @property
    def key(self) -> str:
        """Stable name of the arm, stored as the tag ``study.arm`` and used as the run name."""
        return f"{self.loss}|{self.init}:{self.severity:g}|seed={self.seed}|lr={self.lr:g}"

    @property
    def start(self) -> tuple[str, float, int]:
        """Arms with the same start share bit-identical initial weights."""
        return (self.init, self.severity, self.seed)


def expand_grid(config: StudyConfig) -> list[Arm]:
    """All arms, ordered so that arms sharing a start are adjacent (loss varies fastest)."""
    return [
        Arm(init, severity, seed, lr, loss)
        for init, severities in config.inits.items()
        for severity, seed, lr, loss in itertools.product(
            INITS[init].severities(severities), config.seeds, config.optimizer.lr, config.losses)
    ]
