"""The Ray executor against the in-process run: the same values bit for bit although the arms
train in other chunks and slots, in other processes; a worker that dies mid-chunk has its
chunk retried; a chunk that fails for good fails the study and leaves no half-written arm;
bad executor input is one line and exit 2. One local Ray cluster (2 CPUs) for the module."""

from __future__ import annotations

import os
import threading

import pytest
import ray
from mlflow.tracking import MlflowClient

from study.cli import main
from study.config import config_hash, load_config
from study.errors import ChunkFailed
from study.executors import RayExecutor, chunks, train_chunk
from study.grid import expand_grid
from study.run import run_study
from tests.conftest import CONFIGS, tracking_uri
from tests.test_resume import _statuses, _values

pytestmark = [pytest.mark.ray, pytest.mark.xdist_group("ray")]  # one cluster

# 2 starts x 8 seeds x 2 rates = 32 arms of one group, which the in-process trainer trains
# as one chunk of 32 slots and the Ray executor as 2 chunks of 16 (the control's arms, then
# the saturated start's). The high rate from the saturated start is where a rounding
# difference would grow.
OVERRIDES = ["losses=[mse]", "inits={glorot: [], saturated_wrong: [4]}",
             f"seeds={list(range(8))}", "optimizer.lr=[0.5, 8]"]
N_ARMS = 32


@pytest.fixture(autouse=True)
def cluster():
    """One local cluster (2 CPUs) for the module's tests: started by the first test, again
    after a test that leaves it, and shut down as the session ends (Ray's own atexit)."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def _config(executor: str = "local"):
    return load_config(CONFIGS / "smoke.yaml", OVERRIDES, {"executor": executor})


@pytest.fixture(scope="session")
def in_process_store(tmp_path_factory):
    """The reference: the same study trained in this process."""
    uri = tracking_uri(tmp_path_factory.mktemp("local"))
    run_study(_config(), uri, progress=False)
    return uri


@pytest.fixture(scope="session")
def in_process(in_process_store):
    """Every value the in-process run stored."""
    values = _values(in_process_store)
    assert len(values) == N_ARMS
    return values


def test_a_study_trained_in_process_resumes_on_ray_with_nothing_to_train(in_process_store):
    """Where a study trains is not part of its config hash: its finished arms count."""
    assert config_hash(_config("ray")) == config_hash(_config("local"))
    assert config_hash(_config("ray")) != config_hash(
        load_config(CONFIGS / "smoke.yaml", [*OVERRIDES, "epochs=2"], {"executor": "ray"}))
    result = run_study(_config("ray"), in_process_store, progress=False)
    assert len(result.skipped) == N_ARMS and not result.results


def test_ray_stores_the_values_of_the_in_process_run_bit_for_bit(tmp_path, in_process,
                                                                   digits, capsys):
    config = _config("ray")
    chunking = chunks(expand_grid(config), config, digits, workers=2)
    assert [len(chunk) for chunk in chunking] == [16, 16]  # not the local 1 x 32
    uri = tracking_uri(tmp_path)
    arguments = [f"--set={item}" for item in OVERRIDES]
    assert main(["run", str(CONFIGS / "smoke.yaml"), *arguments, "--executor", "ray",
                 "--tracking-uri", uri, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ray: training on this process's Ray cluster with 2 CPUs" in out
    assert f"trained {N_ARMS} arms" in out and "on Ray" in out
    stored = _values(uri)
    assert stored.keys() == in_process.keys()
    for key, histories in in_process.items():
        assert stored[key] == histories, key  # every metric, every step, every bit
    high = [k for k in stored if "saturated_wrong" in k and "lr=8" in k]
    assert high and all(len({v for _, v in stored[k]["val_accuracy"]}) > 1 for k in high)
    parents, children = _statuses(uri)
    assert parents == ["FINISHED"] and children == ["FINISHED"] * N_ARMS
    client = MlflowClient(uri)
    parent = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                "tags.`study.role` = 'parent'")[0]
    assert parent.data.params["executor"] == "ray"


@pytest.mark.slow
def test_ray_into_a_real_tracking_server_equals_the_in_process_run(mlflow_server, in_process):
    """The done-when of scaling out: a study on a (local) Ray cluster into a real `mlflow
    server`, with the values of the in-process run in a local SQLite store."""
    arguments = [f"--set={item}" for item in [*OVERRIDES, "name=ray_served"]]
    assert main(["run", str(CONFIGS / "smoke.yaml"), *arguments, "--executor", "ray",
                 "--tracking-uri", mlflow_server, "--quiet"]) == 0
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("ray_served").experiment_id],
                              "attributes.status = 'FINISHED'", max_results=1000)
    stored = {run.data.tags["study.arm"]: {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        for name in run.data.metrics} for run in runs if "study.arm" in run.data.tags}

    def by_step(values):  # a server and a SQLite store may list a history in other orders
        return {key: {name: sorted(points) for name, points in histories.items()}
                for key, histories in values.items()}

    assert by_step(stored) == by_step(in_process)


def _dies_once(marker):
    """A chunk function whose first attempt anywhere dies mid-chunk, as a killed worker does
    (no Python error, no goodbye), and never returns; later attempts train."""
    def train_or_die(config, arms):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # the first attempt only
        except FileExistsError:
            return train_chunk(config, arms)
        threading.Timer(1.0, os._exit, [1]).start()  # in the middle of training
        train_chunk(config, arms)
        os._exit(1)  # a fast chunk: still dead before its result is returned
    return train_or_die


def _fails_on(init, how):
    """A chunk function that fails on every attempt at the chunk of one init: its worker
    dies, or the training raises (which Ray does not retry: it would raise again)."""
    def train_or_fail(config, arms):
        if arms[0].init == init:
            if how == "dies":
                os._exit(1)
            raise FloatingPointError("the training raised")
        return train_chunk(config, arms)
    return train_or_fail


def test_a_worker_that_dies_mid_chunk_is_retried(tmp_path, in_process):
    marker = tmp_path / "died"
    uri = tracking_uri(tmp_path)
    result = run_study(_config("ray"), uri, progress=False,
                       executor=RayExecutor(chunk_function=_dies_once(str(marker))))
    assert marker.exists()  # a worker died, so its chunk's arms came from a retry
    assert len(result.results) == N_ARMS
    parents, children = _statuses(uri)
    assert parents == ["FINISHED"] and children == ["FINISHED"] * N_ARMS  # one run per arm
    assert _values(uri) == in_process


@pytest.mark.parametrize(("how", "reason"), [
    ("dies", "(WorkerCrashedError, after 0 retries)"),
    ("raises", "(FloatingPointError: the training raised)")])
def test_a_chunk_that_fails_for_good_fails_the_study_and_keeps_whole_chunks(
        tmp_path, in_process, how, reason):
    uri = tracking_uri(tmp_path)
    with pytest.raises(ChunkFailed) as failed:
        run_study(_config("ray"), uri, progress=False,
                  executor=RayExecutor(max_retries=0,
                                       chunk_function=_fails_on("saturated_wrong", how)))
    message = str(failed.value)
    assert "\n" not in message
    assert f"a chunk of 16 arms (mse, sgd) failed on Ray {reason}" in message
    parents, children = _statuses(uri)
    assert parents == ["FAILED"]
    assert set(children) <= {"FINISHED"} and len(children) % 16 == 0  # whole chunks only
    stored = _values(uri)
    assert all("|glorot:" in key for key in stored)
    for key, histories in stored.items():
        assert histories == in_process[key], key


BAD = [
    (["--executor", "slurm"], "executor: must be one of: 'local' or 'ray'"),
    (["--address", "10.0.0.5:6379"],
     "ray_address only applies to executor ray (--executor ray)"),
    (["--executor", "ray", "--address", "head"], "'head' is not a Ray address: use host:port"),
    (["--executor", "ray", "--set", "ray_address=[1]"], "ray_address: Input should be a valid "
                                                        "string, got [1]"),
]


@pytest.mark.parametrize(("arguments", "message"), BAD)
def test_bad_executor_input_is_one_line_and_exit_2(tmp_path, capsys, arguments, message):
    db = tmp_path / "mlflow.db"
    code = main(["run", str(CONFIGS / "smoke.yaml"), *arguments, "--tracking-uri",
                 f"sqlite:///{db}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err, err
    assert not db.exists()  # nothing written


def test_without_ray_installed_it_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray fails
    db = tmp_path / "mlflow.db"
    code = main(["run", str(CONFIGS / "smoke.yaml"), "--executor", "ray", "--tracking-uri",
                 f"sqlite:///{db}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "executor ray needs Ray, which is not installed: pip install -e '.[ray]'" in err
    assert not db.exists()


def test_a_users_own_loss_from_the_config_folder_trains_on_ray_workers(tmp_path, capsys):
    """The workers import the user's module from the folder the CLI put on this process's
    import path (the config's): they store what the in-process run stores."""
    folder = tmp_path / "my-study"
    folder.mkdir()
    (folder / "ray_user_loss.py").write_text(
        "from keras import ops\n\n"
        "def half_squares(y_true, y_pred):\n"
        "    return 0.5 * ops.sum(ops.square(y_pred - y_true), axis=-1)\n")
    loss = '{name: half_squares, fn: "ray_user_loss:half_squares", output: sigmoid, ' \
           'targets: one_hot}'
    (folder / "own.yaml").write_text((CONFIGS / "smoke.yaml").read_text())
    stores = {}
    for executor in ("ray", "local"):
        stores[executor] = tracking_uri(tmp_path / executor)
        (tmp_path / executor).mkdir()
        assert main(["run", str(folder / "own.yaml"), f"--set=losses=[{loss}]",
                     "--set=inits={saturated_wrong: [4]}", "--executor", executor,
                     "--tracking-uri", stores[executor], "--quiet"]) == 0, \
            capsys.readouterr().err
    ray_values, local_values = _values(stores["ray"]), _values(stores["local"])
    assert len(ray_values) == 1 and ray_values == local_values


def test_a_cluster_address_where_nothing_listens_fails_in_seconds(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "mlflow.db"
    # An address matters only to a process that has not joined a cluster: this test leaves
    # the module's cluster, so it comes last (a new cluster's workers start TensorFlow again).
    ray.shutdown()
    code = main(["run", str(CONFIGS / "smoke.yaml"), "--executor", "ray", "--address",
                 f"127.0.0.1:{port}", "--tracking-uri", f"sqlite:///{db}", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused)" in err
    assert not db.exists()
