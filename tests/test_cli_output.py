"""What the commands print: a study's progress in a log is a few lines, not bar redraws;
`show` is a summary first; `ui` prints no access log unless asked; `report` says its stage
and keeps the executed notebook beside its HTML, ready to re-run."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from study.cli import main
from study.progress import MAX_GAP_S, MIN_GAP_S, Lines, duration

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Log:
    def __init__(self):
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _simulate(total: int, seconds: float, updates: int) -> list[str]:
    """A job of ``total`` units done in ``updates`` equal steps over ``seconds``, with the
    writer's postfix set between them, as a study does."""
    clock, log = Clock(), Log()
    with Lines(total, "study", "arm", log, clock) as lines:
        for i in range(updates):
            clock.now = seconds * (i + 1) / updates
            lines.update(total / updates)
            lines.set_postfix_str(f"{i} stored")
    assert "\r" not in log.text
    return log.text.splitlines()


@pytest.mark.parametrize("total, seconds, updates", [
    (8, 30, 8), (1140, 210, 4000), (1140, 3600, 4000), (100_000, 8 * 3600, 50_000)])
def test_lines_are_a_tenth_at_a_time_however_big_the_study(total, seconds, updates):
    lines = _simulate(total, seconds, updates)
    # a line per tenth at most, one at least every MAX_GAP_S, and the last one
    assert len(lines) <= 9 + seconds // MAX_GAP_S + 1
    assert lines[-1].startswith(f"study: {total:,}/{total:,} arms in {duration(seconds)}")
    if seconds >= 10 * MIN_GAP_S:  # long enough for every tenth to get its line
        assert len(lines) >= 10


def test_a_line_says_the_share_done_and_the_time_left_at_the_recent_rate():
    clock, log = Clock(), Log()
    lines = Lines(200, "report", "cell", log, clock)
    clock.now = 5.0
    lines.update(19)  # 9.5%: no tenth crossed yet
    clock.now = 8.0
    lines.update(21)  # 20% after 8 s: a tenth crossed, but under MIN_GAP_S since the start
    assert log.text == ""
    clock.now = 100.0
    lines.set_postfix_str("37 stored")
    lines.update(60)  # half of it: the first line, no rate known beyond start-up
    clock.now = 150.0
    lines.update(50)  # 25% more in 50 s: the last 25% takes 50 s at that rate
    clock.now = 154.0
    lines.update(20)  # 85%: a tenth crossed, 4 s after the last line
    lines.close()  # stopped short (Ctrl-C, an error): the caller's line says why
    assert log.text.splitlines() == [
        "report: 100/200 cells (50%), 1 min 40 s so far, 37 stored",
        "report: 150/200 cells (75%), 2 min 30 s so far, about 50 s left, 37 stored"]


def test_an_outage_gets_a_line_at_once_then_one_per_gap_while_it_lasts():
    """A store that stops answering is said in the log when it happens, not with the next
    tenth of the work (which may come after the study has trained everything)."""
    clock, log = Clock(), Log()
    lines = Lines(32, "brief", "arm", log, clock)
    clock.now = 2.0
    lines.update(8)  # a tenth crossed, but under MIN_GAP_S since the start: no line
    lines.set_postfix_str("8 stored")
    for second in range(3, 3 + 15):  # the writer hears every second of the outage
        clock.now = float(second)
        lines.alert(f"store unreachable, retrying ({second - 3} s of 120 s)")
    clock.now = 18.0
    lines.set_postfix_str("9 stored")  # back: counting again, shown with the next line
    lines.update(24)
    lines.close()
    assert log.text.splitlines() == [
        "brief: 8/32 arms (25%), 3 s so far, store unreachable, retrying (0 s of 120 s)",
        "brief: 8/32 arms (25%), 13 s so far, store unreachable, retrying (10 s of 120 s)",
        "brief: 32/32 arms in 18 s, 9 stored"]


@pytest.mark.slow
def test_a_piped_run_logs_a_few_lines_not_bar_redraws(smoke_piped_run):
    _, log = smoke_piped_run
    assert "\r" not in log  # no redraws
    lines = log.splitlines()
    # the size, a line per tenth at most, the last progress line, the four closing lines
    assert len(lines) <= 1 + 10 + 4, log
    assert lines[0].startswith("study: 8 arms x 107 steps")
    assert any(line.startswith("smoke: 8/8 arms in ") and line.endswith("8 stored")
               for line in lines), log
    assert lines[-4].startswith("study 'smoke': trained 8 arms in ")


def test_show_prints_a_summary_and_the_arms_only_when_asked(capsys):
    assert main(["show", str(CONFIGS / "default.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("study 'default': 1,140 arms on digits, 15 epochs at batch size 10, "
                      "optimizer sgd")
    # hand-counted from default.yaml: 10 seeds; each loss at its own rate, and at /2 and
    # x2 from the controls (glorot, saturated_wrong m=0) and each family's worst start
    table = {line[:19].strip(): line[19:].split() for line in out[2:11]}
    assert out[1].split() == ["start", "bce", "cce", "scce", "mse", "mse_softmax",
                              "quadratic"]  # the config's order
    assert table == {"glorot": ["30"] * 6, "scaled k=2": ["10"] * 6,
                     "scaled k=4": ["30"] * 6, "saturated_wrong m=0": ["30"] * 6,
                     "saturated_wrong m=2": ["10"] * 6, "saturated_wrong m=4": ["10"] * 6,
                     "saturated_wrong m=6": ["10"] * 6, "saturated_wrong m=8": ["30"] * 6,
                     "large_normal": ["30"] * 6}
    assert 5 * 30 * 6 + 4 * 10 * 6 == 1140  # the table adds up to the arms
    # 107 updates an epoch at batch 10 (smoke.yaml's one epoch), 15 epochs; the time and the
    # store are the estimate `run` prints before it starts
    assert out[12].startswith("1,140 arms x 1,605 steps, about ") and "MB of MLflow store" \
        in out[12]
    assert out[13:] == ["--arms lists every arm"]

    assert main(["show", str(CONFIGS / "default.yaml"), "--arms"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[:13] == out[:13]
    keys = [line for line in listed if "|seed=" in line]
    assert len(keys) == 1140 and "cce|saturated_wrong:8|seed=9|sgd|lr=2" in "\n".join(keys)


def _browse(port: int) -> None:
    """Fetch a few pages of the UI on ``port``: each request is in the access log, if any,
    before its answer is read (uvicorn logs a request as it starts the response)."""
    for page in ["/health", "/", "/ajax-api/2.0/mlflow/experiments/search?max_results=10",
                 "/static-files/favicon.ico"]:
        urllib.request.urlopen(f"http://127.0.0.1:{port}{page}", timeout=30).read()


@pytest.mark.slow
def test_ui_prints_no_access_log_unless_verbose(smoke_study_ui, default_study_ui_verbose):
    """The session's two `python -m study ui` servers (tests/conftest.py): the smoke store's
    as users start it, the shrunk default study's with --verbose; everything each printed."""
    port, _, log = smoke_study_ui
    _browse(port)
    quiet = log.read_text()
    assert "serving " in quiet and "Uvicorn running" in quiet  # it did serve
    assert "HTTP/1.1" not in quiet, quiet
    assert len(quiet.splitlines()) < 20, quiet
    port, _, log = default_study_ui_verbose
    before = log.read_text().count('"GET /')
    _browse(port)
    verbose = log.read_text()
    assert verbose.count('"GET /') >= before + 4, verbose  # /health and the 3 pages


@pytest.mark.slow
def test_a_piped_report_says_its_stages_and_keeps_a_rerunnable_notebook(smoke_reported):
    """The session's smoke report (tests/conftest.py), made by the real command with its
    output to a pipe."""
    import nbformat

    uri, out, log = smoke_reported
    assert "\r" not in log and len(log.splitlines()) <= 20, log
    stages = [line for line in log.splitlines() if line.startswith("report 'smoke': ")]
    assert [s.removeprefix("report 'smoke': ") for s in stages] == [
        "loading the store", "executing report.ipynb (it computes the analysis)",
        "writing report.html and report.ipynb", "logging the report on the study's parent run",
        "noting the answer on the study's runs"]
    cells = len(nbformat.read(ROOT / "notebooks" / "report.ipynb", as_version=4).cells) + 1
    assert f"smoke: report.ipynb: {cells}/{cells} cells in " in log

    kept = nbformat.read(out / "smoke" / "report.ipynb", as_version=4)
    injected = [c for c in kept.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1
    namespace: dict = {}
    exec(injected[0].source, namespace)  # the cell a re-run from Jupyter starts from
    from study.tracking import absolute_uri

    assert (namespace["tracking_uri"], namespace["experiment"], namespace["out_dir"]) == \
        (absolute_uri(uri), "smoke", "")
    drawn = [c for c in kept.cells if any(t.startswith("figure:") for t in
                                          c.metadata.get("tags", []))]
    assert drawn and all(any("image/png" in o.get("data", {}) for o in c.outputs)
                         for c in drawn if c.outputs)
    pngs = sum("image/png" in o.get("data", {}) for c in kept.cells for o in c.get("outputs", []))
    assert pngs == len(list((out / "smoke" / "figures").iterdir()))
