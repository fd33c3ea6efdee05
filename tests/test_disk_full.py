"""A store whose disk fills mid-study. The study process runs with a file size limit (as
`ulimit -f` sets, SIGXFSZ ignored), so SQLite's writes past it fail with EFBIG, as on a full
disk: one line and exit 1, the arms written before are whole and FINISHED, the parent run
FAILED; a rerun once there is room (in the test's process) trains the other arms, with the
values of an uninterrupted run (``resume_values``: the study here is a part of that one, and
an arm's values do not depend on the other arms of its study). (A full tmpfs gives
SQLITE_FULL instead; both are recognised, see ``test_what_counts_as_a_full_store``.)"""

from __future__ import annotations

import contextlib
import errno
import re
import sqlite3
import subprocess
import sys

import pytest

from study.tracking import out_of_room
from tests.conftest import CONFIGS, RESUME_OVERRIDES, ROOT
from tests.test_resume import _statuses, _values

# RESUME_OVERRIDES's first loss alone: 1 loss x 2 starts x 4 seeds x 2 rates = 16 arms, one
# group, one epoch
N_ARMS = 16
STUDY = [str(CONFIGS / "smoke.yaml"), *(f"--set={item}" for item in RESUME_OVERRIDES),
         "--set", "losses=[bce]", "--quiet"]
# The store's tables take about 0.8 MB and each arm some 0.1 MB (in the write-ahead log):
# the limit is reached after a few arms, long before the last.
LIMIT = 1_500_000


def _study(forks, uri: str, limit: int) -> subprocess.CompletedProcess:
    """The study as a process (forked: tests/forks.py) whose writes past ``limit`` bytes
    fail with EFBIG."""
    return forks.run([sys.executable, "-m", "study", "run", *STUDY, "--tracking-uri", uri],
                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                     timeout=300, file_size_limit=limit)


@pytest.mark.slow
def test_a_full_store_stops_the_study_in_one_line_and_a_rerun_completes_it(
        tmp_path, capsys, resume_values, study_forks):
    """The limited study is a process of its own (the limit is a process's); the rerun runs
    in this one, through the CLI (where it trains is not what is compared)."""
    from study.cli import main

    uninterrupted = {key: values for key, values in resume_values.items()
                     if key.startswith("bce|")}
    assert len(uninterrupted) == N_ARMS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    full = _study(study_forks, uri, LIMIT)
    assert full.returncode == 1, full.stderr
    lines = full.stderr.splitlines()
    assert len(lines) == 1, full.stderr  # no traceback, no MLflow log
    said = re.fullmatch(rf"error: the MLflow store {re.escape(uri)} is full \(disk I/O error\)"
                        r": (\d+) arms? stored, free space and rerun to train the other (\d+)",
                        lines[0])
    assert said, lines[0]
    stored, other = int(said[1]), int(said[2])
    assert stored + other == N_ARMS and 0 < stored < N_ARMS
    parents, children = _statuses(uri)
    # FAILED if the parent's last write still fitted in the bytes left; else it stays
    # RUNNING and the rerun's sweep marks it KILLED (which write hits the limit first
    # depends on the sizes of the batches before it)
    assert parents in (["FAILED"], ["RUNNING"])
    first = "FAILED" if parents == ["FAILED"] else "KILLED"
    # the arms written before are whole; an arm whose write hit the limit stays RUNNING
    # only when there was no room left to delete it either, and the rerun's sweep deletes it
    assert children.count("FINISHED") == stored, children
    assert set(children) <= {"FINISHED", "RUNNING"} and children.count("RUNNING") <= 1

    capsys.readouterr()
    assert main(["run", *STUDY, "--tracking-uri", uri]) == 0, capsys.readouterr().err  # room
    out = capsys.readouterr().out
    assert f"trained {other} arms" in out
    assert f"skipped {stored} already finished" in out
    parents, children = _statuses(uri)
    assert sorted(parents) == sorted([first, "FINISHED"])
    assert children == ["FINISHED"] * N_ARMS  # one run per arm
    resumed = _values(uri)
    assert resumed.keys() == uninterrupted.keys()
    for key, histories in uninterrupted.items():
        assert resumed[key] == histories, key


def test_what_counts_as_a_full_store(tmp_path):
    """SQLITE_FULL (a full disk, here a page-count cap), ENOSPC, EDQUOT and EFBIG from an
    artifact's write, and MLflow's wrapping of them count; other errors do not."""
    from mlflow.exceptions import MlflowException

    db = tmp_path / "capped.db"
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.execute("CREATE TABLE t (x BLOB)")
        connection.execute("PRAGMA max_page_count = 4")
        with pytest.raises(sqlite3.OperationalError) as caught:
            connection.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert "database or disk is full" in str(caught.value)
    try:  # as MLflow raises it: its own error, from SQLAlchemy's, from sqlite3's
        try:
            raise caught.value
        except sqlite3.OperationalError as err:
            raise MlflowException(f"(sqlite3.OperationalError) {err}") from err
    except MlflowException as wrapped:
        assert out_of_room(wrapped, db)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        assert out_of_room(OSError(code, "no room"), None)
    assert not out_of_room(OSError(errno.EACCES, "denied"), None)
    assert not out_of_room(MlflowException("RESOURCE_DOES_NOT_EXIST"), db)
    # SQLite's "disk I/O error" is a full store only at the file size limit
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorname = "SQLITE_IOERR_WRITE"
    assert not out_of_room(io_error, db)  # no limit in this process
