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
