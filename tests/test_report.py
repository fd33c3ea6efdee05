"""The report, end to end: the main notebook executed by papermill on the smoke study's
store, exported to HTML, with the summary table and every figure; logged on the parent."""

from __future__ import annotations

import pandas as pd
import pytest

from study.cli import main


@pytest.fixture(scope="module")
def report(smoke_report):  # rendered once per session, shared with test_browser
    return smoke_report


def test_report_html_holds_the_answer_table_and_figures(report):
    _, out, paths = report
    assert paths == [out / "smoke" / "report.html"]
    html = paths[0].read_text()
    assert "The answer" in html
    assert "From saturated_wrong m=4 to val_accuracy 0.5," in html  # between losses first
    assert "(one seed: no interval)" in html  # the smoke study has one seed: no CIs
    assert "From saturated_wrong m=4, reaching val_accuracy 0.5 takes" in html  # then slowdowns
    assert "median steps [95% CI]" in html and "slowdown vs its control [95% CI]" in html
    assert html.count('src="data:image/png;base64') == 7  # figures embedded
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html  # no warnings
    # the start x loss table opens the answer, before any figure
    answer = html[html.index('id="The-answer"'):html.index('id="Losses-that-are-the-same')]
    assert "<table" in answer and ">saturated_wrong m=4</th>" in answer
    assert all(f">{loss}</th>" in answer for loss in ["bce", "cce", "scce", "mse"])
    assert 'href="#Appendix"' in html and 'id="Appendix"' in html  # contents, appendix


def test_saved_figures_are_the_ones_the_report_shows(report):
    """Each figure is drawn once, by the notebook; the PNG files are its own outputs."""
    import base64

    _, out, paths = report
    html = paths[0].read_text()
    for png in (out / "smoke" / "figures").iterdir():
        assert base64.b64encode(png.read_bytes()).decode() in html, png.name


def test_summary_covers_every_loss_and_start(report):
    _, out, _ = report
    summary = pd.read_csv(out / "smoke" / "summary.csv")
    cells = set(zip(summary["loss"], summary["init"], summary["severity"], strict=True))
    assert cells == {(loss, init, sev) for loss in ["bce", "cce", "scce", "mse"]
                     for init, sev in [("glorot", 0.0), ("saturated_wrong", 4.0)]}
    assert {"median_steps", "steps_ci_low", "steps_ci_high", "km_median_steps",
            "slowdown"} <= set(summary.columns)
    figures = sorted(p.name for p in (out / "smoke" / "figures").iterdir())
    assert figures == sorted(f"{name}.png" for name in [
        "answer_by_level", "learning_curves_accuracy", "learning_curves_nll",
        "steps_to_target", "kaplan_meier", "grad_norm_early", "performance_profile"])


def test_answer_and_crossings_tables_sit_beside_the_report(report):
    """answer.csv: every start, loss, level and rule; crossings.csv: every arm and level."""
    _, out, _ = report
    answer = pd.read_csv(out / "smoke" / "answer.csv")
    assert list(answer.columns) == [
        "start", "loss", "optimizer", "level", "lr_rule", "lr", "lr_tied", "ratio", "ci_low",
        "ci_high", "bound", "censored", "n_seeds", "ratio_low", "ratio_high"]
    assert set(answer["lr_rule"]) == {"tuned_on_control", "best_for_start"}
    assert set(answer["start"]) == {"glorot", "saturated_wrong m=4"}
    assert answer["n_seeds"].eq(1).all() and answer["ci_low"].isna().all()  # one seed
    fastest = answer.groupby(["start", "level", "lr_rule"])["ratio"].min()
    assert (fastest == 1.0).all()  # each start and level has its fastest loss at 1
    crossings = pd.read_csv(out / "smoke" / "crossings.csv")
    assert list(crossings.columns) == ["arm", "level", "step", "censored"]
    assert 0.5 in set(crossings["level"])  # target = escape = 0.5
    assert len(crossings) == 8 * crossings["level"].nunique()  # every arm at every level


def test_report_is_logged_on_the_parent_run(report):
    from mlflow.tracking import MlflowClient

    uri, _, _ = report
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    parent = client.search_runs([experiment.experiment_id],
                                filter_string="tags.`study.role` = 'parent'")[0]
    logged = {f.path for f in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.html", "report/summary.csv", "report/figures"} <= logged


def test_report_of_an_unknown_experiment_exits_2(smoke_store, tmp_path, capsys):
    code = main(["report", "--experiment", "nope", "--tracking-uri", smoke_store,
                 "--out", str(tmp_path)])
    assert code == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_notebooks_are_stored_without_outputs():
    import nbformat

    from study.report import NOTEBOOKS

    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [n.name for n in notebooks] == ["neuron.ipynb", "report.ipynb"]
    for path in notebooks:
        cells = nbformat.read(path, as_version=4).cells
        code = [c for c in cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert "parameters" in code[0].metadata.get("tags", [])  # papermill's injection point
