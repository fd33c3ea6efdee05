"""Tracking: the one module that writes to MLflow.

One parent run per invocation (the config, its hash, the git commit, package versions) and
one nested child run per arm, written when the arm finishes: its params, tags and metrics in
``log_batch`` calls, then FINISHED. An arm that did not finish has no run, so every child run
in the store is complete. A tracking server that stops answering is retried with backoff for
at most the study's store timeout (``StudyTracker.patiently``), then StoreUnreachable.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from study.claims import claim_is_live, owner_is_gone, schema_lock, schema_lock_file, this_process
from study.config import StudyConfig
from study.cores import WriterCore
from study.errors import ConfigError, StoreFull, StoreUnreachable, quote
from study.grid import Arm, exact, optimizer_of
from study.train.common import ArmResult

T = TypeVar("T")
PACKAGES = ("tensorflow", "keras", "mlflow", "numpy", "scikit-learn", "mnist1d", "pandas")


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI if set, else the SQLite file mlflow.db in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI (relative to the working directory when
    the URI is), or None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if urlparse(uri).scheme == "sqlite" else None


def absolute_uri(uri: str) -> str:
    """A relative SQLite path made absolute, so notebooks running elsewhere find the store."""
    path = sqlite_path(uri)
    return f"sqlite:///{path.resolve()}" if path is not None else uri


def browse_link(uri: str, experiment_id: str, view_key: str | None = None,
                port: int | None = None) -> str:
    """Where to look: the study's comparison on a tracking server's own page, or on
    `make ui` (at ``port``, else $PORT, else 5000) over a local store."""
    from study.browse import ui_port, view_link

    link = view_link(uri, experiment_id, view_key, port)
    if urlparse(uri).scheme in ("http", "https"):
        return link
    port = ui_port(port)
    return f"make ui{'' if port == 5000 else f' PORT={port}'}, then open {link}"


def _artifact_location(uri: str, experiment: str) -> str | None:
    # A SQLite store keeps artifacts beside its file, so the store moves as one folder.
    db_path = sqlite_path(uri)
    if db_path is None:
        return None
    return (db_path.parent / "mlartifacts" / experiment).resolve().as_uri()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state() -> tuple[str, bool]:
    """The harness's commit and whether its work tree has uncommitted changes (the store's
    own files are ignored by .gitignore, so writing a study does not make it dirty)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(dirty)


def context_tags() -> dict[str, str]:
    """Who ran the study, from what, at which commit: MLflow's own context providers (user,
    source name and type, and git when the entry point sits in a repository), plus the
    harness's commit and whether it had uncommitted changes."""
    from mlflow.tracking.context.registry import resolve_tags

    commit, dirty = git_state()
    tags = {"mlflow.source.git.commit": commit, **resolve_tags({})}
    tags["study.git_dirty"] = str(dirty).lower()
    return tags


def relocate_artifacts(uri: str) -> int:
    """Point a moved or copied SQLite store at the artifact folder beside it.

    The harness keeps a SQLite store's artifacts in ``mlartifacts/`` next to its file, but
    MLflow records them as absolute paths, so a store copied with that folder elsewhere would
    silently list no artifacts. MLflow has no call to change an experiment's artifact
    location, so the two columns that hold it are rewritten here. Returns how many
    experiments were moved."""
    import sqlite3

    db = sqlite_path(uri)
    here = db.resolve().parent / "mlartifacts" if db is not None else None
    if here is None or not db.exists() or not here.is_dir():
        return 0
    moved = 0
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        for experiment_id, location in connection.execute(
                "SELECT experiment_id, artifact_location FROM experiments").fetchall():
            old, sep, name = (location or "").rpartition("/mlartifacts/")
            if not sep or not old.startswith("file://") or old + "/mlartifacts" == \
                    here.as_uri():
                continue
            old_root, new_root = old + "/mlartifacts", here.as_uri()
            connection.execute("UPDATE experiments SET artifact_location = ? "
                               "WHERE experiment_id = ?", (f"{new_root}/{name}", experiment_id))
            connection.execute(
                "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                (new_root, len(old_root) + 1, experiment_id, len(old_root), old_root))
            moved += 1
    return moved


def arm_params(arm: Arm, config: StudyConfig, model: str) -> dict[str, str]:
    optimizer = optimizer_of(config, arm)
    return {"loss": arm.loss, "init": arm.init, "severity": exact(arm.severity),
            "seed": str(arm.seed), "optimizer": arm.optimizer,
            "optimizer_name": optimizer.name, "lr": exact(arm.lr), "dataset": config.dataset,
            "model": model, "batch_size": str(config.batch_size), "epochs": str(config.epochs),
            "trainer": config.trainer,
            **{f"optimizer.{key}": str(value) for key, value in optimizer.options.items()},
            **{f"loss.{key}": value for custom in config.custom_losses  # the user's own loss
               if custom.name == arm.loss for key, value in custom.model_dump().items()
               if key != "name"}}


SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")
DATABASES = ("postgresql", "mysql", "mssql")  # SQLAlchemy's, as dialect or dialect+driver
# The pip package of each database driver SQLAlchemy may ask for (the module's name else).
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary",
                   "MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "pyodbc": "pyodbc",
                   "pymssql": "pymssql", "mysql": "mysql-connector-python"}
MLFLOW_TABLES = {"alembic_version", "experiments"}  # what tells an MLflow store from others
# The start-up check of a tracking server: one try, a few seconds, not MLflow's default of
# retries with backoff (four minutes before a dead server is reported).
REACH_RETRIES, REACH_TIMEOUT_S = "0", "5"


@contextlib.contextmanager
def _environment(**values: str):
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


def check_store(uri: str, must_exist: bool = False) -> None:
    """Fail fast, with one line, on a store that cannot be used, before anything is written
    (no file, no lock file, no table): an unknown scheme or a missing database driver, a
    SQLite path that is no file it could write (``_check_sqlite``), a server that does not
    answer within seconds. ``must_exist``: a SQLite store must be there already (``report``
    and ``ui`` read one, and do not create an empty one)."""
    scheme = urlparse(uri).scheme
    database = scheme.partition("+")[0] in DATABASES
    if scheme == "file":
        raise ConfigError(f"tracking URI {_shown(uri)}: MLflow's file store is not supported "
                          "(a study needs a database); use sqlite:///path/mlflow.db or a "
                          "tracking server, http://host:port")
    if scheme not in SCHEMES and not database:
        hint = f"unknown scheme {quote(scheme)}" if scheme else "no scheme (a plain path?)"
        raise ConfigError(f"tracking URI {_shown(uri)}: {hint}; use sqlite:///path/mlflow.db, "
                          "http://host:port (an mlflow server), https://... or a database "
                          "URL (postgresql://...)")
    if scheme == "sqlite":
        _check_sqlite(uri, must_exist)
    elif database:
        _check_driver(uri)
    elif scheme in ("http", "https"):
        from mlflow.tracking import MlflowClient

        with _environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES=REACH_RETRIES,
                          MLFLOW_HTTP_REQUEST_TIMEOUT=REACH_TIMEOUT_S):
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as err:  # connection refused, timeout, 5xx, not MLflow
                reason = _reason(err)
                raise ConfigError(f"cannot reach the MLflow tracking server at {uri} "
                                  f"({reason}); start it (make server) or check "
                                  "MLFLOW_TRACKING_URI") from None


def _shown(uri: str) -> str:
    """The URI as an error message quotes it: cut, and without a password (user:***@)."""
    return quote(re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", uri))


def _check_sqlite(uri: str, must_exist: bool) -> None:
    """A SQLite store is a file, named by ``sqlite:///path`` alone, in a folder that exists;
    both must be writable (SQLite writes its journal and the study its lock files beside the
    file), and a file that exists must be an MLflow store: another program's database is
    never given MLflow's tables."""
    said = f"tracking URI {_shown(uri)}"
    rest = uri.removeprefix("sqlite:///")
    if rest == uri:
        raise ConfigError(f"{said}: a SQLite store is sqlite:///path/mlflow.db (three "
                          "slashes, then the file's path)")
    if "?" in rest:
        raise ConfigError(f"{said}: options after '?' are not supported; give the file "
                          "alone, sqlite:///path/mlflow.db")
    if rest == "" or rest.startswith(":memory:"):
        raise ConfigError(f"{said} names no file (an in-memory store would be lost when "
                          "the run ends); give one, e.g. sqlite:///mlflow.db")
    if rest.endswith("/"):
        raise ConfigError(f"{said} ends in '/', a folder; name the database file in it, "
                          f"e.g. sqlite:///{quote(rest, 60, quoted=False)}mlflow.db")
    path = Path(rest)
    folder = path.resolve().parent
    if must_exist and not path.exists():
        raise ConfigError(f"no MLflow store at {path}: run a study first (make run-study) "
                          "or give --tracking-uri")
    if path.is_dir():
        raise ConfigError(f"{said} is a folder; name the database file in it, e.g. "
                          f"sqlite:///{quote(rest, 60, quoted=False)}/mlflow.db")
    if not folder.exists():
        raise ConfigError(f"{said}: folder {folder} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"{said}: {folder} is not a folder")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{said}: {path} is not a regular file")
    if path.exists():  # else a new store, which the first study makes
        _check_mlflow_file(path, said)
        if not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(f"{said}: the store {path} cannot be written (a read-only "
                              "file or file system); make it writable or give another store")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{said}: folder {folder} cannot be written (SQLite's journal and "
                          "the study's lock files go beside the store); give a writable one")


def _check_mlflow_file(path: Path, said: str) -> None:
    """Refuse a file that is not an MLflow store, read without writing a byte: opened
    read-only, only its table names are looked at. A file with the schema lock file beside
    it is a store this harness made, or is making under that lock right now (another study
    may be creating its tables), and is let through unread."""
    import sqlite3

    if schema_lock_file(path).exists():
        return
    if path.stat().st_size == 0:
        raise ConfigError(f"{said}: {path} is an empty file, not an MLflow store; remove it "
                          "or give another path")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?{_read_mode(path)}",
                                                uri=True, timeout=1)) as db:
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:  # not a database, encrypted, locked
        raise ConfigError(f"{said}: {path} is not an SQLite database MLflow can use "
                          f"({quote(str(err), quoted=False)})") from None
    if not MLFLOW_TABLES <= tables:
        raise ConfigError(f"{said}: {path} is a database of another program (no MLflow "
                          "tables), left untouched; give a new file or an MLflow store")


def _read_mode(path: Path) -> str:
    """How to open a SQLite file without writing beside it. Read-only, a database in WAL
    mode still gets a -wal and a -shm file unless they exist already (someone has it open):
    with neither there, every commit is in the file itself, which is then read as
    immutable (no locks, no files)."""
    with path.open("rb") as file:
        header = file.read(20)
    wal = header[:16] == b"SQLite format 3\x00" and len(header) == 20 and header[18] == 2
    alone = not any(Path(f"{path}{end}").exists() for end in ("-wal", "-shm"))
    return "immutable=1" if wal and alone else "mode=ro"


def _check_driver(uri: str) -> None:
    """A database URL whose SQLAlchemy driver is installed; the URL's password is never
    printed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        shown = url.render_as_string(hide_password=True)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise ConfigError(f"tracking URI {_shown(uri)}: not a database URL "
                          f"SQLAlchemy knows ({quote(str(err), quoted=False)})") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        module = (err.name or dialect.driver).split(".")[0]
        raise ConfigError(f"tracking URI {quote(shown)}: its {dialect.name} driver "
                          f"{module!r} is not installed; pip install "
                          f"{DRIVER_PACKAGES.get(module, module)}") from None


# A tracking server that goes away mid-study. MLflow's client would retry each request 7 times
# with exponential backoff (about 4 minutes per request, so hours for a study's queue of writes)
# and wait up to 120 s for each answer. A study's requests go out once, with a short timeout,
# and the study retries a whole arm's write itself, with backoff, until one outage has lasted
# the store timeout (--store-timeout): then it stops with one line, exit 3.
STORE_TIMEOUT_S = 120.0
REQUEST_RETRIES, REQUEST_TIMEOUT_S = "0", "15"  # MLflow's own; the timeout is the user's if set
BACKOFF_S = (1, 2, 4, 8)  # waits between tries; then every 8 s, so a server back is seen soon


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


def _reason(err: Exception, timeout: str = REACH_TIMEOUT_S) -> str:
    """The cause in a few words, from MLflow's long connection errors."""
    import re

    text = str(err)
    found = re.search(r"\[Errno -?\d+\] ([^'\"\)]+)", text)
    if found:
        return found.group(1).strip()
    if "timed out" in text.lower() or "timeout" in text.lower():
        return f"no answer within {timeout} s"
    return (text.splitlines()[0][:120] if text else type(err).__name__)


# A study's claim on a tracking server: its owner renews the lease every quarter of it, and
# a claim from another machine whose lease has run out no longer holds the study (a dead
# process there cannot be asked). A process cut off from the server for longer than this
# (--store-timeout above it) may lose its claim.
LEASE_S = 600.0
CLAIM_TRIES = 5  # claims taken and released by others between two looks: give up then


def claim_name(study: str) -> str:
    """The claim experiment's name: a study name has no spaces, so no study is named this."""
    return f"{study} (claim)"


class StudyTracker:
    def __init__(self, tracking_uri: str | None = None,
                 store_timeout: float = STORE_TIMEOUT_S):
        uri = tracking_uri or default_tracking_uri()
        check_store(uri)  # as given: made absolute, 'sqlite:///' would name the folder
        self.uri = absolute_uri(uri)
        # Only a server can go away and come back; a local store's errors are reported at once.
        self.patient = urlparse(self.uri).scheme in ("http", "https")
        self.store_timeout = store_timeout
        self.outage_since: float | None = None  # monotonic time of the first failed try
        self.abandoned: list[str] = []  # child runs of failed tries not yet deleted
        # Set when the study stops for another reason (Ctrl-C): an outage is not waited out.
        self.impatient = False
        # MLflow prints a "View run ... at" line per run to stdout for a server store: 2 per
        # arm; the study prints its own link once.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.arms_written = 0  # child runs written whole by this tracker
        self.config_hash: str | None = None
        self.best_lr: bool | None = None  # the child runs' study.best_lr tag, if known
        self.several_optimizers = False  # then run names say the optimizer

    def requests_once(self):
        """While a study runs, MLflow makes each HTTP request once, with a short timeout:
        ``patiently`` does the retrying, within the store timeout."""
        return _environment(
            MLFLOW_HTTP_REQUEST_MAX_RETRIES=REQUEST_RETRIES,
            MLFLOW_HTTP_REQUEST_TIMEOUT=os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
            or REQUEST_TIMEOUT_S)

    def patiently(self, attempt: Callable[[], T],
                  waiting: Callable[[float, float], None] = lambda waited, budget: None) -> T:
        """``attempt()``, tried again with backoff while a tracking server does not answer,
        until the outage has lasted ``store_timeout`` seconds: then StoreUnreachable.
        ``waiting`` hears every second how long the outage has lasted, and the budget."""
        delays = iter(BACKOFF_S)
        while True:
            tried = time.monotonic()
            try:
                value = attempt()
            except Exception as err:
                if out_of_room(err, sqlite_path(self.uri)):
                    raise self.full(err) from None
                if not (self.patient and unreachable(err)):
                    raise
                now = time.monotonic()
                if self.outage_since is None:  # a hung server's first silence counts too
                    self.outage_since = tried
                deadline = self.outage_since + self.store_timeout
                if now >= deadline or self.impatient:
                    reason = _reason(err, os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "?"))
                    raise StoreUnreachable(self.uri, self.store_timeout, reason) from None
                retry_at = min(now + next(delays, BACKOFF_S[-1]), deadline)
                while (left := retry_at - time.monotonic()) > 0 and not self.impatient:
                    waiting(time.monotonic() - self.outage_since, self.store_timeout)
                    time.sleep(min(1.0, left))
                continue
            self.outage_since = None  # the server answers: a later outage has a new budget
            return value

    def full(self, err: BaseException) -> StoreFull:
        """The store has no room: the error the CLI turns into one line and exit 1."""
        while err.__cause__ is not None:  # sqlite3's own words, not SQLAlchemy's wrapping
            err = err.__cause__
        reason = (os.strerror(err.errno) if isinstance(err, OSError) and err.errno
                  else _reason(err))
        return StoreFull(self.uri, reason)

    def _experiment(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            _not_in_trash(experiment)
            return experiment.experiment_id
        return self.client.create_experiment(name, _artifact_location(self.uri, name))

    def _write_ahead_log(self) -> None:
        # SQLite's write-ahead log makes each commit cheaper (about 20% per arm here) and
        # lets `make ui` read while a study writes. The mode is stored in the file, once.
        if sqlite_path(self.uri) is not None:
            import sqlite3

            with contextlib.closing(sqlite3.connect(sqlite_path(self.uri))) as db:
                db.execute("PRAGMA journal_mode=WAL")

    @functools.cached_property
    def client(self):
        # Made on first use: a SQLite store's file and tables are created with the client,
        # and a study that fails its checks must leave no file behind.
        import logging

        from mlflow.tracking import MlflowClient

        # "Creating initial MLflow database tables..." is MLflow's news, not the user's; and
        # it logs a traceback for each database error (a full disk: one per try) before
        # raising it, which the study reports in one line or raises itself.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        with schema_lock(sqlite_path(self.uri)):  # a new store's tables, one process at once
            try:
                client = MlflowClient(tracking_uri=self.uri)
                client.search_experiments(max_results=1)
            except Exception as err:
                if out_of_room(err, sqlite_path(self.uri)):
                    raise self.full(err) from None
                raise
        relocate_artifacts(self.uri)
        return client

    @contextlib.contextmanager
    def claim(self, study: str) -> Iterator[None]:
        """Hold ``study`` on a store without a lock file (a tracking server, a database) for
        the ``with`` block. The server arbitrates: the claim is an experiment named
        ``claim_name(study)``, and creating an experiment whose name exists fails, so of two
        processes only one creates it. The other stops with a ConfigError (one line, exit 2)
        while the holder lives (``claim_is_live``), or retires a dead holder's claim and
        tries again. Leaving the block retires the claim: renamed out of the way (an
        experiment in MLflow's trash keeps its name) and deleted."""
        name = claim_name(study)
        claim_id = self.patiently(lambda: self._take_claim(study, name))
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew_lease, args=(claim_id, stop),
                                   name="study-claim", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            # One short try: a server that is gone leaves the claim to its owner's death or
            # its lease, as after a kill -9.
            with contextlib.suppress(Exception), \
                    _environment(MLFLOW_HTTP_REQUEST_TIMEOUT=REACH_TIMEOUT_S):
                self._retire_claim(claim_id, study, "released")

    def _claim_tags(self) -> dict[str, str]:
        return {**this_process(), "study.lease_until": f"{time.time() + LEASE_S:.0f}",
                "mlflow.note.content": "Held by the `study run` that writes this study now; "
                                       "deleted when it ends."}

    def _take_claim(self, study: str, name: str) -> str:
        from mlflow.exceptions import MlflowException

        for _ in range(CLAIM_TRIES):
            try:
                return self.client.create_experiment(name, tags=self._claim_tags())
            except MlflowException as err:
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            held = self.client.get_experiment_by_name(name)
            if held is None:  # released since
                continue
            owner = {key: held.tags.get(key) for key in this_process()}
            if owner == this_process():  # ours: a try whose answer was lost
                return held.experiment_id
            if held.lifecycle_stage == "active" and claim_is_live(held.tags, time.time()):
                raise ConfigError(
                    f"study {study!r} is being run into {self.uri} by another process (pid "
                    f"{held.tags.get('study.pid')} on {held.tags.get('study.host')}); wait "
                    "for it to finish, or stop it and rerun")
            with contextlib.suppress(MlflowException):  # another rerun retired it first
                self._retire_claim(held.experiment_id, study, "expired")
        raise ConfigError(f"study {study!r}: its claim in {self.uri} changed hands "
                          f"{CLAIM_TRIES} times while this run tried to take it; rerun")

    def _retire_claim(self, claim_id: str, study: str, why: str) -> None:
        if self.client.get_experiment(claim_id).lifecycle_stage == "deleted":
            self.client.restore_experiment(claim_id)  # deleted by hand: free its name
        self.client.rename_experiment(claim_id, f"{study} (claim {claim_id} {why})")
        self.client.delete_experiment(claim_id)

    def _renew_lease(self, claim_id: str, stop: threading.Event) -> None:
        while not stop.wait(LEASE_S / 4):
            with contextlib.suppress(Exception):  # the server is away: the next renewal
                self.client.set_experiment_tag(claim_id, "study.lease_until",
                                               f"{time.time() + LEASE_S:.0f}")

    def sweep(self, experiment: str, locked: bool) -> int:
        """Runs of this study left RUNNING by a process that is gone: parents end KILLED,
        half-written children are deleted. With the study held by this process (its lock
        on a SQLite store, its claim on a server), every RUNNING run of the study is such a
        run; without, those whose owner ran on this machine and has ended. Returns how many
        runs it cleaned up."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return 0
        running = self.client.search_runs([found.experiment_id],
                                          "attributes.status = 'RUNNING'", max_results=50000)
        parents = {r.info.run_id: r for r in running if r.data.tags.get("study.role")
                   == "parent"}
        dead = {run_id for run_id, run in parents.items()
                if locked or owner_is_gone(run.data.tags)}
        for run_id in dead:
            self.client.set_terminated(run_id, "KILLED")
        halves = [r for r in running if "study.arm" in r.data.tags
                  and (r.data.tags.get("mlflow.parentRunId") not in parents
                       or r.data.tags.get("mlflow.parentRunId") in dead)]
        for run in halves:
            self.client.delete_run(run.info.run_id)
        return len(dead) + len(halves)

    def supersede(self, experiment: str, config_hash: str) -> int:
        """``--force``: this study's arms stored under this config go to MLflow's trash
        (deleted, restorable with ``mlflow runs restore``), so the retrained runs replace them
        instead of sitting beside them, and an interrupted ``--force`` rerun resumes from the
        arms it retrained. Returns how many runs it moved."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return 0
        old = self.client.search_runs(
            [found.experiment_id], f"tags.`study.config_hash` = '{config_hash}'",
            max_results=50000)
        children = [run for run in old if "study.arm" in run.data.tags]
        for run in children:
            self.client.delete_run(run.info.run_id)
        return len(children)

    def check_active(self, experiment: str) -> None:
        """Refuse a study whose experiment is in MLflow's trash: MLflow takes no run into
        it, and a new experiment of that name cannot be made until it is gone."""
        found = self.patiently(lambda: self.client.get_experiment_by_name(experiment))
        if found is not None:
            _not_in_trash(found)

    def experiment_of(self, name: str) -> str:
        return self.client.get_experiment_by_name(name).experiment_id

    def store_exists(self) -> bool:
        path = sqlite_path(self.uri)
        return path is None or path.exists()

    def finished_arms(self, experiment: str, config_hash: str) -> set[str]:
        """Keys of the arms already FINISHED in this experiment under this config hash."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return set()
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`study.config_hash` = '{config_hash}' "
                          "and attributes.status = 'FINISHED'",
            max_results=50000)
        return {run.data.tags["study.arm"] for run in runs if "study.arm" in run.data.tags}

    @contextlib.contextmanager
    def study(self, config: StudyConfig, config_yaml: str, config_hash: str,
              arms: list[Arm], n_classes: int) -> Iterator[str]:
        """The parent run, open while the study trains; FAILED or KILLED if it is cut short."""
        from mlflow.entities import Param, RunTag

        try:
            self.experiment_id = self.patiently(lambda: self._experiment(config.name))
            self._write_ahead_log()
        except (StoreUnreachable, StoreFull):
            raise
        except Exception as err:  # a read-only file or folder, a server that refuses
            if out_of_room(err, sqlite_path(self.uri)):
                raise self.full(err) from None
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            raise ConfigError(f"MLflow store {self.uri} cannot be written ({reason})") \
                from None
        self.config_hash = config_hash
        tags = {"study.role": "parent", "study.config_hash": config_hash,
                **context_tags(), **this_process()}
        run = self.patiently(lambda: self.client.create_run(
            self.experiment_id, run_name=f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags=tags))
        self.parent_run_id = run.info.run_id
        self._publish_views(config, config_hash, arms)
        versions = package_versions()
        self.patiently(lambda: self.client.log_batch(
            self.parent_run_id,
            params=[Param("config_hash", config_hash), Param("n_arms", str(len(arms))),
                    Param("dataset", config.dataset), Param("trainer", config.trainer),
                    Param("executor", config.executor),
                    Param("target", f"{config.target:g}"),
                    Param("escape", f"{config.escape:g}"),
                    Param("levels", ",".join(f"{v:g}" for v in config.crossing_levels)),
                    Param("target_mode", config.target_mode),
                    Param("growth_window", json.dumps(config.growth_window)),
                    Param("lr_band", json.dumps(config.lr_band.model_dump()
                                                if config.lr_band else None)),
                    Param("n_classes", str(n_classes))],
            tags=[RunTag(f"version.{name}", v) for name, v in versions.items()]))
        self.patiently(lambda: self.client.log_text(self.parent_run_id, config_yaml,
                                                    "config.yaml"))
        self.patiently(lambda: self.client.log_dict(self.parent_run_id, versions,
                                                    "environment.json"))
        try:
            yield self.parent_run_id
        except BaseException as err:
            # One short try: a server that is gone leaves the parent RUNNING, and the next
            # run's sweep marks it KILLED and deletes its unfinished children.
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception), \
                    _environment(MLFLOW_HTTP_REQUEST_TIMEOUT=REACH_TIMEOUT_S):
                self._close_parent(status)
            raise
        self.patiently(lambda: self._close_parent("FINISHED"))

    def _close_parent(self, status: str) -> None:
        """Delete the children this invocation left unfinished (a try whose delete failed, a
        run created by a request whose answer was lost), then end the parent run."""
        unfinished = self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_run_id}' "
                                  "and attributes.status = 'RUNNING'", max_results=50000)
        for run in unfinished:
            self.client.delete_run(run.info.run_id)
        self.abandoned.clear()
        self.client.set_terminated(self.parent_run_id, status)

    def _publish_views(self, config: StudyConfig, config_hash: str, arms: list[Arm]) -> None:
        """The study's saved views in MLflow (one per start) and what the child runs need
        for them: a readable name, the start tag, the best-lr tag when it is known now."""
        from study import browse

        self.several_optimizers = len(config.optimizers) > 1
        # One rate per loss: every arm is at its loss's chosen rate. A grid of rates: the
        # report picks each loss's best and tags the arms then.
        self.best_lr = True if browse.one_rate_per_loss(arms) else None
        browse.publish_views(self.client, self.experiment_id, browse.starts_of(arms),
                             bool(self.best_lr), config_hash)

    def log_report(self, parent_run_id: str, paths: list[Path]) -> None:
        """The rendered report, its summary and figures, under ``report/`` on the parent."""
        for path in paths:
            sub = "report/figures" if path.suffix == ".png" else "report"
            self.client.log_artifact(parent_run_id, str(path), sub)

    def write_arm(self, arm: Arm, result: ArmResult, params: dict[str, str],
                  waiting: Callable[[float, float], None] = lambda waited, budget: None) -> str:
        """A finished arm's child run, complete (``_write_arm_once``), tried again as a whole
        while a tracking server does not answer, within the store timeout. Returns the run
        id."""
        run_id = self.patiently(lambda: self._write_arm_once(arm, result, params), waiting)
        self.arms_written += 1
        return run_id

    def _write_arm_once(self, arm: Arm, result: ArmResult, params: dict[str, str]) -> str:
        """Its tags as the run is created, then params and metrics in as few batched calls as
        MLflow allows, then FINISHED. If a write fails, the run is deleted, so no half-written
        arm stays visible; if the delete fails too (the server is gone), the run stays
        RUNNING, and is deleted by the next try, at the end of the study or by the next
        run's sweep."""
        from mlflow.entities import Metric, Param

        from study.browse import arm_tags, run_name

        while self.abandoned:  # an earlier try's run, maybe FINISHED by an answer that was lost
            self.client.delete_run(self.abandoned[-1])
            self.abandoned.pop()

        tags = {"mlflow.parentRunId": self.parent_run_id, "study.arm": arm.key,
                "study.config_hash": self.config_hash,
                "study.diverged": str(result.diverged).lower(),
                **arm_tags(arm, self.best_lr)}
        if result.diverged:
            tags["study.diverged_at_step"] = str(result.diverged_at)
        run_id = self.client.create_run(
            self.experiment_id, run_name=run_name(arm, self.several_optimizers), tags=tags,
            start_time=result.started_ms).info.run_id
        try:
            now = int(time.time() * 1000)
            metrics = [Metric(name, value, result.step_ms.get(step, now), step)
                       for name, points in result.history.items() for step, value in points]
            params = [Param(k, v) for k, v in params.items()]
            first = 1000 - len(params)  # at most 1000 entities (100 params) a batch
            self.client.log_batch(run_id, metrics=metrics[:first], params=params)
            for start in range(first, len(metrics), 1000):
                self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
            self.client.set_terminated(run_id, "FINISHED", end_time=result.finished_ms)
        except BaseException as err:
            self.abandoned.append(run_id)
            if not (self.patient and unreachable(err)):  # a server that is gone: next try
                with contextlib.suppress(Exception):
                    self.client.delete_run(run_id)
                    self.abandoned.pop()
            raise
        return run_id


def _not_in_trash(experiment) -> None:
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"experiment {quote(experiment.name)} (id {experiment.experiment_id}) is in "
            "MLflow's trash: restore it (mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}), or pick another name (--set name=...), or empty "
            "the trash for good (mlflow gc)")


class ArmWriter:
    """Writes each finished arm to MLflow from a background thread, off the training hot path.

    ``write`` returns at once. Leaving the ``with`` block waits for every write and raises the
    first error; that holds when the study is cut short too, so every arm that finished is
    kept, and an arm that did not finish never has a run. ``show`` hears, from the writer
    thread, how many arms are in the store so far ("52 stored"), or, while a tracking server
    does not answer, how long the writer has been retrying. Once the store timeout has run
    out, or the store is full, the queued writes fail at once and ``check``, ``write`` and
    leaving the block raise StoreUnreachable or StoreFull, so the study stops training.
    While writes are queued, the writer has a core to itself (``study.cores``).
    """

    def __init__(self, tracker: StudyTracker, show: Callable[[str], None] = lambda text: None):
        from concurrent.futures import ThreadPoolExecutor

        self.tracker, self.show, self.n_stored = tracker, show, 0
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
        self.show(f"store unreachable, retrying ({waited:.0f} s of {budget:g} s)")

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
