"""One clock per outage (study.tracking.retries.Outage), on a fake clock: the tries' times
follow the backoff, the last try comes at the budget's end, every call made during one outage
counts against the same budget, an answer starts a new one, an error no wait cures is raised
at once, and a study that stops (Ctrl-C) does not wait the outage out."""

from __future__ import annotations

import pytest

from study.tracking import retries


class Clock:
    def __init__(self):
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Gone(Exception):
    pass


class GaveUp(Exception):
    pass


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(retries, "time", clock)
    return clock


def _server(clock: Clock, answers_after: float | None = None, tries: list | None = None):
    """An attempt that fails with Gone until ``answers_after`` (never if None)."""
    def attempt() -> str:
        tries.append(clock.now)
        if answers_after is None or clock.now < answers_after:
            raise Gone()
        return "ok"
    return attempt


def _call(outage: retries.Outage, attempt, heard: list | None = None):
    return outage.call(attempt, lambda err: isinstance(err, Gone), lambda err: GaveUp(err),
                       lambda waited, budget: heard.append((waited, budget))
                       if heard is not None else None)


def test_tries_follow_the_backoff_and_stop_at_the_budget(clock):
    tries, heard = [], []
    with pytest.raises(GaveUp):
        _call(retries.Outage(20.0), _server(clock, tries=tries), heard)
    # waits 1, 2, 4, 8, then cut to the budget's end
    assert [t - 100 for t in tries] == [0, 1, 3, 7, 15, 20]
    assert heard[0] == (0, 20.0) and heard[-1] == (19, 20.0)  # every second of the outage
    assert [w for w, _ in heard] == list(range(20))


def test_one_clock_per_outage_and_an_answer_starts_a_new_one(clock):
    outage, tries = retries.Outage(10.0), []
    assert _call(outage, _server(clock, answers_after=106, tries=tries)) == "ok"
    assert [t - 100 for t in tries] == [0, 1, 3, 7]
    assert outage.since is None  # the server answered
    tries.clear()
    started = clock.now
    with pytest.raises(GaveUp):  # a new outage: a whole budget again
        _call(outage, _server(clock, tries=tries))
    assert clock.now - started == 10.0
    tries.clear()
    with pytest.raises(GaveUp):  # the same outage, a later call: no budget left
        _call(outage, _server(clock, tries=tries))
    assert len(tries) == 1


def test_an_error_no_wait_cures_is_raised_at_once(clock):
    def attempt():
        raise KeyError("4xx")
    outage = retries.Outage(10.0)
    with pytest.raises(KeyError):
        _call(outage, attempt)
    assert clock.now == 100.0 and outage.since is None


def test_a_stopped_study_does_not_wait_the_outage_out(clock):
    outage, tries = retries.Outage(60.0), []

    def attempt():
        tries.append(clock.now)
        outage.stopped = len(tries) == 2  # Ctrl-C during the second try
        raise Gone()
    with pytest.raises(GaveUp):
        _call(outage, attempt)
    assert [t - 100 for t in tries] == [0, 1]
