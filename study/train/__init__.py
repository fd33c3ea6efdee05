"""Training: the reference trainer (one Keras fit per arm) and what every trainer shares."""

from study.train.common import ArmResult, Schedule, batch_order

__all__ = ["ArmResult", "Schedule", "batch_order"]
