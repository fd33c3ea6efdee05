"""SIGTERM to a study training on a local Ray cluster of its own: the finished chunks' arms
kept, the parent KILLED, the cluster shut down, and that cluster on loopback only. Apart
from tests/test_ray.py: the study is a process of its own (tests/forks.py), so it needs the
fork server, not that module's cluster."""

from __future__ import annotations

import os

import pytest

from tests.conftest import CONFIGS
from tests.test_ray import OVERRIDES
from tests.test_resume import _statuses

pytestmark = pytest.mark.ray


def _listening(pid: int) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every socket listening in the process ``pid`` and
    its descendants."""
    import psutil

    root = psutil.Process(pid)
    names = {process.pid: process.name() for process in [root, *root.children(recursive=True)]}
    return [(c.laddr.ip, c.laddr.port, names[c.pid]) for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in names]


@pytest.mark.slow  # a study process with a local cluster of its own
def test_sigterm_during_a_ray_study_keeps_finished_arms_and_marks_the_parent_killed(tmp_path,
                                                                                   study_forks):
    """ray.init installs its own SIGTERM handler; the study's is put back: one line, exit
    143, the finished chunks' arms kept whole, the parent KILLED, and the local cluster
    that the study started is shut down.

    That cluster (`--executor ray` without an address, a home folder of its own: Ray keeps
    the token it loaded for the life of a process) listens on loopback only and keeps its
    token private: every process of it (gcs_server, raylet, workers, agents, the driver)
    listens on 127.0.0.1 only, and the token Ray writes for it is readable by its owner
    only."""
    import ipaddress
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT
    from tests.test_resume import _finished_children

    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    environment["HOME"] = str(tmp_path)
    db = tmp_path / "mlflow.db"
    study = [str(CONFIGS / "smoke.yaml"), *[f"--set={item}" for item in OVERRIDES],
             f"--set=seeds={list(range(16))}", "--set=epochs=5", "--executor", "ray"]
    process = study_forks.popen(  # a process of its own (forked: tests/forks.py)
        [sys.executable, "-m", "study", "run", *study, "--tracking-uri", f"sqlite:///{db}",
         "--quiet"], cwd=ROOT, env=environment, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    # 4 chunks of 16 on 2 CPUs: the first two train side by side and end together, so a
    # signal as the first is stored can meet the second as Ray completes it (its "Tried to
    # complete task that was not pending", exit 1). Once both are stored, the last two have
    # just started: the signal finds them mid-training. (5 epochs: the workers have traced
    # the group for the first two, so the last two only train; at 2 epochs they were all
    # stored 2.5 s after the 32nd arm, at load 5.) The sockets are read as the first
    # arms are stored: the cluster and its workers are up.
    listening = None
    try:
        deadline = time.monotonic() + 480  # a loaded machine: 180 s can be too short
        while (stored := _finished_children(db)) < 32:
            assert process.poll() is None and time.monotonic() < deadline
            if listening is None and stored:
                listening = _listening(process.pid)
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        err = process.communicate(timeout=120)[1].decode()
    finally:  # never left running when a wait fails
        process.kill()
        process.wait()
    assert process.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: ") and lines[-1].endswith("rerun to finish")
    kept = int(lines[-1].split()[1])
    parents, children = _statuses(f"sqlite:///{db}")
    assert parents == ["KILLED"]
    assert kept % 16 == 0 and 32 <= kept < 64 and children == ["FINISHED"] * kept

    assert listening is not None  # read while the study trained
    names = {name for _, _, name in listening}
    assert {"gcs_server", "raylet"} <= names, listening  # the cluster's own servers, found
    for ip, port, name in listening:
        address = ipaddress.ip_address(ip)
        address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1
        assert address.is_loopback, (name, ip, port)
    token = tmp_path / ".ray" / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600
    assert token.parent.stat().st_mode & 0o777 == 0o700
    assert len(token.read_text().strip()) == 64  # a token was made, and is kept
