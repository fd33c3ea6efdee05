"""The files under examples/, run as a user runs them: ``python -m study run`` (a real process)
into an MLflow store, then ``python -m study report`` from that store; each example's losses
must be in the report. The focal example runs from a copy outside the repository (the
user's own folder, its module beside its config); the builder example from examples/ itself.
Shrunk to one seed and one epoch: the point is the path, not the numbers."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

EXAMPLES = ROOT / "examples"
SMALL = ["--set", "epochs=1", "--set", "seeds=[0]", "--quiet"]


def _study(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "study", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="session")
def examples_report(tmp_path_factory):
    """Both examples trained into one store and reported: (store URI, reports folder)."""
    mine = tmp_path_factory.mktemp("users-folder")  # outside the repository
    for name in ("focal.yaml", "focal_loss.py"):
        shutil.copy(EXAMPLES / name, mine / name)
    uri = f"sqlite:///{mine / 'mlflow.db'}"
    _study("run", str(mine / "focal.yaml"), "--tracking-uri", uri, *SMALL)
    _study("run", "examples/builder.yaml", "--tracking-uri", uri, *SMALL)
    _study("report", "--tracking-uri", uri, "--out", str(mine / "reports"))
    return uri, mine / "reports"


FOCAL_LOSSES = ["cce", "focal", "keras_focal", "cce_logits"]


@pytest.mark.slow
def test_own_losses_train_log_and_reach_the_report(examples_report):
    uri, reports = examples_report
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("focal").experiment_id],
                              "tags.`study.arm` LIKE '%'")
    assert sorted({r.data.params["loss"] for r in runs}) == sorted(FOCAL_LOSSES)
    focal = [r for r in runs if r.data.params["loss"] == "focal"]
    assert {(r.data.params["loss.fn"], r.data.params["loss.output"],
             r.data.params["loss.targets"]) for r in focal} == {
        ("focal_loss:focal", "softmax", "one_hot")}
    summary = pd.read_csv(reports / "focal" / "summary.csv")
    assert sorted(set(summary["loss"])) == sorted(FOCAL_LOSSES)
    # every loss learns from the control start (chance is 0.1)
    control = summary[summary["init"] == "glorot"].set_index("loss")
    assert (control["median_final_val_accuracy"] > 0.3).all(), control
    answer = pd.read_csv(reports / "focal" / "answer.csv")
    html = (reports / "focal" / "report.html").read_text()
    for loss in FOCAL_LOSSES:
        assert answer.to_string().count(loss) > 0, loss
        assert html.count(loss) >= 3, loss  # tables, the answer and the figures' legends


@pytest.mark.slow
def test_own_model_trains_and_reaches_the_report(examples_report):
    uri, reports = examples_report
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("builder").experiment_id],
                              "tags.`study.arm` LIKE '%'")
    params = 64 * 32 + 32 + 32 * 10 + 10
    assert {r.data.params["model"] for r in runs} == {f"builder:build ({params} params)"}
    summary = pd.read_csv(reports / "builder" / "summary.csv")
    assert sorted(set(summary["loss"])) == ["cce", "mse"]
    html = (reports / "builder" / "report.html").read_text()
    assert html.count("mse") >= 3 and html.count("cce") >= 3
