"""The groups a process has traced, kept for its next training of the same shapes.

Tracing a group's graphs (its training loop, crossings and evaluations) costs 1.5-3 s, as much
as training a small group. A process that trains the same group again gets the traced one
back, its state put in afresh by ``load``: the estimate's probe and the study after it, the
chunks of a big group, a Ray worker's next chunk, a notebook's second study, the test suite's
many small studies. The key is everything a group's graphs and constants are made from
(``batched.group_key``); the values are the same bits as from a fresh group (tested).

Memory: the newest group is always kept (the next chunk of a group reuses it, as it always
has); older ones only while the kept groups' data and slots fit in ``BUDGET_BYTES``, least
recently used first out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

G = TypeVar("G")

BUDGET_BYTES = 256 * 2**20


class Traced(Generic[G]):
    def __init__(self, budget_bytes: int = BUDGET_BYTES):
        self.budget_bytes = budget_bytes
        self.groups: OrderedDict[Hashable, tuple[G, int]] = OrderedDict()
        self.made = 0  # groups traced, for the tests and the estimate
        self.lock = threading.Lock()  # Ray runs a worker's tasks one at a time; a user may not

    def get(self, key: Hashable, make: Callable[[], G], nbytes: Callable[[G], int]) -> G:
        """The group kept under ``key``, else ``make()``'s, now the most recent."""
        with self.lock:
            kept = self.groups.pop(key, None)
        if kept is None:
            group = make()
            kept = (group, nbytes(group))
            self.made += 1
        with self.lock:
            self.groups[key] = kept
            while len(self.groups) > 1 and sum(n for _, n in self.groups.values()) \
                    > self.budget_bytes:
                self.groups.popitem(last=False)
        return kept[0]

    def __contains__(self, key: Hashable) -> bool:
        return key in self.groups

    def clear(self) -> None:
        with self.lock:
            self.groups.clear()
