"""One process at a time writes a study into a store without a lock file (a tracking server,
a database): the server arbitrates a claim, an experiment named ``claim_name(study)``.
Creating an experiment whose name exists fails, so of two processes only one creates it."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from study.claims import claim_is_live, this_process
from study.errors import ConfigError
from study.tracking.faults import REACH_TIMEOUT_S, environment

# A study's claim on a tracking server: its owner renews the lease every quarter of it, and
# a claim from another machine whose lease has run out no longer holds the study (a dead
# process there cannot be asked). A process cut off from the server for longer than this
# (--store-timeout above it) may lose its claim.
LEASE_S = 600.0
CLAIM_TRIES = 5  # claims taken and released by others between two looks: give up then


def claim_name(study: str) -> str:
    """The claim experiment's name: a study name has no spaces, so no study is named this."""
    return f"{study} (claim)"


@contextlib.contextmanager
def hold(tracker, study: str) -> Iterator[None]:
    """Hold ``study`` for the ``with`` block. The other process stops with a ConfigError (one
    line, exit 2) while the holder lives (``claim_is_live``), or retires a dead holder's
    claim and tries again. Leaving the block retires the claim: renamed out of the way (an
    experiment in MLflow's trash keeps its name) and deleted."""
    claim_id = tracker.patiently(lambda: _take(tracker.client, tracker.uri, study))
    client = tracker.client
    stop = threading.Event()
    renewer = threading.Thread(target=_renew_lease, args=(client, claim_id, stop),
                               name="study-claim", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        # One short try: a server that is gone leaves the claim to its owner's death or
        # its lease, as after a kill -9.
        with contextlib.suppress(Exception), \
                environment(MLFLOW_HTTP_REQUEST_TIMEOUT=REACH_TIMEOUT_S):
            _retire(client, claim_id, study, "released")


def _claim_tags() -> dict[str, str]:
    return {**this_process(), "study.lease_until": f"{time.time() + LEASE_S:.0f}",
            "mlflow.note.content": "Held by the `study run` that writes this study now; "
                                   "deleted when it ends."}


def _take(client, uri: str, study: str) -> str:
    from mlflow.exceptions import MlflowException

    name = claim_name(study)
    for _ in range(CLAIM_TRIES):
        try:
            return client.create_experiment(name, tags=_claim_tags())
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        held = client.get_experiment_by_name(name)
        if held is None:  # released since
            continue
        owner = {key: held.tags.get(key) for key in this_process()}
        if owner == this_process():  # ours: a try whose answer was lost
            return held.experiment_id
        if held.lifecycle_stage == "active" and claim_is_live(held.tags, time.time()):
            raise ConfigError(
                f"study {study!r} is being run into {uri} by another process (pid "
                f"{held.tags.get('study.pid')} on {held.tags.get('study.host')}); wait "
                "for it to finish, or stop it and rerun")
        with contextlib.suppress(MlflowException):  # another rerun retired it first
            _retire(client, held.experiment_id, study, "expired")
    raise ConfigError(f"study {study!r}: its claim in {uri} changed hands "
                      f"{CLAIM_TRIES} times while this run tried to take it; rerun")


def _retire(client, claim_id: str, study: str, why: str) -> None:
    if client.get_experiment(claim_id).lifecycle_stage == "deleted":
        client.restore_experiment(claim_id)  # deleted by hand: free its name
    client.rename_experiment(claim_id, f"{study} (claim {claim_id} {why})")
    client.delete_experiment(claim_id)


def _renew_lease(client, claim_id: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_S / 4):
        with contextlib.suppress(Exception):  # the server is away: the next renewal
            client.set_experiment_tag(claim_id, "study.lease_until",
                                      f"{time.time() + LEASE_S:.0f}")
