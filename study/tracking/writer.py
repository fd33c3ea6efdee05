"""The background writer: finished arms go to MLflow from a thread of their own, off the
training hot path."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from study.cores import WriterCore
from study.errors import StoreFull, StoreUnreachable
from study.grid import Arm
from study.train.common import ArmResult


class ArmWriter:
    """Writes each finished arm to MLflow from a background thread, off the training hot path.

    ``write`` returns at once. Leaving the ``with`` block waits for every write and raises the
    first error; that holds when the study is cut short too, so every arm that finished is
    kept, and an arm that did not finish never has a run. ``show`` hears, from the writer
    thread, how many arms are in the store so far ("52 stored"); ``alert`` (``show`` if not
    given) hears, while a tracking server does not answer, how long the writer has been
    retrying. Once the store timeout has run out, or the store is full, the queued writes
    fail at once and ``check``, ``write`` and leaving the block raise StoreUnreachable or
    StoreFull, so the study stops training.
    While writes are queued, the writer has a core to itself (``study.cores``).
    """

    def __init__(self, tracker, show: Callable[[str], None] = lambda text: None,
                 alert: Callable[[str], None] | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.tracker, self.show, self.n_stored = tracker, show, 0
        self.alert = alert or show
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")
        self.written: dict[str, Future] = {}  # arm key -> future run id
        self.core = WriterCore()
        self.queued = 0  # writes submitted and not yet done
        self.lock = threading.Lock()
        self.busy_seconds = 0.0  # time the writer spent writing
        self.wait_seconds = 0.0  # time training waited for it at the end
        # the store timeout ran out, or the store is full
        self.gave_up: StoreUnreachable | StoreFull | None = None

    def check(self) -> None:
        """Raise StoreUnreachable or StoreFull once the writer has given up: training more
        arms into a queue that cannot drain would only lose them."""
        if self.gave_up is not None:
            raise self.gave_up

    def write(self, arm: Arm, result: ArmResult, params: dict[str, str]) -> None:
        self.check()
        with self.lock:
            self.queued += 1
        self.written[arm.key] = self.pool.submit(self._timed, arm, result, params)

    def _waiting(self, waited: float, budget: float) -> None:
        self.core.release()  # a writer that sleeps between tries needs no core of its own
        self.alert(f"store unreachable, retrying ({waited:.0f} s of {budget:g} s)")

    def _timed(self, arm: Arm, result: ArmResult, params: dict[str, str]) -> str:
        self.core.reserve()
        started = time.perf_counter()
        try:
            self.check()  # given up on an earlier arm: this one is retrained by the rerun
            run_id = self.tracker.write_arm(arm, result, params, waiting=self._waiting)
        except (StoreUnreachable, StoreFull) as err:
            self.gave_up = err
            raise
        finally:
            self.busy_seconds += time.perf_counter() - started
            with self.lock:
                self.queued -= 1
                idle = not self.queued
            if idle:  # a write submitted meanwhile reserves the core again
                self.core.release()
        self.n_stored += 1
        self.show(f"{self.n_stored} stored")
        return run_id

    def run_ids(self) -> dict[str, str]:
        return {key: future.result() for key, future in self.written.items()}

    def __enter__(self) -> ArmWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        started = time.perf_counter()
        if kind is not None:  # Ctrl-C during an outage: stop at once, the rerun retrains
            self.tracker.impatient = True
        self.pool.shutdown(wait=True)
        self.wait_seconds = time.perf_counter() - started
        if kind is None:
            self.check()
            for future in self.written.values():
                future.result()  # raise the first write error, if any
