"""kill -9 at any moment, then a rerun: one FINISHED child per arm, no run left RUNNING, and
every arm's stored values equal an uninterrupted run's, bit for bit (the rerun trains the
missing arms in other groups and slots). Two runs of one study at once store each arm once
(on a tracking server: tests/test_server_claim.py)."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from study.config import load_config
from study.run import run_study
from tests.conftest import CONFIGS, RESUME_OVERRIDES, ROOT

# 3 losses x 2 starts x 4 seeds x 2 learning rates = 48 arms in 3 groups of 16, 1 epoch.
STUDY = [str(CONFIGS / "smoke.yaml"), *(f"--set={item}" for item in RESUME_OVERRIDES),
         "--quiet"]


def _run(forks, uri: str):
    """The study as a process of its own (forked: tests/forks.py)."""
    return forks.popen([sys.executable, "-m", "study", "run", *STUDY, "--tracking-uri", uri],
                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _count(db, where: str) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        try:
            return connection.execute(
                "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                f"WHERE {where}").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is still being created
            return 0


def _finished_children(db) -> int:
    return _count(db, "tags.key = 'study.arm' AND runs.status = 'FINISHED' "
                      "AND runs.lifecycle_stage = 'active'")


def _parents(db) -> int:
    return _count(db, "tags.key = 'study.role'")


def _values(uri: str) -> dict:
    """Arm key -> every metric's (step, value) history, of the FINISHED child runs."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment], "attributes.status = 'FINISHED'",
                              max_results=1000)
    values = {}
    for run in runs:
        if "study.arm" in run.data.tags:
            values[run.data.tags["study.arm"]] = {
                name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                            name)]
                for name in run.data.metrics}
    return values


@pytest.fixture(scope="session")
def uninterrupted(resume_values):
    return resume_values


def _statuses(uri: str) -> tuple[list[str], list[str]]:
    """Statuses of the parents and of the live (not deleted) children."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    return ([r.info.status for r in runs if r.data.tags.get("study.role") == "parent"],
            [r.info.status for r in runs if "study.arm" in r.data.tags])


# The moments a study is killed at, in the order they come; each waits for its moment in
# the store it shares with the kills before it (counts since the process started).
MOMENTS = ["start-up", "parent", "first arm", "middle", "last"]


def _reached(moment: str, db, parents: int, finished: int) -> bool:
    """Whether a process started with ``parents`` parent runs and ``finished`` FINISHED
    children in the store has reached ``moment``."""
    return {"start-up": lambda: True, "parent": lambda: _parents(db) > parents,
            "first arm": lambda: _finished_children(db) > finished,
            "middle": lambda: _finished_children(db) >= 20,
            "last": lambda: _finished_children(db) >= 40}[moment]()


@pytest.fixture(scope="session")
def killed(tmp_path_factory, study_forks):
    """One store: the study killed with SIGKILL during start-up (no store yet), once its
    parent run exists, inside the first group's writes, in the middle and in the last group's
    writes, each kill in the rerun of the one before, then rerun to the end (in this
    process: the processes killed are what the test is about). Each kill is followed by a
    rerun, as in five separate stores, for a third of the processes. The moment
    -> (return code, FINISHED children when it died), and the store's statuses and values."""
    db = tmp_path_factory.mktemp("killed") / "mlflow.db"
    uri = f"sqlite:///{db}"
    died = {}
    for moment in MOMENTS:
        parents, finished = _parents(db), _finished_children(db)
        process = _run(study_forks, uri)
        try:
            deadline = time.monotonic() + 480  # a loaded machine: 240 s was seen too short
            if moment == "start-up":
                time.sleep(1.0)
            while not _reached(moment, db, parents, finished) and process.poll() is None:
                assert time.monotonic() < deadline, moment
                time.sleep(0.02)
        finally:  # killed at its moment, or when the wait failed: never left running
            process.kill()  # SIGKILL, unless it has ended
            process.wait()
        died[moment] = (process.returncode, finished, _finished_children(db))
    # the last rerun in this process: each kill above is met by the rerun the next one kills
    run_study(load_config(CONFIGS / "smoke.yaml", RESUME_OVERRIDES), uri, progress=False)
    return died, _statuses(uri), _values(uri)  # read once: the moments share the store


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_kill_9_then_rerun_equals_an_uninterrupted_run(killed, uninterrupted, moment):
    """Killed during start-up (no store yet), once the parent run exists, inside the first
    group's writes, in the middle, and in the last group's writes; then rerun to the end."""
    died, (parents, children), resumed = killed
    code, before, after = died[moment]
    assert code == -signal.SIGKILL
    assert after < 48  # it died mid-study
    if moment in ("first arm", "middle", "last"):
        assert after > before  # it had stored arms of its own
    assert "RUNNING" not in parents and parents.count("FINISHED") == 1
    assert children == ["FINISHED"] * 48  # one FINISHED child per arm, nothing half-written
    assert resumed.keys() == uninterrupted.keys()
    for key, histories in uninterrupted.items():
        assert resumed[key] == histories, key


@pytest.mark.slow
def test_two_runs_of_one_study_store_each_arm_once(tmp_path, uninterrupted, study_forks):
    """Two `study run` of one study on one new store at once: one trains, the other stops
    with one line; and another study runs beside them on the same store (in this process,
    once the study's parent run exists: while the winner trains and writes)."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    first, second = _run(study_forks, uri), _run(study_forks, uri)
    try:
        deadline = time.monotonic() + 480
        while not _parents(db):
            assert first.poll() is None or second.poll() is None, "neither made a parent run"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # one group of the study's own shape: this process traced it for resume_values
        beside = run_study(load_config(CONFIGS / "smoke.yaml",
                                       [*RESUME_OVERRIDES, "name=beside", "losses=[bce]"]),
                           uri, progress=False)
        codes = sorted([first.wait(timeout=300), second.wait(timeout=300)])
    finally:  # never left running when a check fails
        for process in (first, second):
            process.kill()
            process.wait()
    assert codes == [0, 2]
    loser = first if first.returncode == 2 else second
    assert "is being run into" in loser.stderr.read().decode()
    assert _values(uri) == uninterrupted  # each arm once, with its values
    _, children = _statuses(uri)
    assert len(children) == 48
    assert len(beside.results) == 16 and not beside.skipped  # 2 starts x 4 seeds x 2 rates
    client = MlflowClient(uri)
    beside_runs = client.search_runs([client.get_experiment_by_name("beside").experiment_id],
                                     "attributes.status = 'FINISHED'")
    assert len([r for r in beside_runs if "study.arm" in r.data.tags]) == 16
