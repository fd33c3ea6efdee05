"""Progress of a long job (a study's arms, a report's notebook cells): tqdm's bar when it
draws on a terminal; anywhere else (a log file, a pipe, CI) a line at each tenth of the work,
at most one per 10 s, and at least one every 5 min. A bar redrawn into a file is hundreds
of redraws (525, 43 KB, for a one-minute study); these lines are a dozen at most for any
study under an hour, so `python -m study run ... > log 2>&1` leaves a log one can read.
"""

from __future__ import annotations

import sys
import threading
import time

# A line when the work crosses a tenth, unless the last line is younger than MIN_GAP_S (the
# next tenth says it then); a line anyway after MAX_GAP_S, so a long study shows it is alive.
MIN_GAP_S = 10.0
MAX_GAP_S = 300.0


def progress(total: float, desc: str, unit: str, *, disable: bool = False, file=None,
             bar_format: str | None = None):
    """A progress object with tqdm's ``update``, ``set_postfix_str``, ``close`` and ``with``:
    tqdm itself on a terminal, ``Lines`` elsewhere, a silent tqdm when ``disable``."""
    from tqdm.auto import tqdm

    file = file or sys.stderr
    if disable:
        return tqdm(total=total, disable=True)
    if is_terminal(file):
        return tqdm(total=total, desc=desc, unit=unit, file=file, bar_format=bar_format)
    return Lines(total, desc, unit, file)


def alerting(bar):
    """How to tell the reader something they must not miss: a line of its own in a log, the
    postfix of a bar on a terminal."""
    return bar.alert if isinstance(bar, Lines) else bar.set_postfix_str


def is_terminal(file) -> bool:
    isatty = getattr(file, "isatty", None)
    return bool(isatty and isatty())


class Lines:
    """Progress as whole lines, e.g. ``default: 342/1,140 arms (30%), 61 s so far, about
    2 min 22 s left, 330 stored``. The time left is the rate since the previous line applied
    to what is left, so the first line has none: what comes before it is often start-up
    (a notebook's first cells load the store and compute the whole analysis, then the rest
    draws figures in seconds), and a rate that includes it can be ten times too slow."""

    def __init__(self, total: float, desc: str, unit: str, file, clock=time.monotonic):
        self.total, self.desc, self.unit, self.file, self.clock = total, desc, unit, file, clock
        self.n = 0.0
        self.postfix = ""
        self.started = self.last_line = clock()
        self.tenths = 0  # of the work, when the last line was written
        self.share_then = None  # the share done at the last line (None: no line yet)
        self.closed = False
        self.alerting = False  # the last line was an alert
        self.lock = threading.Lock()  # the MLflow writer thread sets the postfix

    def update(self, n: float = 1) -> None:
        with self.lock:
            self.n += n
            now = self.clock()
            since = now - self.last_line
            if self._share() >= 1:  # ``close`` says so, with the time it took
                return
            if (self._tenths() > self.tenths and since >= MIN_GAP_S) or since >= MAX_GAP_S:
                self._line(now)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        # shown with the next line, not a line of its own
        self.postfix, self.alerting = text, False

    def alert(self, text: str) -> None:
        """Something the reader must not miss (the store stopped answering): a line at once,
        then one at most every MIN_GAP_S while it lasts, whatever the work's share; a bar
        shows it as its postfix (``alerting``)."""
        with self.lock:
            now, self.postfix = self.clock(), text
            if not self.alerting or now - self.last_line >= MIN_GAP_S:
                self._line(now)
            self.alerting = True

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        """papermill sets ``n`` to the total when a notebook ends; ``close`` says it."""

    def close(self) -> None:
        """The last line, once the work is all done; work stopped short (Ctrl-C, an error)
        gets none: the one line that says why is the caller's."""
        with self.lock:
            if not self.closed and self._share() >= 1:
                self._line(self.clock())
            self.closed = True

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        done = f"{self.n:,.0f}/{self.total:,.0f} {self.unit}s"
        share = self._share()
        if share >= 1:
            text = f"{self.desc}: {done} in {duration(elapsed)}"
        else:
            text = f"{self.desc}: {done} ({share:.0%}), {duration(elapsed)} so far"
            if self.share_then is not None and share > self.share_then:
                rate = (share - self.share_then) / (now - self.last_line)
                text += f", about {duration((1 - share) / rate)} left"
        if self.postfix:
            text += f", {self.postfix}"
        print(text, file=self.file, flush=True)
        self.last_line, self.share_then = now, share
        self.tenths = self._tenths()

    def _share(self) -> float:
        """The share of the work done; fractions of arms that add up to a hair under the
        total count as all of it."""
        if not self.total or self.n >= self.total * (1 - 1e-9):
            return 1.0
        return self.n / self.total

    def _tenths(self) -> int:
        return int(10 * self._share())


def duration(seconds: float) -> str:
    """'42 s', '3 min 5 s', '1 h 20 min': the precision a person reads in a log."""
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"
