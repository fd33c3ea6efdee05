"""Reports: execute the report notebooks with papermill against the MLflow store, export
self-contained HTML, write the summary table, and log figures and summary on the study's
latest parent run. Everything is rebuilt from the store alone."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

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
    is written there or removed."""
    folder = (out_dir / folder_name(experiment)).resolve()
    if folder.parent != out_dir.resolve():
        raise ValueError(f"experiment {experiment!r} maps outside {out_dir}")
    return folder


def build_report(tracking_uri: str, experiment: str, out_dir: Path) -> Path:
    """Write ``out_dir/<experiment>/`` (the notebook's HTML, summary.csv, figures/); returns
    the HTML path."""
    from study.tracking import StudyTracker

    study = load_study(tracking_uri, experiment)
    notebook = notebook_for(study)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = report_folder(out_dir, experiment)
    # Built in a scratch folder and moved in place at the end: a failed notebook leaves the
    # previous report as it was, not half of a new one.
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        folder = Path(scratch) / final.name
        (folder / "figures").mkdir(parents=True)
        _execute(NOTEBOOKS / notebook, folder, {"tracking_uri": tracking_uri,
                                               "experiment": experiment})
        if final.exists():
            shutil.rmtree(final)
        shutil.move(folder, final)
    StudyTracker(tracking_uri).log_report(study.parent_run_id, sorted(final.rglob("*.*")))
    html = final / notebook.replace(".ipynb", ".html")
    if notebook == "report.ipynb" and len(study.arms):
        from study.analysis import sections

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
                             set_link=False)  # the link keeps the start the study chose
    words = answer_sentences(report.answer, study.target, study.lr_band)
    note = browse.study_note(words, starts, study.config_hash,
                             f"`make report`, {html.name}")
    client.set_tag(study.parent_run_id, "mlflow.note.content", note)


def _ipc_kernel_manager():
    """Jupyter's kernel manager on IPC sockets: the kernel is local, and over TCP ipykernel
    warns on every report that its traffic is unencrypted."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(transport="ipc", **kwargs)

    return IPCKernelManager


def _execute(notebook: Path, folder: Path, parameters: dict) -> None:
    """Run the notebook into ``folder``: its HTML (code hidden), and each figure it drew,
    from the cells tagged ``figure:<name>``, as figures/<name>.png: taken from the
    notebook's own output, so no figure is drawn twice."""
    import base64

    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    with tempfile.TemporaryDirectory() as tmp:
        executed = Path(tmp) / notebook.name
        papermill.execute_notebook(str(notebook), str(executed),
                                   parameters={**parameters, "out_dir": str(folder.resolve())},
                                   cwd=str(NOTEBOOKS), progress_bar=False,
                                   kernel_name="python3",
                                   kernel_manager_class=_ipc_kernel_manager())
        node = nbformat.read(executed, as_version=4)
    for cell in node.cells:
        names = [t.removeprefix("figure:") for t in cell.get("metadata", {}).get("tags", [])
                 if t.startswith("figure:")]
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", [])
                if "image/png" in o.get("data", {})]
        if names and pngs:
            (folder / "figures" / f"{names[0]}.png").write_bytes(base64.b64decode(pngs[0]))
    exporter = HTMLExporter(template_name="lab", exclude_input=True,
                            exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(node)
    (folder / notebook.with_suffix(".html").name).write_text(body)


def build_reports(tracking_uri: str, experiment: str | None,
                  out_dir: Path) -> list[tuple[str, Path]]:
    """(experiment, HTML path) of every report written."""
    from study.tracking import absolute_uri

    tracking_uri = absolute_uri(tracking_uri)
    names = [experiment] if experiment else experiments(tracking_uri)
    if not names:
        raise ValueError(f"no studies in {tracking_uri}: run one first (make run-study)")
    return [(name, build_report(tracking_uri, name, out_dir)) for name in names]
