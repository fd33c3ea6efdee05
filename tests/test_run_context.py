"""Runs that belong somewhere: every child run carries the user and source tags MLflow's
fluent API gives a run, ``study.git_dirty`` counts tracked changes only (checked on a real
git repository), and the experiment's description says what the study is and how to read
it, with the config's strings escaped and a description written by hand kept."""

from __future__ import annotations

import subprocess

from mlflow.tracking import MlflowClient

from tests.conftest import ROOT, shrink

FLUENT = ("mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.source.git.commit")


def _runs(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("study.role") == "parent"]
    return experiment, parents, [r for r in runs if "study.arm" in r.data.tags]


def test_child_runs_carry_mlflow_user_and_source_tags(smoke_store):
    _, parents, children = _runs(smoke_store)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert len(children) == 8
    parent = parents[0].data.tags
    assert parent["mlflow.source.git.commit"] == head
    assert parent["mlflow.source.type"] == "LOCAL" and parent["mlflow.user"]
    for child in children:
        assert {key: child.data.tags.get(key) for key in FLUENT} == \
            {key: parent[key] for key in FLUENT}


def _git(repo, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=repo, check=True, capture_output=True)


def test_git_dirty_means_tracked_changes_only(tmp_path):
    from study.tracking import git_state

    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / "mlflow.db").write_text("a store beside the code")  # untracked
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "code.py").write_text("x = 2\n")  # a tracked file changed
    assert git_state(tmp_path) == (head, True)


def test_the_experiment_description_says_what_the_study_is(smoke_store):
    experiment, _, _ = _runs(smoke_store)
    note = experiment.tags["mlflow.note.content"]
    for said in ("**Study smoke**", "on digits,", "8 arms", "1 seed each", "*sgd*",
                 "- *bce*: binary cross\\-entropy", "- *mse*:", "*glorot*",
                 "*saturated\\_wrong m\\=4*", "0.5 (the target)", "*losses from ...*",
                 "make report EXPERIMENT=smoke", "reports/smoke/report.html"):
        assert said in note, said


def test_the_description_escapes_the_configs_strings_and_keeps_a_hand_written_one(
        smoke_config):
    from study.grid import expand_grid
    from study.tracking.describe import (
        NOTE_HASH_TAG,
        NOTE_TAG,
        experiment_note,
        may_write_note,
        note_hash,
    )

    hostile = "<img src=x onerror=alert(1)>"
    config = shrink(smoke_config, optimizers=[{"name": "sgd", "lr": [0.5], "label": hostile}])
    note = experiment_note(config, expand_grid(config))
    assert "<" not in note and ">" not in note  # shown as typed, never as markup
    assert "optimizers *&lt;img src\\=x onerror\\=alert\\(1\\)&gt;*" in note

    assert may_write_note({})  # none yet
    assert may_write_note({NOTE_TAG: note, NOTE_HASH_TAG: note_hash(note)})  # ours
    assert not may_write_note({NOTE_TAG: "mine", NOTE_HASH_TAG: note_hash(note)})  # edited
    assert not may_write_note({NOTE_TAG: "mine"})  # someone else's
