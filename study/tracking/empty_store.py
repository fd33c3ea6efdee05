"""A new SQLite store starts as a copy of an empty store that MLflow migrated itself.

MLflow makes a new SQLite store by running its schema migrations one by one: 1.6-3 s of CPU
and, as each one commits, up to 12 s on a busy disk; a copy takes 0.06 s. The first new store
on a machine pays it, into a template kept in the user's cache (one per MLflow version); every
later new store is a copy of that file, and MLflow then opens it as any store it made: it checks the
schema's version and adds its Default experiment. Anything unexpected (no cache folder, a
full disk, MLflow's internals changed) falls back to MLflow's own way, so this can only
save time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loss-study"


def template() -> Path | None:
    """The empty migrated store of this MLflow version, made on first use; None if it
    cannot be made here."""
    import mlflow

    path = cache_folder() / f"empty-store-mlflow-{mlflow.__version__}.db"
    if path.is_file():
        return path
    try:
        import mlflow.store.db.utils as db_utils
        import sqlalchemy

        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        try:
            engine = sqlalchemy.create_engine(f"sqlite:///{partial}")
            try:
                db_utils._initialize_tables(engine)
            finally:
                engine.dispose()
            os.replace(partial, path)  # whole or not at all, whoever else is making it
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    except Exception:  # noqa: BLE001 (any failure: MLflow makes the store its own way)
        return None
    return path


def start_from_template(db: Path) -> None:
    """Put a copy of the template at ``db`` if no file is there yet. Never replaces a file:
    the copy is linked into place, which fails if anything appeared there meanwhile."""
    if db.exists():
        return
    source = template()
    if source is None:
        return
    copy = db.with_name(f".{db.name}.{uuid.uuid4().hex}.new")
    try:
        shutil.copyfile(source, copy)
        os.link(copy, db)
    except OSError:  # a full disk, a folder without hard links: MLflow's own way
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            copy.unlink()
