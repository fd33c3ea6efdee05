"""kill -9 at any moment, then a rerun: every arm's stored values equal an uninterrupted
run's, bit for bit (the rerun trains the missing arms in other groups and slots)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, ROOT

# 3 losses x 2 starts x 4 seeds x 2 learning rates = 48 arms in 3 groups of 16, 3 epochs.
STUDY = [str(CONFIGS / "smoke.yaml"), "--set", "losses=[bce, mse, cce]",
         "--set", "seeds=[0, 1, 2, 3]", "--set", "optimizer.lr=[0.5, 4]", "--set", "epochs=3",
         "--quiet"]


def _run(uri: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "study", "run", *STUDY, "--tracking-uri", uri],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finished_children(db) -> int:
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as connection:
        try:
            return connection.execute(
                "SELECT count(*) FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
                "WHERE tags.key = 'study.arm' AND runs.status = 'FINISHED'").fetchone()[0]
        except sqlite3.OperationalError:  # the schema is still being created
            return 0


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


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('whole') / 'mlflow.db'}"
    assert _run(uri).wait(timeout=300) == 0
    values = _values(uri)
    assert len(values) == 48
    return values


@pytest.mark.slow
@pytest.mark.parametrize("stored", [1, 20])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, uninterrupted, stored):
    """Killed once ``stored`` arms are in the store (inside the first group's writes, and
    inside the second group's), then rerun to the end."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    process = _run(uri)
    deadline = time.monotonic() + 240
    while _finished_children(db) < stored and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    kept = _finished_children(db)
    assert stored <= kept < 48  # it died mid-study
    assert _run(uri).wait(timeout=300) == 0
    resumed = _values(uri)
    assert resumed.keys() == uninterrupted.keys()
    for key, histories in uninterrupted.items():
        assert resumed[key] == histories, key
