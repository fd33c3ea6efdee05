"""What a user sees, in a real Chromium: the link `python -m study ui` prints opens the
study's comparison in a real `mlflow ui` (not MLflow 3's GenAI overview), and the report's
HTML renders. This is the test that fails when a new MLflow stops reading the saved-view
shape study/browse.py writes; it needs /usr/bin/chromium (`make test` installs it) and is
never skipped."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from study.palette import colour
from tests.conftest import ROOT

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium reaches out to Google at start-up, which a
# closed network refuses; headless needs no sandbox or GPU in a container.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LOSSES = ["bce", "cce", "scce", "mse"]  # configs/smoke.yaml's; the views fold scce into cce
BAD_START = "saturated_wrong m=4"  # its first bad start: the link's
WAIT_MS = 30_000


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), \
        f"no {CHROMIUM}: `make test` installs it (apt-get install -y chromium)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots():
    """What the browser saw, kept for a look after the run (reports/ is not committed)."""
    folder = ROOT / "reports" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="session")
def printed_link(smoke_study_ui):
    """`python -m study ui` on a free loopback port over the smoke study's store (the session's
    server, tests/conftest.py): the link it prints for the study, once the server answers."""
    port, printed, _ = smoke_study_ui
    return port, _link(printed, "smoke")


# configs/default.yaml shrunk, starts in the same order (scaled before saturated_wrong):
DEFAULT_LOSSES = ["bce", "cce", "scce", "mse"]  # scce is cce's update: folded
DEFAULT_SHRUNK = {"losses": DEFAULT_LOSSES, "seeds": [0, 1], "epochs": 1, "lr_band": None,
                  "inits": {"glorot": [], "scaled": [2], "saturated_wrong": [0, 8]},
                  "optimizers": [{"name": "sgd", "lr": {"bce": 16, "cce": 1, "scce": 1,
                                                        "mse": 32}}]}


@pytest.fixture(scope="session")
def default_link(default_study_ui_verbose):
    """configs/default.yaml shrunk (4 losses, 4 starts, 2 seeds, 1 epoch: 32 arms), trained
    through the CLI, then `python -m study ui` over its store (the session's server, with
    its access log: tests/test_cli_output.py reads it): the link it prints."""
    port, printed, _ = default_study_ui_verbose
    return port, _link(printed, "default")


def _link(printed: list[str], study: str) -> str:
    first = printed[0]
    assert first.startswith(f"study '{study}': "), printed
    return first.removeprefix(f"study '{study}': ").strip()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(url)
    return page


def _child_name(loss: str) -> str:
    return f"{loss} · {BAD_START} · s0 · lr 0.5"


def test_printed_link_has_the_port_and_the_saved_view(printed_link):
    port, link = printed_link
    assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/")
    assert "/runs?workflowType=machine_learning" in link
    assert "viewStateShareKey=saturated_wrong-m4" in link


def test_link_opens_each_loss_from_the_bad_start_charted(browser, printed_link, screenshots):
    _, link = printed_link
    page = _open(browser, link)
    try:
        # the runs page, filtered by the saved view: the children, named (scce folded)
        for loss in [loss for loss in LOSSES if loss != "scce"]:
            page.get_by_text(_child_name(loss), exact=True).first.wait_for(timeout=WAIT_MS)
        assert "/runs" in page.url  # not redirected to the GenAI overview
        search = _search_box(page)
        assert f"tags.start = '{BAD_START}'" in search
        assert "`study.best_lr` = 'true'" in search
        assert page.get_by_text(re.compile(r"^3 matching runs$")).count() == 1  # scce folded

        # the table view of the same saved view shows the study's columns
        # the view-mode radio is styled away under its label: click it as a script would
        page.locator("input[value=TABLE]").evaluate("radio => radio.click()")
        for column in ["loss", "start", "optimizer", "lr", "seed"]:
            page.get_by_role("columnheader", name=column, exact=True).first.wait_for(
                timeout=WAIT_MS)
        page.screenshot(path=screenshots / "mlflow-runs-table.png")
    finally:
        page.close()


def _search_box(page) -> str:
    return page.get_by_test_id("search-box").evaluate(
        "box => box.value ?? box.querySelector('input').value")


def test_default_link_opens_saturated_wrong_m8_a_line_per_loss_with_a_key(
        browser, default_link, screenshots):
    """The shrunk default study's link: its worst saturated_wrong start, runs grouped by
    loss, one aggregated line per loss (scce folded into cce, the view's name says so), a
    key naming each loss, val_accuracy first."""
    port, link = default_link
    assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/")
    assert "viewStateShareKey=saturated_wrong-m8" in link
    drawn = [loss for loss in DEFAULT_LOSSES if loss != "scce"]
    page = _open(browser, link)
    try:
        started = time.monotonic()
        cards = page.get_by_test_id("experiment-view-compare-runs-card")
        cards.first.locator("path.js-line").first.wait_for(timeout=4 * WAIT_MS)
        print(f"\nfirst chart line after {time.monotonic() - started:.1f} s")
        assert "workflowType=machine_learning" in page.url and "/runs" in page.url
        assert "tags.start = 'saturated_wrong m=8'" in _search_box(page)
        assert "params.loss != 'scce'" in _search_box(page)
        page.get_by_text("losses from saturated_wrong m=8; scce = cce, not drawn").first \
            .wait_for(timeout=WAIT_MS)  # the view menu names the view and the fold
        page.get_by_text("Group by: loss", exact=True).first.wait_for(timeout=WAIT_MS)
        for loss in drawn:  # a group row per loss, its two seeds in it
            page.get_by_text(f"Group: {loss}", exact=True).first.wait_for(timeout=WAIT_MS)
        assert page.get_by_text("Group: scce", exact=True).count() == 0

        titles = [cards.nth(i).locator("h4").first.inner_text() for i in range(2)]
        assert titles == ["val_accuracy", "val_nll"]
        page.wait_for_timeout(2000)  # every group's line
        accuracy = cards.nth(0)
        key = re.findall(r"^(\S+) \(val_accuracy\)$", accuracy.inner_text(), re.MULTILINE)
        assert key == drawn  # the key: one entry per loss, named by it, nothing else
        strokes = set(accuracy.locator("path.js-line").evaluate_all(
            "lines => lines.map(line => line.style.stroke)"))
        # each loss's line and band in the report's colour (study.ui_app sets the groups');
        # MLflow draws a black path beside the series, whatever their number
        assert strokes - {"rgb(0, 0, 0)"} == {_rgb(colour(loss)) for loss in drawn}, strokes
        # the Assistant panel is not open (MLflow opens it on a first visit otherwise)
        assert page.evaluate("localStorage.getItem('mlflow.assistant.panelOpen_v1')") == "false"
        assert not page.get_by_role("button", name="Close").count()
        page.screenshot(path=screenshots / "mlflow-runs-by-loss.png")

        # another start from the view menu: still the model-training runs view, charted
        page.get_by_test_id("saved-views-trigger").click()
        page.get_by_text("losses from scaled k=2; scce = cce, not drawn", exact=True).first \
            .click()
        page.wait_for_url(re.compile(r"viewStateShareKey=scaled-k2"), timeout=WAIT_MS)
        cards.first.locator("path.js-line").first.wait_for(timeout=4 * WAIT_MS)
        assert "/runs" in page.url and "compareRunsMode=CHART" in page.url, page.url
        assert "tags.start = 'scaled k=2'" in _search_box(page)
        assert page.evaluate("localStorage.getItem('mlflow.workflowType_v1')") \
            == '"machine_learning"'
        page.get_by_text("Group: mse", exact=True).first.wait_for(timeout=WAIT_MS)
        page.screenshot(path=screenshots / "mlflow-runs-view-menu.png")
    finally:
        page.close()


def _rgb(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def test_a_users_own_choices_in_the_browser_are_kept(browser, default_link):
    """study.ui_app fills in what the browser holds no choice for, and keeps what it does: a
    group colour picked by hand, the GenAI workflow, an open Assistant panel."""
    port, _ = default_link
    context = browser.new_context()
    mine = {"experimentRunColors": {"param.loss.cce": "#123456"},
            "mlflow.workflowType_v1": "genai", "mlflow.assistant.panelOpen_v1": True}
    # set before any script of the page runs, as a browser that was here before holds them
    context.add_init_script(
        "if (!sessionStorage.getItem('seeded')) { sessionStorage.setItem('seeded', '1');"
        f"for (const [k, v] of Object.entries({json.dumps(mine)}))"
        " localStorage.setItem(k, JSON.stringify(v)); }")
    page = context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        held = page.evaluate("Object.fromEntries(Object.entries(localStorage))")
        colours = json.loads(held["experimentRunColors"])
        assert colours["param.loss.cce"] == "#123456"  # the user's, kept
        assert colours["param.loss.mse"] == colour("mse")  # a group they never coloured
        assert json.loads(held["mlflow.workflowType_v1"]) == "genai"
        assert json.loads(held["mlflow.assistant.panelOpen_v1"]) is True
    finally:
        context.close()


def test_the_page_script_escapes_loss_names():
    """A user's loss name reaches the page inside a script: it cannot close it."""
    from study.ui_app import inject, page_script

    name = "</script><script>alert(1)</script>&"
    script = page_script(["cce", name])
    assert script.count("</script>") == 1 and "<script>" == script[:8]
    assert "alert(1)" in script and "<script>alert" not in script
    data = json.loads(script[script.index("})(") + 3:script.rindex(");</script>")])
    assert data["experimentRunColors"][f"param.loss.{name}"] == colour(name)
    page = inject(b"<!doctype html><html><head><title>MLflow</title></head></html>", script)
    assert page.startswith(b"<!doctype html><html><head><script>")


def test_report_renders_title_answer_table_and_figures(browser, smoke_report, screenshots):
    _, _, paths = smoke_report
    page = _open(browser, paths[0].as_uri())
    try:
        page.wait_for_load_state("load")
        assert "loss" in page.locator("h1").first.inner_text().lower()  # the title
        # an answer table near the top: before the first figure
        tables, figures = page.locator("table"), page.locator("img")
        assert tables.count() >= 1
        assert tables.first.bounding_box()["y"] < figures.first.bounding_box()["y"]
        widths = figures.evaluate_all("images => images.map(image => image.naturalWidth)")
        assert sum(width > 0 for width in widths) >= 4, widths  # figures that decoded
        page.screenshot(path=screenshots / "report.png", full_page=False)
    finally:
        page.close()


# ---- hostile names: shown as text, never run ------------------------------------------------

LABELS = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]
HOSTILE_NAME = "x`<b>bold</b>`` <script>alert(3)</script> y"  # renamed in MLflow


@pytest.fixture(scope="session")
def hostile_report(tmp_path_factory):
    """configs/smoke.yaml shrunk to one loss under two optimizers labelled with markup (4
    arms, one epoch), trained, its experiment then renamed in MLflow to a name with a
    backtick and tags, and reported: (store, parent run id, HTML path)."""
    import yaml
    from mlflow.tracking import MlflowClient

    from study.cli import main
    from study.report import build_reports

    folder = tmp_path_factory.mktemp("hostile")
    config = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    config.pop("optimizer")
    config.update(name="hostile", losses=["cce"], optimizers=[
        {"name": "sgd", "lr": 0.5, "label": LABELS[0]},
        {"name": "sgd", "lr": 0.5, "momentum": 0.5, "label": LABELS[1]}])
    (folder / "hostile.yaml").write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert main(["run", str(folder / "hostile.yaml"), "--tracking-uri", uri, "--quiet"]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("hostile")
    client.rename_experiment(experiment.experiment_id, HOSTILE_NAME)
    [(_, html)] = build_reports(uri, HOSTILE_NAME, folder / "reports")
    parent = client.search_runs([experiment.experiment_id],
                                "tags.`study.role` = 'parent'")[0]
    return uri, parent.info.run_id, html


def test_hostile_names_show_as_text_and_never_run(browser, hostile_report, screenshots):
    _, _, html = hostile_report
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    try:
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        page.wait_for_timeout(1000)  # any onerror handler has fired by now
        text = " ".join(page.locator("body").inner_text().split())
        assert dialogs == []
        assert f"Study {HOSTILE_NAME}: 4 arms" in text  # the title's code span, whole
        for label in LABELS:
            assert f"cce · {label}" in text  # the answer table and the sentences
            assert text.count(label) >= 4, label
        assert page.locator("b", has_text="bold").count() == 0
        assert page.locator("img[src=x]").count() == 0
        scripts = page.locator("script").evaluate_all("all => all.map(s => s.text)")
        assert not any("alert(" in script for script in scripts)
        page.screenshot(path=screenshots / "report-hostile-names.png")
    finally:
        page.close()


def test_hostile_names_are_escaped_in_the_parent_runs_note(hostile_report):
    """The parent run's description, which MLflow's UI renders as Markdown."""
    from mlflow.tracking import MlflowClient

    from study.markup import md_text

    uri, parent_run_id, _ = hostile_report
    note = MlflowClient(uri).get_run(parent_run_id).data.tags["mlflow.note.content"]
    assert "<script>" not in note and "<img" not in note
    assert all(md_text(f"cce · {label}") in note for label in LABELS)
