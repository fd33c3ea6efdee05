"""The files under examples/, run as a user runs them, into one MLflow store; each example's
losses, optimizers and data must be in MLflow and reach the report. Everything runs from a
copy outside the repository (the user's own folder, a module and a relative .npz beside the
config): the image script as a real process (it is a script), every study through the CLI in
this process (the builder one from examples/ itself), the user's modules found beside their
config as a fresh process finds them (``study.plugins.add_to_path``). ``study report`` renders
the focal study's notebook, the one with the most to show (its own losses in every table and
legend); the other studies reach the report's analysis (``study.analysis.sections``, what the
notebook calls) in this process, a notebook execution each saved. Shrunk to one seed and one
epoch: the point is the path, not the numbers."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study.cli import main
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # four studies and a report
EXAMPLES = ROOT / "examples"
SMALL = ["--set", "epochs=1", "--set", "seeds=[0]", "--quiet"]


def _python(*args: str, cwd) -> subprocess.CompletedProcess:
    """This worktree's code, run from ``cwd`` (PYTHONPATH: not the installed checkout)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="session")
def examples_report(tmp_path_factory):
    """Every example trained into one store in the user's folder; the focal study reported
    by ``study report``, the others' report tables written by the analysis the notebook
    calls: (the user's home, store URI, reports folder, what the own-data study printed,
    {study: its report's title})."""
    home = tmp_path_factory.mktemp("user")  # outside the repository
    mine = home / "my-study"
    mine.mkdir()
    for name in ("focal.yaml", "focal_loss.py", "make_images_npz.py", "own_data.yaml",
                 "cosine_schedule.yaml"):
        shutil.copy(EXAMPLES / name, mine / name)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    _python("my-study/make_images_npz.py", cwd=home)
    with pytest.MonkeyPatch.context() as user:
        user.chdir(home)  # relative paths as the user typed them
        user.delenv("MLFLOW_TRACKING_URI", raising=False)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["run", "my-study/own_data.yaml", "--tracking-uri", uri,
                         "--set", "epochs=1", "--set", "seeds=[0]"]) == 0
        for config in ("my-study/focal.yaml", "my-study/cosine_schedule.yaml",
                       str(EXAMPLES / "builder.yaml")):
            assert main(["run", config, "--tracking-uri", uri, *SMALL]) == 0
        assert main(["report", "--experiment", "focal", "--tracking-uri", uri,
                     "--out", "reports"]) == 0
    titles = {study: _report_tables(uri, study, home / "reports" / study)
              for study in ("own_data", "cosine_schedule", "builder")}
    return home, uri, home / "reports", printed.getvalue(), titles


def _report_tables(uri: str, study: str, folder) -> str:
    """The report's analysis of ``study`` as its notebook runs it (load, build, write the
    tables beside the HTML): its title, the line that names the arms' data, model and
    optimizer."""
    from study.analysis import load_study, sections

    report = sections.build(load_study(uri, study))
    assert report.ok, report.problem
    folder.mkdir(parents=True)
    sections.write_tables(report, str(folder))
    return sections.title(report)


def _arms(uri: str, study: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(study).experiment_id],
                              "tags.`study.arm` LIKE '%'")


FOCAL_LOSSES = ["cce", "focal", "keras_focal", "cce_logits"]


def test_own_losses_train_log_and_reach_the_report(examples_report):
    _, uri, reports, _, _ = examples_report
    runs = _arms(uri, "focal")
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


def test_own_model_trains_and_reaches_the_report(examples_report):
    _, uri, reports, _, _ = examples_report
    params = 64 * 32 + 32 + 32 * 10 + 10
    assert {r.data.params["model"] for r in _arms(uri, "builder")} == {
        f"builder:build ({params} params)"}
    summary = pd.read_csv(reports / "builder" / "summary.csv")
    assert sorted(set(summary["loss"])) == ["cce", "mse"]
    assert f"model `builder:build ({params} params)`" in examples_report[4]["builder"]
    answer = pd.read_csv(reports / "builder" / "answer.csv")
    assert set(answer["loss"]) == {"cce", "mse"}


def test_the_script_writes_28x28_images_in_keras_layout(examples_report):
    home = examples_report[0]
    with np.load(home / "my-study" / "digits28.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert f["x_train"].shape == (1497, 28, 28) and f["x_test"].shape == (300, 28, 28)
        assert f["x_train"].dtype == np.uint8 and f["x_train"].max() == 255
        assert set(np.unique(f["y_train"])) == set(range(10))


def test_the_study_trains_on_the_file_and_mlflow_records_it(examples_report):
    home, uri, _, stdout, _ = examples_report
    assert "study 'own_data': trained 4 arms" in stdout  # 2 losses x 2 starts x 1 seed
    runs = _arms(uri, "own_data")
    assert len(runs) == 4
    for run in runs:
        assert run.data.params["dataset"] == str(home / "my-study" / "digits28.npz")
        assert run.data.params["model"] == "mlp-784-30-10-sigmoid"  # 28x28 inputs, flattened
    controls = [r.data.metrics["val_accuracy"] for r in runs
                if r.data.params["init"] == "glorot"]
    assert min(controls) > 0.5  # scaled to [0, 1], one epoch of digits learns


def test_the_report_shows_the_own_data_study(examples_report):
    home, _, reports, _, titles = examples_report
    folder = reports / "own_data"
    assert f"on `{home / 'my-study' / 'digits28.npz'}`" in titles["own_data"]
    with (folder / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {row["loss"] for row in rows} == {"cce", "mse"}


def test_the_cosine_example_names_its_optimizer_in_full(examples_report):
    """Nadam with a cosine schedule: its arms are in MLflow with the optimizer named in full
    and its clipping as a param, and in the report."""
    _, uri, reports, _, _ = examples_report
    runs = _arms(uri, "cosine_schedule")
    name = ("nadam(clipnorm=1)+cosine_decay(decay_steps=300,alpha=0.1,warmup_target=0.01,"
            "warmup_steps=20)")
    scheduled = [r for r in runs if r.data.params["optimizer"] == name]
    assert len(runs) == 2 * 2 * 3 and len(scheduled) == 2 * 2 * 2
    assert all(r.data.params["optimizer.clipnorm"] == "1.0" for r in scheduled)
    assert f"`{name}`" in examples_report[4]["cosine_schedule"]  # the report's title
    answer = pd.read_csv(reports / "cosine_schedule" / "answer.csv")
    assert name in set(answer["optimizer"])
