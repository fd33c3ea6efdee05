"""The report, end to end: the main notebook executed by papermill on the smoke study's
store, exported to HTML, with the summary table and every figure; logged on the parent."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from study.cli import main
from tests.conftest import CONFIGS, ROOT, parent_only_store


@pytest.fixture(scope="session")
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


def test_report_of_an_unknown_experiment_exits_2(report, tmp_path, capsys):
    code = main(["report", "--experiment", "nope", "--tracking-uri", report[0],
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


# ---- what the report may write, replace and remove -----------------------------------------

def _tree(root: Path) -> dict:
    """Everything under ``root`` (symlinks not followed) with its content: a change anywhere
    shows."""
    tree = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                tree[key] = ("symlink", os.readlink(path))
            elif path.is_dir():
                tree[key] = ("folder", path.stat().st_mode)
            else:
                tree[key] = ("file", path.read_bytes())
    return tree


@pytest.fixture(scope="session")
def configs_store(tmp_path_factory):
    """A study named ``configs``, the name of a folder users keep beside their reports."""
    return parent_only_store(tmp_path_factory.mktemp("configs-store"), "configs")


def _report(*args: str) -> tuple[int, list[str]]:
    """``study report`` in this process: exit code and the lines it wrote to stderr."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["report", *args])
    return code, err.getvalue().splitlines()


def _no_sockets_in_the_source_tree():
    """notebooks/ holds the notebooks and nothing else (no kernel-ipc-* sockets)."""
    assert sorted(p.name for p in (ROOT / "notebooks").iterdir()) == ["neuron.ipynb",
                                                                    "report.ipynb"]


def test_a_report_folder_carries_its_marker_and_nothing_else_is_left(report):
    import json

    _, out, paths = report
    assert sorted(p.name for p in out.iterdir()) == ["smoke"]  # no scratch folder left
    marker = json.loads((out / "smoke" / ".study-report").read_text())
    assert marker["experiment"] == "smoke" and marker["created_by"] == "python -m study report"
    assert len(marker["parent_run_id"]) == 32
    _no_sockets_in_the_source_tree()


def test_a_folder_named_like_the_study_beside_out_dot_survives(configs_store, tmp_path,
                                                                monkeypatch):
    """The issue's data loss: a study named ``configs`` reported with ``--out .`` used to
    replace the user's own configs/ folder."""
    (tmp_path / "configs" / "nested").mkdir(parents=True)
    (tmp_path / "configs" / "default.yaml").write_text("name: default\n")
    (tmp_path / "configs" / "nested" / "data.bin").write_bytes(bytes(range(256)))
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, err = _report("--tracking-uri", configs_store, "--out", ".")
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"error: {tmp_path / 'configs'} exists and was not written by study "
                      "report (no .study-report file in it): move it away or give another --out")
    assert _tree(tmp_path) == before


def _file_at_target(out: Path) -> None:
    out.mkdir()
    (out / "configs").write_text("mine")


def _symlink_at_target(out: Path) -> None:
    (out.parent / "elsewhere").mkdir()
    (out.parent / "elsewhere" / "keep.txt").write_text("mine")
    out.mkdir()
    (out / "configs").symlink_to(out.parent / "elsewhere")


def _another_experiments_report(out: Path) -> None:
    (out / "configs").mkdir(parents=True)
    (out / "configs" / ".study-report").write_text(
        '{"created_by": "python -m study report", "experiment": "other"}')
    (out / "configs" / "report.html").write_text("other's report")


def _marker_not_ours(out: Path) -> None:
    (out / "configs").mkdir(parents=True)
    (out / "configs" / ".study-report").write_text("my notes")


def _out_is_a_file(out: Path) -> None:
    out.write_text("not a folder")


@pytest.mark.parametrize("setup, message", [
    (_file_at_target, "{out}/configs is a file, not a report folder: move it away or give "
                      "another --out"),
    (_symlink_at_target, "{out}/configs is a symlink, not a report folder"),
    (_another_experiments_report, "{out}/configs holds the report of experiment 'other', "
                                  "not 'configs'"),
    (_marker_not_ours, "{out}/configs exists and was not written by study report"),
    (_out_is_a_file, "--out {out} is a file, not a folder: give a folder for the reports"),
])
def test_anything_but_its_own_report_folder_is_refused(configs_store, tmp_path, setup,
                                                       message):
    out = tmp_path / "out"
    setup(out)
    before = _tree(tmp_path)
    code, err = _report("--tracking-uri", configs_store, "--out", str(out))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: " + message.format(out=out)), err
    assert _tree(tmp_path) == before


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tmpfs (as root, as `make test` runs) at a folder; unmounted afterwards."""
    mounted = []

    def mount(folder: Path, options: str) -> Path:
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                       check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_out_is_refused(configs_store, tmp_path, small_fs):
    if os.geteuid() == 0:  # permission bits do not stop root: a read-only file system does
        out = small_fs(tmp_path / "out", "ro,size=64k")
    else:
        out = tmp_path / "out"
        out.mkdir(mode=0o555)
    code, err = _report("--tracking-uri", configs_store, "--out", str(out))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: --out {out} is not writable ("), err
    assert list(out.iterdir()) == []


def test_a_full_disk_gives_one_line_and_leaves_nothing(configs_store, tmp_path, small_fs):
    """The disk fills at the report's first write: one line, exit 1, nothing left but the
    user's own file. As root a real full tmpfs; otherwise a file size limit (EFBIG)."""
    import resource

    out = tmp_path / "out"
    limit = None
    if os.geteuid() == 0:
        small_fs(out, "size=64k")
        with open(out / "filler", "wb", buffering=0) as filler, \
                contextlib.suppress(OSError):  # fill it to the last byte
            while True:
                filler.write(b"\0" * 4096)
    else:
        out.mkdir()
        (out / "filler").write_bytes(b"\0")
        limit = 0
    before = _tree(out)

    def no_bigger_files():
        if limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "study", "report", "--tracking-uri", configs_store, "--out",
         str(out)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, preexec_fn=no_bigger_files, timeout=120)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert err[0].startswith(f"error: --out {out}: ") and "free some space and rerun" in err[0]
    assert _tree(out) == before


def test_a_study_with_no_arms_renders_and_says_so(tmp_path, monkeypatch):
    """The latest parent run trained nothing (every arm refused): the report renders the
    sentence, not 'cannot convert float NaN to integer'."""
    monkeypatch.setattr(tempfile, "tempdir", str(_temp(tmp_path)))
    store = parent_only_store(tmp_path, "nothing")
    code, err = _report("--tracking-uri", store, "--out", str(tmp_path / "out"))
    assert code == 0, err
    html = (tmp_path / "out" / "nothing" / "report.html").read_text()
    assert "has no finished arm under its latest config" in html
    assert "How fast does each loss converge" in html  # the notebook's own title
    assert "Traceback" not in html and "NothingToReport" not in html
    assert 'data-mime-type="application/vnd.jupyter.stderr"' not in html
    assert 'id="The-answer"' not in html  # the notebook ended at the sentence
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["nothing"]
    assert list(_temp(tmp_path).iterdir()) == []


def test_a_study_whose_arms_all_diverged_renders_and_says_so(tmp_path, monkeypatch):
    """A study whose arms all diverged: trained for real (SGD at lr 1e38 overflows float32
    on the first update), then the sentence from study.analysis."""
    from study.analysis import load_study, nothing_to_report

    monkeypatch.setattr(tempfile, "tempdir", str(_temp(tmp_path)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(CONFIGS / "smoke.yaml"), "--tracking-uri", uri, "--quiet",
                 "--set", "name=diverged", "--set", "losses=[cce]", "--set",
                 "inits={glorot: []}", "--set", "optimizer.lr=1e38"]) == 0
    study = load_study(uri, "diverged")
    assert study.arms["diverged"].all()
    sentence = nothing_to_report(study)
    assert sentence.startswith("All 1 arms of study 'diverged' diverged")
    code, err = _report("--tracking-uri", uri, "--out", str(tmp_path / "out"))
    assert code == 0, err
    html = (tmp_path / "out" / "diverged" / "report.html").read_text()
    assert "All 1 arms of study 'diverged' diverged (their loss became NaN" in html
    assert "Traceback" not in html and 'id="The-answer"' not in html


def _temp(tmp_path: Path) -> Path:
    """The temp folder the report under test uses (tempfile.gettempdir() of that process)."""
    folder = tmp_path / "temp"
    folder.mkdir(exist_ok=True)
    return folder


def _kernels_gone(temp: Path, timeout: float = 15) -> bool:
    """No process (a notebook kernel) still runs from the report's temp folder."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in psutil.process_iter(["cmdline"])
                 if any(str(temp) in part for part in p.info["cmdline"] or [])]
        if not alive:
            return True
        time.sleep(0.3)
    return False


def test_a_failed_notebook_leaves_the_old_report_and_nothing_else(report, tmp_path,
                                                                  monkeypatch):
    import shutil

    import nbformat

    import study.report

    store, built, _ = report
    out = tmp_path / "out"
    shutil.copytree(built / "smoke", out / "smoke")  # the previous report, to keep
    before = _tree(out)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    node = nbformat.read(study.report.NOTEBOOKS / "report.ipynb", as_version=4)
    node.cells[2].source = 'raise RuntimeError("boom")\n' + node.cells[2].source
    nbformat.write(node, notebooks / "report.ipynb")
    monkeypatch.setattr(study.report, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(tempfile, "tempdir", str(_temp(tmp_path)))
    code, err = _report("--experiment", "smoke", "--tracking-uri", store, "--out", str(out))
    assert code == 1 and len(err) == 1, err
    assert re.fullmatch(r"error: report\.ipynb failed in cell \d+: RuntimeError: boom", err[0])
    assert _tree(out) == before
    assert list(_temp(tmp_path).iterdir()) == []
    assert _kernels_gone(_temp(tmp_path))
    _no_sockets_in_the_source_tree()


def _start_report(store: str, out: Path, temp: Path) -> subprocess.Popen:
    """``python -m study report`` of the smoke study in a process of its own, once its
    notebook kernel runs the notebook's first cell of its own (the analysis: seconds of
    work), as papermill's copy of the notebook in the report's temp folder says."""
    report = subprocess.Popen(
        [sys.executable, "-m", "study", "report", "--experiment", "smoke", "--tracking-uri",
         store, "--out", str(out)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(temp)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not _in_the_notebook(temp):
        assert report.poll() is None and time.monotonic() < deadline, report.communicate()
        time.sleep(0.1)
    assert list(temp.glob("study-report-kernel-*/kernel.json"))  # the kernel's, in temp
    assert report.poll() is None, "the report ended before it could be stopped"
    return report


def _in_the_notebook(temp: Path) -> bool:
    """A cell of the notebook's own (not the parameters papermill sets) is running: papermill
    saves its copy of the notebook as each cell starts."""
    import nbformat

    for executed in temp.glob("study-report-kernel-*/report.ipynb"):
        try:
            cells = nbformat.read(executed, as_version=4).cells
        except Exception:  # noqa: BLE001 - read while papermill writes it: look again
            continue
        if any(cell.get("metadata", {}).get("papermill", {}).get("status") == "running"
               and cell.cell_type == "code"
               and not {"parameters", "injected-parameters"} & set(cell.metadata.get("tags", []))
               for cell in cells):
            return True
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_report_leaves_the_old_report_and_nothing_else(report, tmp_path, sig):
    import shutil

    store, built, _ = report
    out, temp = tmp_path / "out", _temp(tmp_path)
    shutil.copytree(built / "smoke", out / "smoke")
    before = _tree(out)
    running = _start_report(store, out, temp)
    running.send_signal(sig)
    _, err = running.communicate(timeout=60)
    assert running.returncode == 128 + sig, err
    assert err.strip().splitlines() == [  # one line: no echo of the kernel it ended
        "interrupted: no report half-written, rerun to finish"], err
    assert _tree(out) == before
    assert _kernels_gone(temp)
    assert list(temp.iterdir()) == []
    _no_sockets_in_the_source_tree()


@pytest.mark.slow
def test_after_a_kill_9_the_next_report_removes_what_the_killed_one_left(report, tmp_path,
                                                                        monkeypatch):
    """kill -9 leaves the scratch folders (nothing can run then); the previous report is
    still whole, and the next run removes them and replaces the report. What the next run
    renders is not what is tested: it runs the title-only notebook (tests/conftest.py)."""
    import json
    import shutil

    import study.report
    from tests.conftest import title_only_notebooks

    store, built, _ = report
    out, temp = tmp_path / "out", _temp(tmp_path)
    shutil.copytree(built / "smoke", out / "smoke")
    (out / "smoke" / "old.txt").write_text("from the previous report")
    before = _tree(out)
    running = _start_report(store, out, temp)
    os.killpg(running.pid, signal.SIGKILL)
    running.communicate(timeout=60)
    left = {k: v for k, v in _tree(out).items() if not k.startswith(".study-report-scratch-")}
    assert left == before  # the previous report is whole
    assert list(out.glob(".study-report-scratch-*")) and list(temp.iterdir())
    assert _kernels_gone(temp)

    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(study.report, "NOTEBOOKS", title_only_notebooks(tmp_path / "nb"))
    code, err = _report("--experiment", "smoke", "--tracking-uri", store, "--out", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["smoke"]
    assert not (out / "smoke" / "old.txt").exists()  # the old folder was replaced whole
    assert json.loads((out / "smoke" / ".study-report").read_text())["experiment"] == "smoke"
    assert list(temp.iterdir()) == []
    _no_sockets_in_the_source_tree()


def test_stale_scratch_is_removed_only_when_it_is_ours_and_its_process_is_gone(tmp_path):
    import json

    from study import report_files

    def scratch(name: str, owner: dict | None) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "x").write_text("x")
        if owner is not None:
            (folder / report_files.SCRATCH_MARKER).write_text(json.dumps(owner))
        return folder

    me = report_files._this_process()
    dead = scratch(".study-report-scratch-dead", {**me, "pid": 2 ** 22 + 1})
    reused = scratch(".study-report-scratch-reused", {**me, "started": me["started"] - 100})
    alive = scratch(".study-report-scratch-alive", me)
    other_host = scratch(".study-report-scratch-host", {**me, "pid": 2 ** 22 + 1,
                                                        "host": "elsewhere"})
    unmarked = scratch(".study-report-scratch-mine", None)
    foreign = scratch(".study-report-scratch-notes", {"pid": 2 ** 22 + 1})
    removed = report_files.sweep(tmp_path, report_files.SCRATCH_PREFIX)
    assert sorted(removed) == sorted([dead, reused])
    assert all(p.exists() for p in [alive, other_host, unmarked, foreign])
