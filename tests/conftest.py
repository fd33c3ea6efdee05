"""Shared fixtures. The suite runs in one process so TensorFlow starts once; configs are
the project's own, shrunk (lightning-hydra style) so each test trains for seconds."""

from __future__ import annotations

import os
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


def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def smoke_store(tmp_path_factory):
    """configs/smoke.yaml trained once through the CLI into a temporary store."""
    from study.cli import main

    uri = tracking_uri(tmp_path_factory.mktemp("store"))
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--tracking-uri", uri, "--quiet"]) == 0
    return uri


@pytest.fixture(scope="session")
def smoke_report(smoke_store, tmp_path_factory):
    """The smoke study's report rendered once (about 40 s): (store, out folder, HTML paths)."""
    from study.report import build_reports

    out = tmp_path_factory.mktemp("reports")
    return smoke_store, out, [path for _, path in build_reports(smoke_store, "smoke", out)]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on a free loopback port over its own SQLite store; its URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    folder = tmp_path_factory.mktemp("server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "no mlflow server"
            time.sleep(0.3)
    yield url
    import os
    import signal

    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
