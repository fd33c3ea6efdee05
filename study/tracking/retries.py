"""Retrying a tracking server that stops answering (with ``tenacity``), one clock per outage:
every call that fails while the server is away counts against the same budget (``Outage``),
and the first answer starts a new one."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from study.tracking.faults import environment

T = TypeVar("T")

# A tracking server that goes away mid-study. MLflow's client would retry each request 7 times
# with exponential backoff (about 4 minutes per request, so hours for a study's queue of writes)
# and wait up to 120 s for each answer. A study's requests go out once, with a short timeout,
# and the study retries a whole arm's write itself, with backoff, until one outage has lasted
# the store timeout (--store-timeout): then it stops with one line, exit 3.
STORE_TIMEOUT_S = 120.0
REQUEST_RETRIES, REQUEST_TIMEOUT_S = "0", "15"  # MLflow's own; the timeout is the user's if set
BACKOFF_S = (1, 2, 4, 8)  # waits between tries; then every 8 s, so a server back is seen soon


def requests_once():
    """While a study runs, MLflow makes each HTTP request once, with a short timeout:
    ``Outage.call`` does the retrying, within the store timeout."""
    return environment(
        MLFLOW_HTTP_REQUEST_MAX_RETRIES=REQUEST_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT=os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
        or REQUEST_TIMEOUT_S)


class Outage:
    """The clock of a tracking server's outage, shared by every call retried through it."""

    def __init__(self, budget: float):
        self.budget = budget
        self.since: float | None = None  # monotonic time of the first failed try
        # Set when the study stops for another reason (Ctrl-C): an outage is not waited out.
        self.stopped = False

    def call(self, attempt: Callable[[], T], retryable: Callable[[Exception], bool],
             give_up: Callable[[Exception], Exception],
             waiting: Callable[[float, float], None]) -> T:
        """``attempt()``, tried again with backoff (``BACKOFF_S``) while it fails with a
        ``retryable`` error, until the outage has lasted ``budget`` seconds: then
        ``give_up(error)`` is raised. ``waiting`` hears every second how long the outage
        has lasted, and the budget."""
        tried = 0.0

        def timed() -> T:
            nonlocal tried
            tried = time.monotonic()
            return attempt()

        def started(state: tenacity.RetryCallState) -> None:
            if self.since is None:  # a hung server's first silence counts too
                self.since = tried

        def over(state: tenacity.RetryCallState) -> bool:
            return time.monotonic() >= self.since + self.budget or self.stopped

        def wait(state: tenacity.RetryCallState) -> float:
            backoff = BACKOFF_S[min(state.attempt_number, len(BACKOFF_S)) - 1]
            return max(0.0, min(backoff, self.since + self.budget - time.monotonic()))

        def sleep(seconds: float) -> None:  # in slices, saying so, stopping when told
            until = time.monotonic() + seconds
            while (left := until - time.monotonic()) > 0 and not self.stopped:
                waiting(time.monotonic() - self.since, self.budget)
                time.sleep(min(1.0, left))

        def failed(state: tenacity.RetryCallState) -> T:
            raise give_up(state.outcome.exception()) from None

        value = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retryable), after=started, stop=over, wait=wait,
            sleep=sleep, retry_error_callback=failed)(timed)
        self.since = None  # the server answers: a later outage has a new budget
        return value
