"""A new SQLite store copied from the migrated template is the store MLflow makes itself, and
the copy never replaces a file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing

from study.tracking import empty_store
from study.tracking.connection import StoreConnection


def _schema(db) -> tuple[list, list]:
    """Every table and index, each definition as a sorted list of its lines: MLflow's own
    migrations write a table's CHECK constraints in an order that varies between runs."""
    with closing(sqlite3.connect(db)) as con:
        tables = [(kind, name, table, sorted(line.strip().rstrip(",")
                                             for line in (sql or "").splitlines()))
                  for kind, name, table, sql in con.execute(
                      "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")]
        version = con.execute("SELECT version_num FROM alembic_version").fetchall()
    return tables, version


def test_a_store_from_the_template_is_the_store_mlflow_makes_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where MLflow puts its Default experiment's artifacts
    ordinary = tmp_path / "ordinary.db"
    # MLflow alone, in a process with none of the study's code: its migrations, one by one
    subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient; "
                    f"MlflowClient('sqlite:///{ordinary}').search_experiments()"],
                   check=True, capture_output=True, cwd=tmp_path)
    connection = StoreConnection(f"sqlite:///{tmp_path / 'copied.db'}")
    default = connection.client.get_experiment("0")
    tables, version = _schema(tmp_path / "copied.db")
    assert (tables, version) == _schema(ordinary)
    assert len(tables) > 40 and version  # a whole schema, not two empty ones
    # MLflow opened the copy as its own and added its Default experiment (the template
    # holds tables only)
    assert default.name == "Default"
    assert default.artifact_location.startswith(str(tmp_path))


def test_the_template_never_replaces_a_file(tmp_path):
    db = tmp_path / "mine.db"
    db.write_bytes(b"not mine to replace")
    empty_store.start_from_template(db)
    assert db.read_bytes() == b"not mine to replace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.db"]  # no copy left behind


def test_without_a_cache_folder_mlflow_makes_the_store_its_own_way(tmp_path, monkeypatch):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert empty_store.template() is None
    db = tmp_path / "store" / "m.db"
    db.parent.mkdir()
    empty_store.start_from_template(db)
    assert not db.exists()
    client = StoreConnection(f"sqlite:///{db}").client
    assert [e.name for e in client.search_experiments()] == ["Default"]
