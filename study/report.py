"""Reports: execute the report notebooks with papermill against the MLflow store, export
self-contained HTML, write the summary table, and log figures and summary on the study's
latest parent run. Everything is rebuilt from the store alone. What the report may write,
replace and remove on disk is ``study.report_files``' job."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from study import markup, report_files
from study.analysis import experiments, load_study
from study.analysis.load import Study

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def notebook_for(study: Study) -> str:
    """The single-neuron study gets the textbook figures; every other the convergence report."""
    return "neuron.ipynb" if (study.history["metric"] == "output").any() else "report.ipynb"


FOLDER_MAX = 100


def folder_name(experiment: str) -> str:
    """A folder name for an experiment that cannot leave ``--out``: the name itself when it
    is one (letters, digits, '_', '-', '.', not starting with '.', short), else the name
    with every other character as '_', cut, and a hash of the whole name (an experiment
    renamed in the MLflow UI to '../x' or '.' still gets a folder of its own)."""
    import hashlib

    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", experiment) and \
            len(experiment) <= FOLDER_MAX:
        return experiment
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", experiment).lstrip(".")[:60] or "study"
    return f"{safe}-{hashlib.sha256(experiment.encode()).hexdigest()[:10]}"


def report_folder(out_dir: Path, experiment: str) -> Path:
    """``out_dir/<folder name>``, checked to sit directly inside ``out_dir`` before anything
    is written there or removed. The folder itself is not resolved: a symlink there is
    refused as a symlink, not followed."""
    folder = out_dir.resolve() / folder_name(experiment)
    if folder.parent != out_dir.resolve() or folder.name in ("", ".", ".."):
        raise ValueError(f"experiment {experiment!r} maps outside {out_dir}")
    return folder


def build_report(tracking_uri: str, experiment: str, out_dir: Path, scratch: Path,
                 say: Callable[[str], None] = lambda line: None,
                 progress: bool = False) -> Path:
    """Write ``out_dir/<experiment>/`` (the notebook's HTML, the executed notebook,
    summary.csv, figures/, the marker); returns the HTML path. It is built in ``scratch`` (a
    folder of this run's inside ``out_dir``) and renamed into place only when whole. ``say``
    hears each stage; with ``progress``, the notebook's cells are counted on stderr
    (``study.progress``: a bar on a terminal, a line per tenth elsewhere)."""
    from study.analysis import nothing_to_report
    from study.tracking import StudyTracker

    say(f"report {experiment!r}: loading the store")
    study = load_study(tracking_uri, experiment)
    notebook = notebook_for(study)
    final = report_folder(out_dir, experiment)
    report_files.check_replaceable(final, experiment)
    folder = scratch / final.name
    (folder / "figures").mkdir(parents=True)
    report_files.write_marker(folder, experiment, study.parent_run_id)
    say(f"report {experiment!r}: executing {notebook} (it computes the analysis)")
    _execute(NOTEBOOKS / notebook, folder, {"tracking_uri": tracking_uri,
                                           "experiment": experiment}, say, progress)
    report_files.replace(final, folder, experiment, scratch)
    say(f"report {experiment!r}: logging the report on the study's parent run")
    StudyTracker(tracking_uri).log_report(study.parent_run_id, sorted(
        p for p in final.rglob("*.*") if p.name != report_files.MARKER))
    html = final / notebook.replace(".ipynb", ".html")
    if notebook == "report.ipynb" and nothing_to_report(study) is None:
        from study.analysis import sections

        say(f"report {experiment!r}: noting the answer on the study's runs")
        _annotate_store(tracking_uri, study, sections.build(study), html)
    return html


def _annotate_store(tracking_uri: str, study: Study, report, html: Path) -> None:
    """What the report found goes back into MLflow: with a grid of rates, each arm's
    ``study.best_lr`` tag (each loss's pick) and the saved views filtered by it; the parent
    run's description holds the answer and a ready-to-paste filter per start."""
    from mlflow.tracking import MlflowClient

    from study import browse
    from study.analysis import select_lr
    from study.analysis.answer import answer_sentences

    every_lr = report.all_arms
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_run(study.parent_run_id).info.experiment_id
    keys = [k for k in ("loss", "optimizer") if k in every_lr]
    starts = sorted({(init, float(severity)) for init, severity
                     in every_lr[["init", "severity"]].itertuples(index=False)})
    if (every_lr.groupby(keys)["lr"].nunique() > 1).any():  # a grid: the pick is known now
        chosen = set(select_lr(every_lr, "own")["run_id"])
        for run_id in every_lr["run_id"]:
            client.set_tag(run_id, "study.best_lr", str(run_id in chosen).lower())
        browse.publish_views(client, experiment_id, starts, True, study.config_hash,
                             set_link=False,  # the link keeps the start the study chose
                             losses=every_lr["loss"].unique())
    words = answer_sentences(report.answer, study.target, study.lr_band)
    note = browse.study_note(words, starts, study.config_hash,
                             f"`make report`, {markup.md_text(html.name)}")
    client.set_tag(study.parent_run_id, "mlflow.note.content", note)


def _ipc_kernel_manager(folder: Path, started: list):
    """Jupyter's kernel manager on IPC sockets (the kernel is local, and over TCP ipykernel
    warns on every report that its traffic is unencrypted), with its connection file and
    sockets in ``folder``, which the report owns and removes (by default they land in the
    working directory and Jupyter's runtime folder, and stay there when a report is killed).
    The sockets' path is relative: papermill runs the kernel and this process in ``folder``
    (its ``cwd``), and a socket's absolute path there may pass the 107 bytes a Unix socket's
    address allows. The kernel imports this checkout's ``study``, as the report process
    does, whatever an installed copy says. Each manager goes into ``started`` as it starts
    its kernel, so that a stopped report can end the kernel before removing its folder."""
    from jupyter_client.manager import AsyncKernelManager

    source = str(Path(__file__).resolve().parents[1])

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(transport="ipc", ip="kernel-ipc",
                             connection_file=str(folder / "kernel.json"), **kwargs)

        async def start_kernel(self, **kwargs):
            started.append(self)
            env = dict(kwargs.pop("env", None) or os.environ)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
            return await super().start_kernel(env=env, **kwargs)

    return IPCKernelManager


class NotebookFailed(RuntimeError):
    """The report notebook raised: which cell and what, in one line."""


def _execute(notebook: Path, folder: Path, parameters: dict,
             say: Callable[[str], None] = lambda line: None, progress: bool = False) -> None:
    """Run the notebook into ``folder``: its HTML (code hidden), the executed notebook
    itself (outputs kept, to open and re-run in Jupyter), and each figure it drew, from the
    cells tagged ``figure:<name>``, as figures/<name>.png: taken from the notebook's own
    output, so no figure is drawn twice. A study with nothing to compare
    (``study.analysis.NothingToReport``) ends the notebook at that cell, which says why."""
    import base64

    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from study.progress import progress as progress_of

    with report_files.scratch(Path(tempfile.gettempdir()), report_files.KERNEL_PREFIX) as tmp, \
            progress_of(len(nbformat.read(notebook, as_version=4).cells) + 1,  # + papermill's
                        f"{parameters['experiment']}: {notebook.name}", "cell",  # parameters
                        disable=not progress) as cells:
        executed = tmp / notebook.name
        try:
            papermill.execute_notebook(str(notebook), str(executed),
                                       parameters={**parameters,
                                                   "out_dir": str(folder.resolve())},
                                       cwd=str(tmp), progress_bar=False, kernel_name="python3",
                                       engine_name=_counting_engine(cells),
                                       kernel_manager_class=_ipc_kernel_manager(
                                           tmp, RUNNING_KERNELS))
            node = nbformat.read(executed, as_version=4)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: papermill leaves its kernel running
            end_kernels()
            raise
        except papermill.PapermillExecutionError as err:
            if err.ename != "NothingToReport":
                raise NotebookFailed(f"{notebook.name} failed in cell {err.exec_count}: "
                                     f"{err.ename}: {' '.join(err.evalue.split())}") from err
            node = _ended_early(nbformat.read(executed, as_version=4), err)
        finally:
            RUNNING_KERNELS.clear()  # papermill shut them down, or end_kernels killed them
    for cell in node.cells:
        names = [t.removeprefix("figure:") for t in cell.get("metadata", {}).get("tags", [])
                 if t.startswith("figure:")]
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                if "image/png" in o.get("data", {})]
        if names and pngs:
            (folder / "figures" / f"{names[0]}.png").write_bytes(base64.b64decode(pngs[0]))
    say(f"report {parameters['experiment']!r}: writing "
        f"{notebook.with_suffix('.html').name} and {notebook.name}")
    exporter = HTMLExporter(template_name="lab", exclude_input=True,
                            exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(node)
    (folder / notebook.with_suffix(".html").name).write_text(body)
    nbformat.write(_rerunnable(node, parameters), folder / notebook.name)


def _rerunnable(node, parameters: dict):
    """The executed notebook as a user re-runs it from Jupyter: its parameters cell names
    the store and the experiment (absolute, as the report ran), and ``out_dir`` is empty,
    so a re-run redraws the figures without overwriting the report's tables."""
    from papermill.translators import PythonTranslator

    for cell in node.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell.source = PythonTranslator.codify(
                {**parameters, "out_dir": ""},
                "Parameters of `make report` (out_dir empty: a re-run writes no tables)")
    return node


def _counting_engine(cells) -> str:
    """papermill's own engine, counting the notebook's cells on ``cells`` (a bar on a
    terminal, a line per tenth in a log: ``study.progress``) instead of papermill's own
    tqdm bar, which redraws hundreds of times into a log."""
    from papermill.engines import NBClientEngine, papermill_engines

    class Counting(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, **kwargs):
            cells.total = len(nb_man.nb.cells)
            nb_man.pbar = cells  # papermill updates it after each cell and closes it
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("study-counting", Counting)
    return "study-counting"


# The kernel managers of the notebook running now: a stopped report ends their kernels from
# its signal handler (study.cli), before the notebook machinery unwinds and the kernel,
# cut off mid-cell, prints its own tracebacks on the terminal.
RUNNING_KERNELS: list = []


def end_kernels() -> None:
    """Kill the kernels of a stopped report and wait for them."""
    while RUNNING_KERNELS:
        manager = RUNNING_KERNELS.pop()
        process = getattr(getattr(manager, "provisioner", None), "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _ended_early(node, err):
    """The notebook up to the cell that found nothing to report, that cell showing the
    reason as a sentence (papermill's error banners and the traceback left out)."""
    import nbformat
    from papermill.execute import ERROR_MARKER_TAG

    cells = [c for c in node.cells if ERROR_MARKER_TAG not in c.metadata.get("tags", [])]
    last = cells[err.cell_index]
    last.outputs = [nbformat.v4.new_output(
        "display_data", data={"text/markdown": markup.md_text(err.evalue)})]
    node.cells = cells[:err.cell_index + 1]
    return node


def build_reports(tracking_uri: str, experiment: str | None, out_dir: Path,
                  say: Callable[[str], None] = lambda line: None,
                  progress: bool = False) -> list[tuple[str, Path]]:
    """(experiment, HTML path) of every report written. Every report's folder is checked
    before any is built, so a refused one leaves ``out_dir`` as it was. ``say`` and
    ``progress``: as ``build_report``."""
    from study.tracking import absolute_uri

    tracking_uri = absolute_uri(tracking_uri)
    names = [experiment] if experiment else experiments(tracking_uri)
    if not names:
        raise ValueError(f"no studies in {tracking_uri}: run one first (make run-study)")
    report_files.check_out(out_dir)
    for name in names:
        report_files.check_replaceable(report_folder(out_dir, name), name)
    with report_files.out_folder(out_dir), \
            report_files.scratch(out_dir, report_files.SCRATCH_PREFIX) as scratch:
        return [(name, build_report(tracking_uri, name, out_dir, scratch, say, progress))
                for name in names]
