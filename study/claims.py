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

A tracking server has no file to lock: two processes on different machines are not kept
from running one study at once (the README says so); runs left RUNNING by a dead process on
this machine are still found.
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
    """The process's start time in clock ticks since boot (Linux), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


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
