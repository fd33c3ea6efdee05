"""Where the store is and whether it can be used: tracking URIs, the link to the study's
view, and the start-up checks (``check_store``) that fail fast, with one line, before
anything is written."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from study.claims import schema_lock_file
from study.errors import ConfigError, quote
from study.tracking.faults import REACH_RETRIES, REACH_TIMEOUT_S, environment, reason


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


SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")
DATABASES = ("postgresql", "mysql", "mssql")  # SQLAlchemy's, as dialect or dialect+driver
# The pip package of each database driver SQLAlchemy may ask for (the module's name else).
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary",
                   "MySQLdb": "mysqlclient", "pymysql": "PyMySQL", "pyodbc": "pyodbc",
                   "pymssql": "pymssql", "mysql": "mysql-connector-python"}
MLFLOW_TABLES = {"alembic_version", "experiments"}  # what tells an MLflow store from others


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

        with environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES=REACH_RETRIES,
                          MLFLOW_HTTP_REQUEST_TIMEOUT=REACH_TIMEOUT_S):
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as err:  # connection refused, timeout, 5xx, not MLflow
                raise ConfigError(f"cannot reach the MLflow tracking server at {uri} "
                                  f"({reason(err)}); start it (make server) or check "
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
