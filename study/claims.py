"""Who may write a study into a store: one process at a time, and nothing is left behind by
a process that died.

- A study's lock: an advisory lock (flock) on a file beside a SQLite store, held while the
  study trains and released by the kernel when its process ends, however it ends. A second
  `study run` of the same study on the same store stops with one line; other studies run
  side by side.
- The schema lock: MLflow creates a new SQLite store's tables when its first client starts,
  and two processes doing that at once crash one of them; the first client of a process is
  made under a lock.
- Whose runs are these: a parent run records its host, process id and the process's start
  time, so a later run of the study can tell a live owner from a dead one (a pid can be
  reused; its start time then differs).

A tracking server (or a database store) has no file to lock: there the server arbitrates a
claim (``StudyTracker.claim``: an MLflow experiment named after the study, which only one
process can create), held by a live process on this machine, or by one elsewhere while the
lease it renews lasts (``claim_is_live``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from study.errors import ConfigError


def _lock_file(db: Path, what: str) -> Path:
    return db.parent / f".{db.name}.{what}.lock"


@contextlib.contextmanager
def held(path: Path, wait: bool) -> Iterator[bool]:
    """flock ``path``; yields whether it is held (always, if ``wait``)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def study_lock(db: Path | None, study: str, uri: str) -> Iterator[None]:
    """Hold the study's lock on a SQLite store for the ``with`` block (servers: nothing)."""
    if db is None:
        yield
        return
    with held(_lock_file(db, f"study-{study}"), wait=False) as mine:
        if not mine:
            raise ConfigError(f"study {study!r} is being run into {uri} by another process; "
                              "wait for it to finish, or stop it and rerun")
        yield


def schema_lock_file(db: Path) -> Path:
    """Where the schema lock of a SQLite store is; it exists once a study made the store."""
    return _lock_file(db, "schema")


def schema_lock(db: Path | None):
    """Serialize the creation of a new SQLite store's tables across processes."""
    if db is None:
        return contextlib.nullcontext()
    return held(_lock_file(db, "schema"), wait=True)


def _start_time(pid: int) -> str | None:
    """The process's start time (seconds since the epoch, as psutil has it), None if it is
    gone: with the pid, it names one process, as a pid alone does not (pids are reused)."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.NoSuchProcess:
        return None


def this_process() -> dict[str, str]:
    """Tags that say which process owns a run."""
    return {"study.host": socket.gethostname(), "study.pid": str(os.getpid()),
            "study.process_start": _start_time(os.getpid()) or ""}


def owner_is_gone(tags: dict[str, str]) -> bool:
    """True when the process that tagged a run on this host has ended; False when it lives
    or ran elsewhere (it cannot be asked)."""
    if tags.get("study.host") != socket.gethostname() or "study.pid" not in tags:
        return False
    return _start_time(int(tags["study.pid"])) != tags.get("study.process_start")


def claim_is_live(tags: dict[str, str], now: float) -> bool:
    """Whether the process that took a study's claim on a tracking server still holds it:
    on this host, while it runs (pid and start time); on another, which cannot be asked,
    while the lease it renews has not run out."""
    if tags.get("study.host") == socket.gethostname():
        return not owner_is_gone(tags)
    try:
        return float(tags.get("study.lease_until", "0")) > now
    except ValueError:  # not a claim this program wrote
        return False
