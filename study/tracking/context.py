"""Who ran the study, from what, at which commit, with which packages: the tags and
versions the parent and child runs carry."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

# The harness's repository (this file is study/tracking/context.py).
HARNESS = Path(__file__).resolve().parents[2]
PACKAGES = ("tensorflow", "keras", "mlflow", "numpy", "scikit-learn", "mnist1d", "pandas")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state(root: Path = HARNESS) -> tuple[str, bool]:
    """The commit of the repository at ``root`` (the harness's own by default) and whether
    its tracked files have uncommitted changes. Untracked files do not count: a store, a
    report or a scratch file beside the code does not change what ran."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(dirty.strip())


def context_tags() -> dict[str, str]:
    """Who ran the study, from what, at which commit: MLflow's own context providers (user,
    source name and type, and git when the entry point sits in a repository), as its fluent
    API tags a run, plus the harness's commit and whether it had uncommitted changes."""
    from mlflow.tracking.context.registry import resolve_tags

    commit, dirty = git_state()
    tags = {"mlflow.source.git.commit": commit, **resolve_tags({})}
    tags["study.git_dirty"] = str(dirty).lower()
    return tags


def mlflow_tags(tags: dict[str, str]) -> dict[str, str]:
    """MLflow's own among ``tags`` (``mlflow.user``, ``mlflow.source.*``): what every child
    run carries too, so MLflow's UI shows who made it and from what."""
    return {key: value for key, value in tags.items() if key.startswith("mlflow.")}
