"""End to end: configs/smoke.yaml through the CLI into a temporary MLflow store."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from study.cli import main
from study.config import config_hash, load_config
from study.train.common import Schedule
from tests.conftest import CONFIGS, every_thread_has_every_core, tracking_uri

SMOKE = str(CONFIGS / "smoke.yaml")
METRICS = {"train_loss", "train_accuracy", "val_accuracy", "val_nll", "val_brier", "grad_norm"}


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _children(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r for r in runs if "study.arm" in r.data.tags]


def _histories(client, run):
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id,
                                                                             name))
            for name in METRICS}


def test_smoke_study_logs_a_parent_and_one_child_per_arm(smoke_store, capsys):
    client = _client(smoke_store)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("study.role") == "parent"]
    children = _children(client, "smoke")
    assert len(parents) == 1 and len(children) == 8
    parent = parents[0]
    digest = config_hash(load_config(SMOKE))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["study.config_hash"] == digest == parent.data.params["config_hash"]
    assert parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.tags["version.tensorflow"].startswith("2.")
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "environment.json"} <= artifacts
    stored = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "config.yaml")))
    assert stored["losses"] == ["bce", "cce", "scce", "mse"]
    versions = json.load(open(client.download_artifacts(parent.info.run_id,
                                                        "environment.json")))
    assert "keras" in versions

    keys = set()
    for run in children:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["study.diverged"] == "false"
        keys.add(tags["study.arm"])
        start = "glorot" if params["init"] == "glorot" else "saturated_wrong m=4"
        assert tags["start"] == start
        assert tags["mlflow.runName"] == f"{params['loss']} · {start} · s0 · lr 0.5"
        assert tags["study.best_lr"] == "true"  # one rate per loss: each at its own
        assert params["dataset"] == "digits" and params["model"] == "mlp-64-30-10-sigmoid"
        assert params["batch_size"] == "10" and params["epochs"] == "1"
        assert params["lr"] == "0.5" and params["seed"] == "0" and params["optimizer"] == "sgd"
        assert params["init"] in {"glorot", "saturated_wrong"}
        histories = _histories(client, run)
        # the step of the arm's last crossing, or past the budget if a level is never reached
        crossed = [client.get_metric_history(run.info.run_id, f"crossing_{level:g}")
                   for level in (0.5, 0.7, 0.8, 0.9)]
        last = max((h[0].step if h else 108) for h in crossed)
        for name, points in histories.items():
            # step 0, the log-spaced 1..64 and the epoch end at 107 updates
            full = [0, 1, 2, 4, 8, 16, 32, 64, 107]  # every measure
            # val_accuracy densely too while a level is still to be crossed, and at crossings
            dense = {s for s in Schedule(107, 1).accuracy_steps if s <= last}
            steps = sorted(set(full) | dense | {h[0].step for h in crossed if h})
            assert [s for s, _ in points] == (steps if name == "val_accuracy" else full), name
    assert keys == {f"{loss}|{init}|seed=0|sgd|lr=0.5" for loss in ["bce", "cce", "scce", "mse"]
                    for init in ["glorot:0", "saturated_wrong:4"]}


def _parents(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id], "tags.`study.role` = 'parent'")


def test_rerun_skips_finished_arms_and_adds_no_empty_parent(smoke_store, capsys):
    parents = len(_parents(_client(smoke_store), "smoke"))
    assert main(["run", SMOKE, "--tracking-uri", smoke_store, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "trained 0 arms, skipped 8 already finished" in out
    assert "nothing to train, so no new run" in out
    assert len(_children(_client(smoke_store), "smoke")) == 8
    assert len(_parents(_client(smoke_store), "smoke")) == parents


def test_runs_carry_their_training_times(smoke_store):
    """A child's start and end are its group's training span, not the moment it was
    written; each value carries the time its step was reached."""
    client = _client(smoke_store)
    parent = _parents(client, "smoke")[-1]  # the first invocation
    for run in _children(client, "smoke"):
        start, end = run.info.start_time, run.info.end_time
        assert parent.info.start_time <= start < end <= parent.info.end_time
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        times = [m.timestamp for m in sorted(history, key=lambda m: m.step)]
        assert times == sorted(times) and times[0] < times[-1]  # steps are reached in order
        assert start <= times[0] and times[-1] <= end


@pytest.fixture(scope="module")
def mse_only(tmp_path_factory):
    """configs/smoke.yaml with losses=[mse] (two arms, one group of two slots) trained into
    a store of its own: (store, the command, arm key -> metric histories as first stored)."""
    other = tracking_uri(tmp_path_factory.mktemp("mse-only"))
    args = ["run", SMOKE, "--set", "losses=[mse]", "--tracking-uri", other, "--quiet"]
    assert main(args) == 0
    client = _client(other)
    return other, args, {r.data.tags["study.arm"]: _histories(client, r)
                         for r in _children(client, "smoke")}


def test_a_subset_of_the_grid_gives_the_same_curves(smoke_store, mse_only):
    """Two of the eight arms alone (one group of two slots instead of four): the same
    values, bit for bit, as in the whole study."""
    _, _, subset = mse_only
    first = {r.data.tags["study.arm"]: r for r in _children(_client(smoke_store), "smoke")}
    assert len(subset) == 2
    for key, mine in subset.items():
        assert mine == _histories(_client(smoke_store), first[key])


def test_a_diverged_arm_is_tagged_and_the_study_goes_on(tmp_path):
    uri = tracking_uri(tmp_path)
    args = ["run", SMOKE, "--set", "name=diverge", "--set", "model.activation=relu",
            "--set", "losses=[cce]", "--set", "inits={glorot: []}",
            "--set", "optimizer.lr=[0.5, 1.0e+30]", "--tracking-uri", uri, "--quiet"]
    assert main(args) == 0
    client = _client(uri)
    runs = {r.data.params["lr"]: r for r in _children(client, "diverge")}
    assert runs["1e+30"].data.tags["study.diverged"] == "true"
    assert runs["1e+30"].data.tags["study.diverged_at_step"] == "1"
    assert runs["0.5"].data.tags["study.diverged"] == "false"
    assert len(client.get_metric_history(runs["0.5"].info.run_id, "val_nll")) == 9


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tf):
    """configs/smoke.yaml interrupted (Ctrl-C) after two arms, then run again to the end in
    the same store: (store, what the store held after the interruption, the rerun's
    result)."""
    from study.run import run_study
    from study.train import batched

    real = batched.train_arms

    def interrupted(arms, config, splits, advance=lambda n: None, **warm):
        for i, item in enumerate(real(arms, config, splits, advance, **warm)):
            yield item
            if i == 1:  # as the study asks for a third arm: before the next group trains
                raise KeyboardInterrupt

    uri = tracking_uri(tmp_path_factory.mktemp("interrupted"))
    config = load_config(SMOKE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batched, "train_arms", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_study(config, uri, progress=False)
    client = _client(uri)
    children = _children(client, "smoke")  # search_runs skips deleted runs
    experiment = client.get_experiment_by_name("smoke").experiment_id
    parent = client.search_runs([experiment], "tags.`study.role` = 'parent'")[0]
    left = SimpleNamespace(
        children=children, parent_status=parent.info.status,
        val_nll_lengths=[len(client.get_metric_history(run.info.run_id, "val_nll"))
                         for run in children],
        every_core=every_thread_has_every_core())
    return uri, left, run_study(config, uri, progress=False)


def test_an_interrupted_study_leaves_only_finished_arms(interrupted):
    """Ctrl-C after two arms: their runs are complete, the other arms' runs are gone, the
    parent is KILLED, and a rerun trains just the missing arms."""
    uri, left, resumed = interrupted
    assert len(left.children) == 2
    assert {r.info.status for r in left.children} == {"FINISHED"}
    assert left.val_nll_lengths == [9, 9]
    assert left.parent_status == "KILLED"
    assert left.every_core
    assert len(resumed.skipped) == 2 and len(resumed.results) == 6
    assert len(_children(_client(uri), "smoke")) == 8


def test_same_config_same_curves_in_another_store(smoke_store, interrupted):
    """The smoke study trained again in another store (here the interrupted one, finished
    by its rerun: every arm trained afresh, in two runs): the same values, bit for bit."""
    other = interrupted[0]
    first = {r.data.tags["study.arm"]: r for r in _children(_client(smoke_store), "smoke")}
    again = {r.data.tags["study.arm"]: r for r in _children(_client(other), "smoke")}
    assert first.keys() == again.keys()
    for key, run in again.items():
        assert _histories(_client(other), run) == _histories(_client(smoke_store), first[key])


def test_a_failed_write_leaves_no_half_written_run(tmp_path, monkeypatch, tf):
    """If MLflow fails while an arm is written, the study stops with the error and the arm's
    run is deleted: every child run in the store stays complete."""
    from mlflow.tracking import MlflowClient

    from study.run import run_study

    real = MlflowClient.log_batch
    calls = []

    def failing(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append(run_id)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    uri = tracking_uri(tmp_path)
    monkeypatch.setattr(MlflowClient, "log_batch", failing)
    # the parent's write, the first arm's, then the second arm's fails: two groups will do
    with pytest.raises(OSError, match="disk full"):
        run_study(load_config(SMOKE, ["losses=[bce, cce]"]), uri, progress=False)
    monkeypatch.setattr(MlflowClient, "log_batch", real)
    client = _client(uri)
    children = _children(client, "smoke")
    assert calls[2] not in {run.info.run_id for run in children}
    assert children and {run.info.status for run in children} == {"FINISHED"}
    for run in children:
        assert len(client.get_metric_history(run.info.run_id, "val_nll")) == 9
    assert every_thread_has_every_core()  # the writer gave its core back on the way out


def test_tracking_uri_defaults(tmp_path, monkeypatch):
    from study.tracking import absolute_uri, default_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert default_tracking_uri() == "sqlite:///elsewhere.db"
    assert absolute_uri("sqlite:///elsewhere.db") == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_force_replaces_the_stored_arms_instead_of_adding_beside_them(mse_only, capsys):
    from mlflow.entities import ViewType

    uri, args, first = mse_only
    capsys.readouterr()
    assert main([*args, "--force"]) == 0
    assert "their 2 earlier runs are in MLflow's trash" in capsys.readouterr().out
    client = _client(uri)
    active = _children(client, "smoke")
    assert len(active) == 2 and all(r.info.status == "FINISHED" for r in active)
    assert {r.data.tags["study.arm"]: _histories(client, r) for r in active} == first
    experiment = client.get_experiment_by_name("smoke").experiment_id
    trash = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)
    assert len(trash) == 2 and {r.info.run_id for r in trash}.isdisjoint(
        r.info.run_id for r in active)


def test_parent_tags_come_from_mlflow_context_and_git(smoke_store):
    import subprocess

    from tests.conftest import ROOT

    tags = _parents(_client(smoke_store), "smoke")[-1].data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"] == head
    assert tags["study.git_dirty"] in {"true", "false"}
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"


def test_a_copied_store_finds_its_artifacts(smoke_store, tmp_path):
    """MLflow records artifact folders as absolute paths; a store moved with its
    mlartifacts/ folder is pointed at the folder beside it when it is opened."""
    import shutil

    from study.tracking import StudyTracker, sqlite_path

    source = sqlite_path(smoke_store).parent
    copy = tmp_path / "moved"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("*.lock"))
    uri = f"sqlite:///{copy / 'mlflow.db'}"
    client = StudyTracker(uri).client
    parent = _parents(client, "smoke")[-1]
    assert parent.info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    assert {"config.yaml", "environment.json"} <= {
        f.path for f in client.list_artifacts(parent.info.run_id)}
    assert _parents(_client(smoke_store), "smoke")[-1].info.artifact_uri.startswith(
        (source / "mlartifacts").as_uri())  # the original is left as it was
