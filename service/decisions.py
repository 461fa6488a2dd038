"""Recent decisions by id, for the feedback API: a bounded LRU in front of the row store.

Decisions not yet written (still in the event pipeline) are found in the LRU; older ones in
the store. This keeps a valid decision id from ever getting a spurious 404.

Entries are tuples of strings and ints, which the garbage collector stops tracking: a full LRU
(200,000 by default) adds nothing to the pauses of a full collection.
"""

from __future__ import annotations

import collections
import threading
import time

from learner.ports import DecisionRef, RowStore

__all__ = ["DecisionIndex"]


class DecisionIndex:
    def __init__(self, rows: RowStore, capacity: int, settle_s: float = 0.0) -> None:
        """``settle_s``: how long a decision found nowhere is looked for again in the store (several
        serving processes: the decision may be on its way there from another one)."""
        self._rows = rows
        self._settle_s = settle_s
        self._capacity = capacity
        # decision_id -> (tenant, cluster, model, snapshot_version, user)
        self._lru: collections.OrderedDict[str, tuple[str, int, str, int, str]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def remember(self, ref: DecisionRef, user: str = "") -> None:
        with self._lock:
            self._lru[ref.decision_id] = (ref.tenant, ref.cluster, ref.model, ref.snapshot_version, user)
            if len(self._lru) > self._capacity:
                self._lru.popitem(last=False)

    def cached(self, decision_id: str) -> DecisionRef | None:
        with self._lock:
            entry = self._lru.get(decision_id)
        return DecisionRef(decision_id, entry[0], entry[1], entry[2], entry[3]) if entry else None

    def user(self, decision_id: str) -> str:
        """The ``user`` of a recent decision ("" if unknown or too old to be cached)."""
        with self._lock:
            entry = self._lru.get(decision_id)
        return entry[4] if entry else ""

    def lookup(self, decision_id: str) -> DecisionRef | None:
        """From the LRU, else from the store (blocking I/O: call off the event loop)."""
        found = self.cached(decision_id) or self._rows.find_decision(decision_id)
        deadline = time.monotonic() + self._settle_s
        while found is None and time.monotonic() < deadline:
            time.sleep(0.1)
            found = self._rows.find_decision(decision_id)
        return found
