"""Training: the batched trainer (the default) and the reference trainer (one Keras fit per
arm, the ground truth), and what they share."""

from study.train.common import ArmResult, Schedule, batch_order


def trainer(config):
    """The trainer module the config asks for; each has ``train_arms``."""
    if config.trainer == "batched":
        from study.train import batched

        return batched
    from study.train import reference

    return reference


__all__ = ["ArmResult", "Schedule", "batch_order", "trainer"]
