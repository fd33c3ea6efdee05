"""The grid of arms: every (loss, init, severity, seed, optimizer, lr) combination a study
trains, and the groups the batched trainer vectorizes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from study.config import OptimizerConfig, StudyConfig
from study.inits import INITS


@dataclass(frozen=True, order=True)
class Arm:
    init: str
    severity: float
    seed: int
    optimizer: str  # the optimizer's key in the config: sgd, adam, sgd(momentum=0.9), ...
    lr: float
    loss: str

    @property
    def key(self) -> str:
        """Stable name of the arm, stored as the tag ``study.arm`` and used as the run name."""
        return (f"{self.loss}|{self.init}:{exact(self.severity)}|seed={self.seed}|"
                f"{self.optimizer}|lr={exact(self.lr)}")

    @property
    def start(self) -> tuple[str, float, int]:
        """Arms with the same start share bit-identical initial weights."""
        return (self.init, self.severity, self.seed)

    @property
    def group(self) -> tuple[str, str]:
        """Arms of one group share a model (its output activation), loss and optimizer, so
        they train as one vectorized computation; they differ in start, seed and lr."""
        return (self.loss, self.optimizer)


def by_group(arms: list[Arm]) -> dict[tuple[str, str], list[Arm]]:
    """The arms of each group, groups and arms in the order given."""
    groups: dict[tuple[str, str], list[Arm]] = {}
    for arm in arms:
        groups.setdefault(arm.group, []).append(arm)
    return groups


def exact(x: float) -> str:
    """The shortest text that reads back as the same float ('0.5', '2', '0.5000001', '1e-05'):
    two rates or severities that differ get different arm keys and params."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def optimizer_of(config: StudyConfig, arm: Arm) -> OptimizerConfig:
    return next(o for o in config.optimizers if o.key == arm.optimizer)


def expand_grid(config: StudyConfig) -> list[Arm]:
    """All arms, ordered so that arms sharing a start are adjacent (loss varies fastest):
    every configured rate from every start, and with ``lr_band`` each rate / factor and
    x factor from the band's starts."""
    band = band_starts(config)
    factor = config.lr_band.factor if config.lr_band is not None else None
    # an optimizer's (lr, loss) pairs depend on whether the start is in the band alone:
    # worked out once each, not once per start and seed (a study may have 20,000 seeds)
    pairs = {in_band: [(optimizer.key, _rates_and_losses(optimizer, config.losses,
                                                         factor if in_band else None))
                       for optimizer in config.optimizers]
             for in_band in (False, True)}
    return [
        Arm(init, severity, seed, key, lr, loss)
        for init, severities in config.inits.items()
        for severity, seed in itertools.product(INITS[init].severities(severities),
                                                config.seeds)
        for key, rates in pairs[(init, severity) in band]
        for lr, loss in rates
    ]


def band_starts(config: StudyConfig) -> set[tuple[str, float]]:
    """The starts that run each loss's rate neighbourhood: every start, or (``worst``) the
    controls (the control scheme and each family's own control) and each family's worst
    (highest) severity; a scheme without severities is its own worst start."""
    if config.lr_band is None:
        return set()
    starts = set()
    for init, severities in config.inits.items():
        scheme, runs = INITS[init], INITS[init].severities(severities)
        if config.lr_band.starts == "all":
            starts |= {(init, s) for s in runs}
        else:
            starts |= {(init, s) for s in runs if s == scheme.reference} | {(init, max(runs))}
    return starts


def _rates_and_losses(optimizer: OptimizerConfig, losses: tuple[str, ...],
                      factor: float | None = None):
    """(lr, loss) pairs, loss varying fastest: every rate with every loss, or each loss at
    its own rates; with a band ``factor``, each rate / factor and x factor too."""
    def rates(loss: str) -> set[float]:
        own = set(optimizer.rates(loss))
        return own | {r / factor for r in own} | {r * factor for r in own} if factor else own

    every = sorted({lr for loss in losses for lr in rates(loss)})
    return [(lr, loss) for lr in every for loss in losses if lr in rates(loss)]
