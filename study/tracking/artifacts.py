"""Where a SQLite store's artifacts live: in ``mlartifacts/`` beside its file, so the store
moves as one folder, and found again when it has moved."""

from __future__ import annotations

import contextlib

from study.tracking.store import sqlite_path


def artifact_location(uri: str, experiment: str) -> str | None:
    # A SQLite store keeps artifacts beside its file, so the store moves as one folder.
    db_path = sqlite_path(uri)
    if db_path is None:
        return None
    return (db_path.parent / "mlartifacts" / experiment).resolve().as_uri()


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

