"""The MLflow writer's core: pinned while writes are queued, every core back afterwards."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

from study.cores import WriterCore
from study.tracking import ArmWriter
from tests.conftest import EVERY_CORE as ALL
from tests.conftest import every_thread_has_every_core


class _RecordingTracker:
    """Stands in for StudyTracker: notes which cores the writer and the trainer had."""

    def __init__(self, trainer_thread: int):
        self.trainer_thread, self.seen = trainer_thread, []

    def write_arm(self, arm, result, params, waiting=None) -> str:
        self.seen.append((os.sched_getaffinity(0), os.sched_getaffinity(self.trainer_thread)))
        return f"run-{arm.key}"


def test_the_writer_has_a_core_of_its_own_only_while_it_writes():
    assert every_thread_has_every_core()
    tracker = _RecordingTracker(threading.get_native_id())
    with ArmWriter(tracker) as writer:
        for key in "abc":
            writer.write(SimpleNamespace(key=key), None, {})
    assert writer.run_ids() == {"a": "run-a", "b": "run-b", "c": "run-c"}
    cpus = sorted(ALL)
    expected = ({cpus[-1]}, set(cpus[:-1])) if len(cpus) > 1 else (ALL, ALL)
    assert tracker.seen == [expected] * 3
    assert every_thread_has_every_core()


def test_threads_started_while_reserved_get_every_core_back():
    core = WriterCore()
    reserved, released, done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def late_thread():  # started by the writer while reserved: it inherits the writer's core
        seen["late, reserved"] = os.sched_getaffinity(0)
        reserved.set()
        released.wait()
        seen["late, released"] = os.sched_getaffinity(0)

    def writer_thread():
        core.reserve()
        late = threading.Thread(target=late_thread)
        late.start()
        reserved.wait()
        seen["main, reserved"] = os.sched_getaffinity(main)
        core.release()
        released.set()
        late.join()
        done.set()

    main = threading.get_native_id()
    threading.Thread(target=writer_thread).start()
    done.wait(timeout=10)
    cpus = sorted(ALL)
    writer_core, others = ({cpus[-1]}, set(cpus[:-1])) if len(cpus) > 1 else (ALL, ALL)
    assert seen == {"late, reserved": writer_core, "main, reserved": others,
                    "late, released": ALL}
    assert every_thread_has_every_core()
