"""examples/make_images_npz.py and examples/own_data.yaml as a user runs them, from a folder
outside the repository: the script writes the .npz, `python -m study run` trains on it into
MLflow, `python -m study report` reports it. Shrunk to one seed and one epoch."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # three processes start TensorFlow: about a minute each here


def _python(*args: str, cwd) -> subprocess.CompletedProcess:
    """This worktree's code, run from ``cwd`` (PYTHONPATH: not the installed checkout)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="session")
def own_data_study(tmp_path_factory):
    """The user's folder (the example's two files and the .npz they make) and the store."""
    home = tmp_path_factory.mktemp("user")
    mine = home / "my-study"
    mine.mkdir()
    for name in ("make_images_npz.py", "own_data.yaml"):
        shutil.copy(ROOT / "examples" / name, mine / name)
    _python("my-study/make_images_npz.py", cwd=home)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    run = _python("-m", "study", "run", "my-study/own_data.yaml", "--set", "epochs=1",
                  "--set", "seeds=[0]", "--tracking-uri", uri, "--quiet", cwd=home)
    return home, uri, run.stdout


def test_the_script_writes_28x28_images_in_keras_layout(own_data_study):
    home, _, _ = own_data_study
    with np.load(home / "my-study" / "digits28.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert f["x_train"].shape == (1497, 28, 28) and f["x_test"].shape == (300, 28, 28)
        assert f["x_train"].dtype == np.uint8 and f["x_train"].max() == 255
        assert set(np.unique(f["y_train"])) == set(range(10))


def test_the_study_trains_on_the_file_and_mlflow_records_it(own_data_study):
    from mlflow.tracking import MlflowClient

    home, uri, stdout = own_data_study
    assert "study 'own_data': trained 4 arms" in stdout  # 2 losses x 2 starts x 1 seed
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("own_data")
    runs = [run for run in client.search_runs([experiment.experiment_id])
            if "study.arm" in run.data.tags]  # the arms' child runs
    assert len(runs) == 4
    for run in runs:
        assert run.data.params["dataset"] == str(home / "my-study" / "digits28.npz")
        assert run.data.params["model"] == "mlp-784-30-10-sigmoid"  # 28x28 inputs, flattened
    controls = [r.data.metrics["val_accuracy"] for r in runs
                if r.data.params["init"] == "glorot"]
    assert min(controls) > 0.5  # scaled to [0, 1], one epoch of digits learns


def test_the_report_shows_the_study(own_data_study):
    home, uri, _ = own_data_study
    _python("-m", "study", "report", "--tracking-uri", uri, "--out", "reports", cwd=home)
    folder = home / "reports" / "own_data"
    assert (folder / "report.html").is_file()
    with (folder / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {row["loss"] for row in rows} == {"cce", "mse"}
