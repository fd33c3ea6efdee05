"""A core of its own for the MLflow writer while it has work.

MLflow's SQLite store costs about 25 ms of pure-Python work per arm, while the batched trainer
finishes an arm every few milliseconds on two cores. Left to the scheduler, TensorFlow's
threads and the writer share both cores, the writer falls behind, and the study ends waiting
for a backlog of writes. Pinning the writer to one core and every other thread to the rest
while writes are queued keeps the writer up with training; when the queue empties, every
thread gets every core back, so a study whose training dominates (mnist1d) loses nothing.

Linux only (per-thread affinity); elsewhere, or on a single core, it does nothing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_TASKS = Path("/proc/self/task")


def _threads() -> list[int]:
    return [int(entry.name) for entry in _TASKS.iterdir()]


def _pin(thread_id: int, cpus: list[int]) -> None:
    try:
        os.sched_setaffinity(thread_id, cpus)
    except OSError:  # the thread ended since it was listed
        pass


class WriterCore:
    """``reserve`` (from the writer thread) pins it to the last core and every other thread of
    the process to the others; ``release`` gives all threads all cores again. Threads started
    while reserved inherit their creator's cores and are freed by ``release`` too."""

    def __init__(self):
        usable = hasattr(os, "sched_getaffinity") and _TASKS.is_dir()
        self.cpus = sorted(os.sched_getaffinity(0)) if usable else []
        self.reserved = False

    @property
    def possible(self) -> bool:
        return len(self.cpus) > 1

    def reserve(self) -> None:
        if self.reserved or not self.possible:
            return
        writer = threading.get_native_id()
        for thread_id in _threads():
            if thread_id != writer:
                _pin(thread_id, self.cpus[:-1])
        _pin(writer, self.cpus[-1:])
        self.reserved = True

    def release(self) -> None:
        if not self.reserved:
            return
        for thread_id in _threads():
            _pin(thread_id, self.cpus)
        self.reserved = False
