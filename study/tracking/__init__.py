"""Tracking: the one package that writes to MLflow, one module per job.

- ``store``: where the store is (URIs, the link to the view) and whether it can be used
  (``check_store``); ``faults``: whether it answers (``unreachable``, ``out_of_room``);
- ``retries``: a tracking server that stops answering is retried with backoff for at most
  the study's store timeout, one clock per outage, then StoreUnreachable;
- ``connection``: the MLflow client and the housekeeping before a study trains;
  ``server_claim``: one process at a time writes a study into a server;
- ``runs``: the parent run and one child run per arm (``StudyTracker``);
  ``writer``: the background thread that writes them (``ArmWriter``);
- ``context``: who ran it, from what (git, MLflow's user and source tags, package
  versions); ``describe``: the experiment's description; ``artifacts``: where a SQLite
  store's artifacts live.

The saved views the runs are browsed with are ``study.browse``.
"""

from study.tracking.artifacts import relocate_artifacts
from study.tracking.context import context_tags, git_state, package_versions
from study.tracking.faults import out_of_room, unreachable
from study.tracking.retries import STORE_TIMEOUT_S
from study.tracking.runs import StudyTracker, arm_params
from study.tracking.server_claim import LEASE_S, claim_name
from study.tracking.store import (
    absolute_uri,
    browse_link,
    check_store,
    default_tracking_uri,
    sqlite_path,
)
from study.tracking.writer import ArmWriter

__all__ = ["LEASE_S", "STORE_TIMEOUT_S", "ArmWriter", "StudyTracker", "absolute_uri",
           "arm_params", "browse_link", "check_store", "claim_name", "context_tags",
           "default_tracking_uri", "git_state", "out_of_room", "package_versions",
           "relocate_artifacts", "sqlite_path", "unreachable"]
