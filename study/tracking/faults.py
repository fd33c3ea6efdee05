"""Whether the store answers: the failures a tracking server's return can cure
(``unreachable``), the ones no wait cures (``out_of_room``), and a cause in a few words."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

# The start-up check of a tracking server: one try, a few seconds, not MLflow's default of
# retries with backoff (four minutes before a dead server is reported).
REACH_RETRIES, REACH_TIMEOUT_S = "0", "5"


@contextlib.contextmanager
def environment(**values: str):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def unreachable(err: BaseException) -> bool:
    """True for a failure a tracking server's return can cure: no connection, no answer in
    time, a 5xx or 429 answer. A 4xx answer is the request's fault and is not retried."""
    import requests
    from mlflow.exceptions import MlflowException

    for _ in range(10):  # MLflow re-raises the requests error as the context of its own
        if err is None:
            return False
        if isinstance(err, (requests.ConnectionError, requests.Timeout,
                            requests.exceptions.RetryError)):
            return True
        if isinstance(err, MlflowException) and (err.get_http_status_code() >= 500
                                                 or err.get_http_status_code() == 429):
            return True
        err = err.__cause__ or err.__context__
    return False


# errno values of a write refused for want of room: the disk, the user's quota, or the
# process's file size limit (ulimit -f, with SIGXFSZ ignored).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def out_of_room(err: BaseException | None, db: Path | None) -> bool:
    """True when a write failed for want of room in the store: an artifact's OSError, SQLite's
    SQLITE_FULL ("database or disk is full", also in a tracking server's answer), or the
    "disk I/O error" SQLite reports for EFBIG, when the store file ``db`` is at the file
    size limit. Not retried: room does not come back by itself."""
    for _ in range(10):  # MLflow re-raises SQLAlchemy's error, which re-raises sqlite3's
        if err is None:
            return False
        if isinstance(err, OSError) and err.errno in NO_ROOM:
            return True
        name = getattr(err, "sqlite_errorname", None)
        if name == "SQLITE_IOERR_WRITE" and db is not None and _at_size_limit(db):
            return True
        if name == "SQLITE_FULL" or "database or disk is full" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _at_size_limit(db: Path) -> bool:
    """Whether the store file or its write-ahead log is within a page of the file size limit
    (SQLite's write that crossed it failed with EFBIG, which it reports as an I/O error)."""
    import resource

    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit == resource.RLIM_INFINITY:
        return False
    files = [db, db.with_name(db.name + "-wal")]
    return any(f.exists() and f.stat().st_size + 65536 > limit for f in files)


def reason(err: Exception, timeout: str = REACH_TIMEOUT_S) -> str:
    """The cause in a few words, from MLflow's long connection errors."""
    import re

    text = str(err)
    found = re.search(r"\[Errno -?\d+\] ([^'\"\)]+)", text)
    if found:
        return found.group(1).strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"no answer within {timeout} s"
    return (text.splitlines()[0][:120] if text else type(err).__name__)

