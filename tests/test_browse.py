"""The link and the saved views behind it, without a browser (tests/test_browser.py opens
them in Chromium): run names, tags, the view's filter, the port in the printed link, the
report's notes in the store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from study import browse, plots
from study.cli import main
from study.grid import Arm
from tests.conftest import CONFIGS

SMOKE = str(CONFIGS / "smoke.yaml")


def test_run_name_is_short_and_says_loss_start_seed_and_lr():
    arm = Arm("saturated_wrong", 8.0, 3, "sgd", 32.0, "mse")
    assert browse.run_name(arm) == "mse · saturated_wrong m=8 · s3 · lr 32"
    assert browse.run_name(Arm("glorot", 0.0, 0, "adam", 0.001, "cce"), with_optimizer=True) \
        == "cce · adam · glorot · s0 · lr 0.001"


@pytest.mark.parametrize("init, severity", [("glorot", 0.0), ("scaled", 4.0),
                                            ("saturated_wrong", 8.0), ("large_normal", 0.0)])
def test_start_label_is_the_reports_start_name(init, severity):
    from study.analysis import start_name

    assert browse.start_label(init, severity) == start_name(init, severity)


def test_the_link_opens_the_worst_start_of_the_first_saturating_family():
    # configs/default.yaml's starts, in grid order: scaled comes first, but the stall the
    # study is about is saturated_wrong's, and its worst start is m=8
    starts = [("glorot", 0.0), ("scaled", 2.0), ("scaled", 4.0), ("saturated_wrong", 0.0),
              ("saturated_wrong", 2.0), ("saturated_wrong", 8.0), ("saturated_wrong", 4.0),
              ("large_normal", 0.0)]
    assert browse.default_start(starts) == ("saturated_wrong", 8.0)
    # no saturating family: the worst start of the first other family
    assert browse.default_start([("glorot", 0.0), ("scaled", 4.0), ("scaled", 2.0),
                                 ("large_normal", 0.0)]) == ("scaled", 4.0)
    assert browse.default_start([("glorot", 0.0)]) == ("glorot", 0.0)
    assert browse.view_key("saturated_wrong m=8") == "saturated_wrong-m8"


def test_a_loss_that_is_anothers_update_exactly_is_folded_into_it():
    assert browse.folded_losses(["bce", "cce", "scce", "mse", "quadratic"]) == {"scce": "cce"}
    assert browse.folded_losses(["scce", "mse"]) == {}  # nothing to fold it into
    # mse is quadratic's update only up to the rate (2/C): both stay
    assert browse.folded_losses(["mse", "quadratic"]) == {}
    assert browse.view_name("glorot", {"scce": "cce"}) == \
        "losses from glorot; scce = cce, not drawn"


def test_best_lr_is_known_at_training_only_with_one_rate_per_loss():
    one = [Arm("glorot", 0.0, 0, "sgd", lr, loss) for loss, lr in [("bce", 16.0), ("cce", 1.0)]]
    grid = one + [Arm("glorot", 0.0, 0, "sgd", 2.0, "cce")]
    assert browse.one_rate_per_loss(one) and not browse.one_rate_per_loss(grid)
    assert browse.arm_tags(one[0], True)["study.best_lr"] == "true"
    assert "study.best_lr" not in browse.arm_tags(one[0], None)
    assert browse.arm_tags(one[0], True)["mlflow.runColor"] == plots.LOSS_STYLE["bce"]["color"]


def test_saved_view_is_mlflows_envelope_around_the_filter_columns_and_charts():
    state = browse.view_state(browse.comparison_filter("saturated_wrong m=8", True, "abc",
                                                       {"scce": "cce"}))
    envelope = json.loads(browse.saved_view("losses from saturated_wrong m=8", state))
    assert {"name", "createdAt", "updatedAt", "state"} <= set(envelope)
    assert json.loads(envelope["state"]) == state
    assert state["searchFilter"] == ("tags.start = 'saturated_wrong m=8' and "
                                     "tags.`study.best_lr` = 'true' and "
                                     "tags.`study.config_hash` = 'abc' and "
                                     "params.loss != 'scce'")
    # val_accuracy first; the charts drawn are the first section's, the others' are folded
    shown = state["compareRunSections"][0]["uuid"]
    assert [chart["metricKey"] for chart in state["compareRunCharts"]
            if chart["metricSectionId"] == shown] == list(browse.METRICS)
    assert [section["display"] for section in state["compareRunSections"]] == [True, False]
    # MLflow's RunsGroupByConfig: a line per loss, aggregated over its runs
    assert state["groupBy"] == {"aggregateFunction": "average", "groupByKeys": [
        {"mode": "param", "groupByData": "loss"}]}
    assert state["useGroupedValuesInCharts"] is True
    # rates not picked yet: a line per loss and rate, none mixing rates
    assert [key["groupByData"] for key in browse.view_state("", best_lr=False)["groupBy"][
        "groupByKeys"]] == ["loss", "lr"]
    assert {"params.`loss`", "tags.`start`", "params.`lr`", "params.`seed`",
            "params.`optimizer`"} <= set(state["selectedColumns"])


def test_link_takes_the_port_and_a_servers_own_url(monkeypatch):
    monkeypatch.delenv("PORT", raising=False)
    assert browse.view_link("sqlite:///x.db", "3", "k").startswith(
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning")
    monkeypatch.setenv("PORT", "5123")
    assert browse.view_link("sqlite:///x.db", "3", "k").endswith("viewStateShareKey=k")
    assert browse.view_link("sqlite:///x.db", "3").startswith("http://127.0.0.1:5123/")
    assert browse.view_link("sqlite:///x.db", "3", port=6000).startswith(
        "http://127.0.0.1:6000/")
    assert browse.view_link("http://tracker:8080/", "3").startswith(
        "http://tracker:8080/#/experiments/3/runs")


def test_run_prints_the_link_with_the_given_port(smoke_piped_run, capsys):
    assert main(["run", SMOKE, "--tracking-uri", smoke_piped_run[0], "--quiet", "--port",
                 "5123"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("browse it:")][0]
    assert line.startswith("browse it: make ui PORT=5123, then open http://127.0.0.1:5123/#/")
    assert line.endswith("&viewStateShareKey=saturated_wrong-m4")


@pytest.mark.parametrize("argv, message", [
    (["run", SMOKE, "--port", "http"], "is not a port"),
    (["ui", "--port", "70000"], "is not a port"),
    (["ui", "--tracking-uri", "http://127.0.0.1:1"], "is a tracking server already"),
    (["ui", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"], "no MLflow store at"),
])
def test_bad_ui_input_is_one_line_and_exit_2(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own check of --port
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and message in err[-1]


def test_report_writes_the_answer_and_filters_on_the_parent(smoke_report):
    from mlflow.tracking import MlflowClient

    from study.markup import md_text

    uri = smoke_report[0]
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    parent = client.search_runs([experiment.experiment_id],
                                "tags.`study.role` = 'parent'")[0]
    note = parent.data.tags["mlflow.note.content"]
    # Markdown source: the sentence's punctuation escaped (study.markup), shown as typed
    assert md_text("From saturated_wrong m=4 to val_accuracy 0.5,") in note  # the answer
    assert "tags.start = 'saturated_wrong m=4' and tags.`study.best_lr` = 'true'" in note
    runs = client.search_runs([experiment.experiment_id], "tags.start = 'saturated_wrong m=4' "
                              "and tags.`study.best_lr` = 'true'")
    assert sorted(run.data.params["loss"] for run in runs) == ["bce", "cce", "mse", "scce"]


def test_report_tags_each_losss_best_rate_of_a_grid(tmp_path):
    """With a grid of rates the pick is the report's: its arms get study.best_lr true, the
    others false, and the saved views filter by it."""
    from mlflow.tracking import MlflowClient

    from study.report import _annotate_store

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("grid")
    parent = client.create_run(experiment_id).info.run_id
    rows = []
    for loss, lr, steps in [("bce", 1.0, 50), ("bce", 8.0, 20), ("mse", 1.0, 90),
                            ("mse", 8.0, 200)]:
        run_id = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
        rows.append({"run_id": run_id, "loss": loss, "condition": loss, "optimizer": "sgd",
                     "lr": lr, "init": "glorot", "severity": 0.0, "time": steps,
                     "final_val_nll": 0.5})
    study = SimpleNamespace(parent_run_id=parent, config_hash="abc", target=0.9, lr_band=2.0)
    report = SimpleNamespace(all_arms=pd.DataFrame(rows), answer=pd.DataFrame(
        columns=["init", "severity", "level", "lr_rule"]))
    _annotate_store(client.tracking_uri, study, report, tmp_path / "report.html")
    best = {(r["loss"], r["lr"]): client.get_run(r["run_id"]).data.tags["study.best_lr"]
            for r in rows}
    assert best == {("bce", 1.0): "false", ("bce", 8.0): "true", ("mse", 1.0): "true",
                    ("mse", 8.0): "false"}
    view = client.get_experiment(experiment_id).tags["mlflow.sharedViewState.glorot"]
    assert "tags.`study.best_lr` = 'true'" in json.loads(json.loads(view)["state"])[
        "searchFilter"]
