"""Who ran the study, from what, at which commit, with which packages: the tags and
versions the parent and child runs carry."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

PACKAGES = ("tensorflow", "keras", "mlflow", "numpy", "scikit-learn", "mnist1d", "pandas")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state() -> tuple[str, bool]:
    """The harness's commit and whether its work tree has uncommitted changes (the store's
    own files are ignored by .gitignore, so writing a study does not make it dirty)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(dirty)


def context_tags() -> dict[str, str]:
    """Who ran the study, from what, at which commit: MLflow's own context providers (user,
    source name and type, and git when the entry point sits in a repository), plus the
    harness's commit and whether it had uncommitted changes."""
    from mlflow.tracking.context.registry import resolve_tags

    commit, dirty = git_state()
    tags = {"mlflow.source.git.commit": commit, **resolve_tags({})}
    tags["study.git_dirty"] = str(dirty).lower()
    return tags

