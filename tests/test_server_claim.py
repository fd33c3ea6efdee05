"""One study, one tracking server, several processes: the server arbitrates a claim (an
experiment only one process can create), so no arm is stored twice. Against a real
`mlflow server`: two `study run` of one study started at once store each arm once, with the
values of a single run, and the second stops with one line; a claim left by a dead process
(this machine: its pid and start time; another: a lease that ran out) does not block a
rerun, and a live one does. Another study written at the same time stores its arms once
too, and prints the server's link, not MLflow's "View run" lines."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from study.claims import _start_time, this_process
from study.errors import ConfigError
from study.tracking import LEASE_S, StudyTracker, claim_name
from tests.conftest import CONFIGS, RESUME_OVERRIDES
from tests.test_resume import _count, _run, _statuses, _values


@pytest.fixture
def server(killable_mlflow_server):
    """The server tests/test_store_outage.py kills too: these tests use names of their own."""
    return killable_mlflow_server.up()


def _parents(db, study: str) -> int:
    """Parent runs of one study in the server's store (others share it)."""
    return _count(db, "tags.key = 'study.role' AND runs.experiment_id = (SELECT "
                      f"experiment_id FROM experiments WHERE name = '{study}')")


def _claim_by_hand(uri: str, study: str, **tags: str) -> str:
    """A claim as another process would have left it."""
    return MlflowClient(uri).create_experiment(claim_name(study), tags=tags)


def _take(uri: str, study: str) -> None:
    """Take the study's claim and let it go again, as a study run does."""
    tracker = StudyTracker(uri)
    with tracker.requests_once(), tracker.claim(study):
        held = MlflowClient(uri).get_experiment_by_name(claim_name(study))
        assert held is not None and held.tags["study.pid"] == this_process()["study.pid"]


def _free(uri: str, study: str) -> bool:
    return MlflowClient(uri).get_experiment_by_name(claim_name(study)) is None


def test_a_claim_is_let_go_and_a_dead_owners_claim_does_not_block(server):
    _take(server.url, "quick")
    assert _free(server.url, "quick")  # released: the name is free for the next run

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = _claim_by_hand(server.url, "dead", **{
        "study.host": socket.gethostname(), "study.pid": gone.stdout.strip(),
        "study.process_start": "1", "study.lease_until": f"{time.time() + LEASE_S:.0f}"})
    _take(server.url, "dead")  # this machine, the process is gone: the lease does not matter
    assert _free(server.url, "dead")
    retired = MlflowClient(server.url).get_experiment(dead)
    assert retired.lifecycle_stage == "deleted" and retired.name == f"dead (claim {dead} expired)"

    _claim_by_hand(server.url, "lapsed", **{
        "study.host": "elsewhere.example", "study.pid": "1", "study.process_start": "1",
        "study.lease_until": f"{time.time() - 1:.0f}"})
    _take(server.url, "lapsed")  # another machine whose lease ran out
    assert _free(server.url, "lapsed")


@pytest.mark.parametrize("where", ["this machine", "another machine"])
def test_a_live_owners_claim_stops_a_second_run_in_one_line(server, where):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.5)  # its start time is in /proc
        owner = {"study.host": socket.gethostname(), "study.pid": str(live.pid),
                 "study.process_start": _start_time(live.pid),
                 "study.lease_until": f"{time.time() - 1:.0f}"}  # a lapsed lease: no matter
        if where == "another machine":
            owner = {"study.host": "elsewhere.example", "study.pid": "4242",
                     "study.process_start": "1",
                     "study.lease_until": f"{time.time() + LEASE_S:.0f}"}
        study = f"held-{where.split()[0]}"
        _claim_by_hand(server.url, study, **owner)
        with pytest.raises(ConfigError) as stopped:
            _take(server.url, study)
        message = str(stopped.value)
        assert "\n" not in message
        assert message == (f"study {study!r} is being run into {server.url} by another "
                           f"process (pid {owner['study.pid']} on {owner['study.host']}); "
                           "wait for it to finish, or stop it and rerun")
        assert not _free(server.url, study)  # left as it was
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_two_runs_of_one_study_on_one_server_store_each_arm_once(server, resume_values, capsys,
                                                                  monkeypatch, study_forks):
    """Both started at once: one trains every arm, the other stops with one line, exit 2,
    having written nothing; the values are a single run's (``resume_values``). A second
    study written to the server while the first trains (in this process, through the CLI,
    once the first's parent run exists) stores its arms once, prints the server's own link
    and no "View run" lines from MLflow."""
    from study.cli import main

    first, second = _run(study_forks, server.url), _run(study_forks, server.url)
    try:
        deadline = time.monotonic() + 480
        while not _parents(server.folder / "mlflow.db", "smoke"):
            assert first.poll() is None or second.poll() is None, "neither made a parent run"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # MLflow prints a "View run" line per run unless this is set; the study sets it itself
        monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
        capsys.readouterr()
        # one group of the first study's shape: this process traced it for resume_values
        assert main(["run", str(CONFIGS / "smoke.yaml"),
                     *(f"--set={item}" for item in RESUME_OVERRIDES), "--set", "name=alongside",
                     "--set", "losses=[bce]", "--quiet", "--tracking-uri", server.url]) == 0
        out, err = capsys.readouterr()
        assert "View run" not in out + err
        assert f"browse it: {server.url}/#/experiments/" in out
        codes = sorted([first.wait(timeout=300), second.wait(timeout=300)])
    finally:  # never left running when a check fails
        for process in (first, second):
            process.kill()
            process.wait()
    loser = first if first.returncode == 2 else second
    err = loser.stderr.read().decode()
    assert codes == [0, 2], err
    assert err.count("\n") == 1 and "error: study 'smoke' is being run into " \
        f"{server.url} by another process (pid " in err, err
    parents, children = _statuses(server.url)
    assert parents == ["FINISHED"]  # the second run made no parent run
    assert children == ["FINISHED"] * 48  # one run per arm
    # read from the server's store file, not through its REST API (a request per arm and
    # metric, seconds in all)
    assert len(resume_values) == 48 and \
        _values(f"sqlite:///{server.folder / 'mlflow.db'}") == resume_values
    assert _free(server.url, "smoke")
    client = MlflowClient(server.url)
    beside = client.search_runs([client.get_experiment_by_name("alongside").experiment_id],
                                "attributes.status = 'FINISHED'")
    # 1 loss x 2 starts x 4 seeds x 2 rates
    assert len([r for r in beside if "study.arm" in r.data.tags]) == 16
    assert _free(server.url, "alongside")
