"""Shared fixtures. The suite runs in one process so TensorFlow starts once; configs are
the project's own, shrunk (lightning-hydra style) so each test trains for seconds."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from study.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
EVERY_CORE = os.sched_getaffinity(0)  # as the suite starts, before any MLflow writer pins one


def every_thread_has_every_core() -> bool:
    return all(os.sched_getaffinity(int(thread)) == EVERY_CORE
               for thread in os.listdir("/proc/self/task"))


@pytest.fixture(scope="session")
def smoke_config():
    return load_config(CONFIGS / "smoke.yaml")


@pytest.fixture(scope="session")
def digits():
    from study.data import load_dataset

    return load_dataset("digits", 0)


@pytest.fixture(scope="session")
def tf():
    from study.backend import start_tensorflow

    return start_tensorflow()


def shrink(config, **changes):
    """A copy of a validated config with some keys changed, validated again."""
    from study.config import validate

    raw = config.model_dump(mode="json")
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return validate(raw)


def _copy_new_stores_from_a_template() -> None:
    """A study copies a new SQLite store from an empty one MLflow migrated itself
    (``study.tracking.empty_store``), instead of running MLflow's migrations one by one
    (1.6-3 s of CPU a store). The tests also make stores in this process by other ways (an
    MLflow client on a new file): those get the same template here, copied with SQLite's backup
    API into the file MLflow has just created. Only files with no table at all."""
    import sqlite3

    import mlflow.store.db.utils as db_utils

    from study.tracking.empty_store import template

    migrate = db_utils._initialize_tables
    empty = template()  # made (once per MLflow version) before MLflow's function is replaced
    if empty is None:
        return

    def initialize(engine) -> None:
        path = engine.url.database
        if engine.url.get_backend_name() != "sqlite" or not path or path == ":memory:":
            return migrate(engine)
        with contextlib.closing(sqlite3.connect(path)) as target:
            if target.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                return migrate(engine)
            with contextlib.closing(sqlite3.connect(empty)) as source:
                source.backup(target)

    db_utils._initialize_tables = initialize


_copy_new_stores_from_a_template()


def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory):
    """configs/smoke.yaml trained once through the CLI into a temporary store."""
    from study.cli import main

    uri = tracking_uri(tmp_path_factory.mktemp("store"))
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--tracking-uri", uri, "--quiet"]) == 0
    return uri


def parent_only_store(folder: Path, name: str) -> str:
    """A study in the store ``folder/mlflow.db`` (made if missing) whose parent run has no
    arms (every arm refused): what ``study run`` leaves when nothing trained. No TensorFlow
    needed; its report renders in seconds. Returns the store's URI."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(name, (folder / "mlartifacts").as_uri())
    run = client.create_run(experiment_id, tags={"study.role": "parent",
                                                 "study.config_hash": "0" * 16})
    client.log_param(run.info.run_id, "target", "0.5")
    client.set_terminated(run.info.run_id, "FINISHED")
    return uri


def title_only_notebooks(folder: Path) -> Path:
    """A notebooks folder whose report.ipynb is the real one's title and parameters cell
    and one light code cell: a report through every step of `study report` (papermill, a
    kernel, the HTML export, the marker, the rename into place, the upload to MLflow) that
    does not spend seconds on imports the test does not look at."""
    import nbformat

    import study.report

    node = nbformat.read(study.report.NOTEBOOKS / "report.ipynb", as_version=4)
    assert "parameters" in node.cells[1].metadata.get("tags", [])
    node.cells = node.cells[:2] + [nbformat.v4.new_code_cell("print(experiment)")]
    folder.mkdir()
    nbformat.write(node, folder / "report.ipynb")
    return folder


class MlflowServer:
    """A real `mlflow server` on a loopback port over a SQLite store in ``folder``; it can be
    killed (SIGKILL to its process group, as a crash would) and started again on the same
    port and store. Each start logs to ``folder/server-N.log``."""

    def __init__(self, folder: Path):
        import socket

        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.folder / f"server-{self.starts}.log"

    def start(self, timeout: float = 90) -> MlflowServer:
        """Start the server and wait until it answers."""
        return self.launch().ready(timeout)

    def launch(self) -> MlflowServer:
        """Start the server without waiting for it (``ready`` waits)."""
        import sys

        from study.tracking.empty_store import start_from_template

        self.starts += 1
        # a new store's tables copied as a study's are, not migrated by the server one by one
        # (seconds of each fixture's start); a store it already has is left as it is
        start_from_template(self.folder / "mlflow.db")
        mlflow = Path(sys.executable).parent / "mlflow"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                 "--artifacts-destination", str(self.folder / "artifacts")],
                stdout=log, stderr=log, start_new_session=True,
                # no GenAI job runner: five more processes, each importing MLflow
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        return self

    def ready(self, timeout: float = 90) -> MlflowServer:
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                # Whoever answers must be this server: another process may hold the port.
                if f"running on {self.url}" in self.log.read_text(errors="replace"):
                    return self
            except OSError:
                pass
            assert self.process.poll() is None and time.monotonic() < deadline, \
                f"no mlflow server on {self.url}: {self.log.read_text(errors='replace')[-2000:]}"
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server's whole process group (its workers too) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: SIGTERM not done in 30 s
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def up(self) -> MlflowServer:
        """Answering: started again if a test left it dead, else waited for."""
        if self.process is None or self.process.poll() is not None:
            return self.start()
        return self.ready()


@pytest.fixture(scope="session")
def smoke_piped_run(tmp_path_factory):
    """configs/smoke.yaml run as a user runs it (``python -m study run``, this worktree's
    code), its stdout and stderr to a file, not a terminal: (store, what it printed)."""
    import sys

    folder = tmp_path_factory.mktemp("piped")
    uri = tracking_uri(folder)
    log = folder / "log"
    with open(log, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "study", "run",
                               str(CONFIGS / "smoke.yaml"), "--tracking-uri", uri],
                              cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, log.read_text()
    return uri, log.read_text()


@pytest.fixture(scope="session")
def smoke_reported(smoke_piped_run, tmp_path_factory):
    """``python -m study report`` of smoke_piped_run's store, its stdout and stderr to one
    pipe: (store, reports folder, what it printed). Rendered once (about 15 s of CPU)."""
    import sys

    uri, _ = smoke_piped_run
    out = tmp_path_factory.mktemp("reports")
    done = subprocess.run([sys.executable, "-m", "study", "report", "--tracking-uri", uri,
                           "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert done.returncode == 0, done.stdout
    return uri, out, done.stdout


@pytest.fixture(scope="session")
def smoke_report(smoke_reported):
    """The smoke study's report (smoke_reported): (store, out folder, the HTML paths the
    command said it wrote)."""
    uri, out, log = smoke_reported
    return uri, out, [Path(line.removeprefix("wrote ")) for line in log.splitlines()
                      if line.startswith("wrote ")]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port over its own SQLite store; its URL."""
    server = MlflowServer(tmp_path_factory.mktemp("server")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def study_forks(tmp_path_factory):
    """Forks `python -m study` processes from a parent that imported everything once
    (tests/forks.py): for the tests whose subject is a process, not its start-up."""
    from tests.forks import StudyForks

    forks = StudyForks(tmp_path_factory.mktemp("forks"), ROOT)
    yield forks
    forks.close()


@pytest.fixture(scope="session")
def killable_mlflow_server(tmp_path_factory):
    """A real `mlflow server` (MlflowServer) that tests may kill and start again: one start
    (11-13 s of a test's time) shared by tests/test_server_claim.py and
    tests/test_store_outage.py, each writing experiments of its own names. Launched, not
    waited for: each test calls ``up()``, which also restarts it if a test left it dead."""
    server = MlflowServer(tmp_path_factory.mktemp("killable")).launch()
    yield server
    server.kill()



# ---- `python -m study ui` servers shared by test_browser.py and test_cli_output.py ----------

def serve_study_ui(store: str, log: Path, *flags: str):
    """``python -m study ui`` (this worktree's code) over ``store`` on a free loopback port,
    everything it prints to ``log``; yields (port, the lines it printed before serving) once
    the server answers, and stops it with SIGTERM (as Ctrl-C would) afterwards."""
    import socket
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "wb") as out:
        ui = subprocess.Popen([sys.executable, "-m", "study", "ui", "--tracking-uri", store,
                               "--port", str(port), *flags], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        text = log.read_text()  # the links and the serving line are flushed before mlflow starts
        yield port, text[:text.index("serving ")].splitlines()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=60)


@pytest.fixture(scope="session")
def smoke_study_ui(smoke_piped_run, tmp_path_factory):
    """`python -m study ui` over smoke_piped_run's store, as users start it (no access log):
    (port, the lines it printed before serving, the file everything it printed goes to)."""
    log = tmp_path_factory.mktemp("smoke-ui") / "ui.log"
    for port, printed in serve_study_ui(smoke_piped_run[0], log):
        yield port, printed, log


@pytest.fixture(scope="session")
def default_study_ui_verbose(tmp_path_factory):
    """configs/default.yaml shrunk (tests/test_browser.py's DEFAULT_SHRUNK: 32 arms, 1 epoch)
    trained in this process, then `python -m study ui --verbose` over its store: (port, the
    lines it printed before serving, the file everything it printed goes to, access log
    included)."""
    from study.cli import main
    from tests.test_browser import DEFAULT_SHRUNK

    folder = tmp_path_factory.mktemp("default-shrunk")
    config = shrink(load_config(CONFIGS / "default.yaml"), **DEFAULT_SHRUNK)
    (folder / "default.yaml").write_text(config.model_dump_json())  # JSON is YAML
    uri = tracking_uri(folder)
    assert main(["run", str(folder / "default.yaml"), "--tracking-uri", uri, "--quiet"]) == 0
    for port, printed in serve_study_ui(uri, folder / "ui.log", "--verbose"):
        yield port, printed, folder / "ui.log"


# 3 losses x 2 starts x 4 seeds x 2 learning rates = 48 arms in 3 groups of 16, 1 epoch: the
# study tests/test_resume.py kills and reruns, and tests/test_server_claim.py runs twice at once.
# A process's cost is start-up and a trace per group (~2 s), not steps: the groups are what
# the kills need (one in each group's writes), so the budget is one epoch, compared whole.
RESUME_OVERRIDES = ["losses=[bce, mse, cce]", "seeds=[0, 1, 2, 3]", "optimizer.lr=[0.5, 4]",
                    "epochs=1"]


@pytest.fixture(scope="session")
def resume_values(tmp_path_factory):
    """RESUME_OVERRIDES's study trained once, uninterrupted (in this process: where it trains
    is not what the tests compare): arm key -> metric -> [(step, value)]."""
    from study.run import run_study
    from tests.test_resume import _values

    uri = tracking_uri(tmp_path_factory.mktemp("whole"))
    run_study(load_config(CONFIGS / "smoke.yaml", RESUME_OVERRIDES), uri, progress=False)
    values = _values(uri)
    assert len(values) == 48
    return values

# ---- pytest-xdist: `make test` runs the suite on two workers (-n 2 --dist loadgroup) ----------

# Shared fixtures cheap enough to build once per worker; any other fixture wider than a test
# (a study trained once per module, a Ray cluster, a rendered report, a browser) keeps the
# tests that use it on one worker, so it is built once.
PER_WORKER = {"tf", "digits", "smoke_config", "smoke_store", "mlflow_server", "mlflow_store",
              "configs_store", "screenshots", "one_epoch", "starts"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Group the tests that share an expensive fixture (transitively: a test using two joins
    their groups), named by one of the fixtures; the other tests are scheduled one by one."""
    if not config.pluginmanager.hasplugin("xdist"):  # its marker is unknown without it
        return
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    shared = {}
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        # a module's fixture is known by its module too: two modules may use one name
        names = sorted(f"{Path(defs[-1].baseid).stem}.{name}"
                       for name, defs in (info.name2fixturedefs.items() if info else ())
                       if defs[-1].baseid.startswith("tests")  # ours, not pytest's
                       and defs[-1].scope != "function" and name not in PER_WORKER)
        for name in names[1:]:
            parent[root(name)] = root(names[0])
        shared[item] = names
    for item, names in shared.items():
        if names and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(root(names[0])))
    # xdist schedules by a "@group" suffix of the test's id, which its own hook sets as
    # ``item._nodeid``; pytest 9 reads the id from ``item._id``, so that suffix never took
    # and every group's tests went to both workers, each building the group's fixtures
    # (seen: the kill -9 store and the examples, built twice). Set it where pytest reads it.
    if getattr(config.option, "loadgroup", False):  # set in the workers by xdist
        for item in items:
            marker = item.get_closest_marker("xdist_group")
            if marker and not item.nodeid.endswith(f"@{marker.args[0]}"):
                _suffix(item, f"@{marker.args[0]}")


def _suffix(item, suffix: str) -> None:
    if hasattr(item, "_id"):  # pytest 9: a structured id, its string given as it is
        from _pytest.nodeid import coerce_node_id

        item._id = coerce_node_id(item.nodeid + suffix)
    else:
        item._nodeid = item.nodeid + suffix
