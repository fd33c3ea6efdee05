"""A tracking server that goes away mid-study. A real `mlflow server` over a SQLite store is
killed with SIGKILL (its whole process group) once some arms are stored, and started again on
the same port and store:

- gone for longer than --store-timeout: the study stops within the timeout (plus slack) with
  exit 3 and one line on stderr naming the server; a rerun once it is back completes the
  study: one FINISHED child per arm, nothing RUNNING, every value equal to an uninterrupted
  run's;
- back within --store-timeout: the study completes in the same invocation, every arm once,
  and the bar said the store was unreachable while it was.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import CONFIGS, ROOT, MlflowServer
from tests.test_resume import _count

# 4 losses x 2 starts x 4 seeds = 32 arms in 4 groups; each group trains for a few seconds,
# so the server dies after the first group is stored and while the others train.
N_ARMS = 32
STUDY = [str(CONFIGS / "smoke.yaml"), "--set", "seeds=[0, 1, 2, 3]", "--set", "epochs=10"]
BUDGET_S = 8  # the long outage's --store-timeout
SLACK_S = 15  # the last try, stopping training, a loaded machine


def _study(uri: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "study", "run", *STUDY, "--tracking-uri",
                             uri, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _runs(uri: str, experiment: str):
    """(parents, live children) of a study, deleted runs left out."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([found], max_results=1000)
    return ([r for r in runs if r.data.tags.get("study.role") == "parent"],
            [r for r in runs if "study.arm" in r.data.tags])


def _values(uri: str, experiment: str) -> dict:
    """Arm key -> every metric's (step, value) history, of the live child runs."""
    client = MlflowClient(uri)
    _, children = _runs(uri, experiment)
    return {run.data.tags["study.arm"]: {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        for name in run.data.metrics} for run in children}


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("outage")).launch()  # ready when used
    yield server
    server.kill()


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, server) -> dict:
    """The study's values trained in one go into a SQLite store, in this process (where it
    trains is not what the tests compare), while the server starts."""
    from study.cli import main

    uri = f"sqlite:///{tmp_path_factory.mktemp('whole') / 'mlflow.db'}"
    assert main(["run", *STUDY, "--tracking-uri", uri, "--quiet"]) == 0
    values = _values(uri, "smoke")
    assert len(values) == N_ARMS
    server.ready()
    return values


def _stored(server: MlflowServer, experiment: str) -> int:
    """FINISHED children of a study, read from the server's SQLite file."""
    return _count(server.folder / "mlflow.db",
                  "tags.key = 'study.arm' AND runs.status = 'FINISHED' AND runs.experiment_id "
                  f"= (SELECT experiment_id FROM experiments WHERE name = '{experiment}')")


def _kill_once_some_arms_are_stored(server: MlflowServer, study: subprocess.Popen,
                                    experiment: str) -> float:
    """SIGKILL the server when the study has stored its first arms; when it died."""
    deadline = time.monotonic() + 240
    while _stored(server, experiment) < 1:
        assert study.poll() is None, (study.communicate(), server.log.read_text())
        assert time.monotonic() < deadline
        time.sleep(0.05)
    server.kill()
    return time.monotonic()


def _check_complete(uri: str, experiment: str, uninterrupted: dict) -> None:
    parents, children = _runs(uri, experiment)
    assert "RUNNING" not in {p.info.status for p in parents}
    assert [p.info.status for p in parents].count("FINISHED") == 1
    assert [c.info.status for c in children] == ["FINISHED"] * N_ARMS
    values = _values(uri, experiment)  # one child per arm: no key twice
    assert values.keys() == uninterrupted.keys()
    for key, histories in uninterrupted.items():
        assert values[key] == histories, key


@pytest.mark.slow
def test_a_server_gone_longer_than_the_timeout_stops_the_study_and_a_rerun_completes_it(
        server, uninterrupted, capsys):
    """The study that meets the outage is a process; the rerun runs in this one, through the
    CLI (where it trains is not what is compared)."""
    from study.cli import main

    study = _study(server.url, "--quiet", "--store-timeout", str(BUDGET_S))
    died = _kill_once_some_arms_are_stored(server, study, "smoke")
    out, err = study.communicate(timeout=BUDGET_S + 120)
    stopped_after = time.monotonic() - died
    assert study.returncode == 3, err
    # The outage's clock starts when its first failed request began, which may be a write
    # already in flight when the server was killed: up to a second before `died` here.
    assert BUDGET_S - 1 <= stopped_after < BUDGET_S + SLACK_S
    lines = err.splitlines()
    assert len(lines) == 1, err  # no traceback
    said = re.fullmatch(rf"error: the MLflow tracking server at {re.escape(server.url)} has "
                        rf"not answered for {BUDGET_S} s \(Connection refused\); (\d+) arms? "
                        r"(?:is|are) stored, rerun when it is back to train the other (\d+)",
                        lines[0])
    assert said, lines[0]
    stored, other = int(said[1]), int(said[2])
    # the server stored at least one arm before it died, but the study may not have heard
    # of it (the answer lost with the server): the rerun below finds it
    assert stored + other == N_ARMS

    server.start()  # the same port and store
    capsys.readouterr()
    assert main(["run", *STUDY, "--tracking-uri", server.url, "--quiet"]) == 0, \
        capsys.readouterr().err
    out = capsys.readouterr().out
    said = re.search(r"trained (\d+) arms.*skipped (\d+) already finished", out)
    assert said, out
    trained, skipped = int(said[1]), int(said[2])
    # the rerun trains what the error line said, but for the write in flight as the server
    # died: stored by the server, its answer lost, so not counted by the stopped study
    assert trained + skipped == N_ARMS and stored <= skipped <= stored + 1
    parents, _ = _runs(server.url, "smoke")
    # the dead invocation's parent could not be marked FAILED: the rerun's sweep KILLED it
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]
    _check_complete(server.url, "smoke", uninterrupted)


@pytest.mark.slow
def test_a_server_back_within_the_timeout_loses_nothing(server, uninterrupted):
    if server.process is None or server.process.poll() is not None:  # an earlier test failed
        server.start()
    study = _study(server.url, "--set", "name=brief", "--store-timeout", "120")
    _kill_once_some_arms_are_stored(server, study, "brief")
    server.start()
    out, err = study.communicate(timeout=300)
    assert study.returncode == 0, err
    assert f"trained {N_ARMS} arms" in out
    frames = [line for line in re.split(r"[\r\n]+", err) if line.strip()]
    assert all(line.startswith("brief:") for line in frames), err  # the bar, nothing else
    retrying = [i for i, line in enumerate(frames)
                if re.search(r"store unreachable, retrying \(\d+ s of 120 s\)", line)]
    assert retrying, err  # the bar said so while the server was away
    # and went back to counting (a log's last progress line: "brief: 32/32 arms in 52 s,
    # 32 stored"; a terminal's bar ends in "32 stored]")
    assert re.search(rf"\b{N_ARMS} stored\]?$", frames[-1]), frames[-1]
    _check_complete(server.url, "brief", uninterrupted)
