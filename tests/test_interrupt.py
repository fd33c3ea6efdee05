"""Ctrl-C and SIGTERM stop a study with one line, keep its finished arms and mark its parent
KILLED; a closed pipe ends quietly. Real processes, real signals. (A study into a tracking
server prints its link and no "View run" lines: tests/test_server_claim.py.)"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, ROOT
from tests.test_resume import _finished_children

# 4 losses x 2 starts x 4 seeds = 32 arms in 4 groups: the signal comes once the first group
# is stored, with three groups still to train. 30 epochs, so that they are still training
# then: at 3 epochs, and again at 1, the study was seen to finish before the signal came
# (exit 0 in the full suite). The signal stops it, so the long budget costs only the first
# group's.
STUDY = [str(CONFIGS / "smoke.yaml"), "--set", "seeds=[0, 1, 2, 3]", "--set", "epochs=30",
         "--quiet"]


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_keeps_finished_arms_and_marks_the_parent_killed(tmp_path, sent, code,
                                                                  study_forks):
    db = tmp_path / "mlflow.db"
    process = study_forks.popen(  # a process of its own (forked: tests/forks.py)
        [sys.executable, "-m", "study", "run", *STUDY, "--tracking-uri", f"sqlite:///{db}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 480  # a loaded machine: 120 s was seen too short
        while _finished_children(db) < 1:  # the first group is stored, the others train
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(sent)
        err = process.communicate(timeout=120)[1].decode()
    finally:  # never left running when a wait fails
        process.kill()
        process.wait()
    assert process.returncode == code
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: ")
    kept = int(lines[0].split()[1])
    assert kept >= 1 and lines[0].endswith("arms kept, rerun to finish")
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("smoke").experiment_id
    runs = client.search_runs([experiment], run_view_type=1, max_results=100)
    parents = [r for r in runs if r.data.tags.get("study.role") == "parent"]
    children = [r for r in runs if "study.arm" in r.data.tags]
    assert [p.info.status for p in parents] == ["KILLED"]
    assert len(children) == kept and {c.info.status for c in children} == {"FINISHED"}


def test_a_closed_pipe_ends_quietly():
    shown = subprocess.run(f"{sys.executable} -m study show {CONFIGS / 'default.yaml'} | head -1",
                           shell=True, cwd=ROOT, capture_output=True, text=True,
                           timeout=180)  # show loads the data and model for its estimate
    assert shown.stdout.startswith("study 'default'") and shown.stderr == ""
