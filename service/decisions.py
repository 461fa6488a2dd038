"""Recent decisions by id, for the feedback API: a bounded LRU in front of the row store.

Decisions not yet written (still in the event pipeline) are found in the LRU; older ones in
the store. This keeps a valid decision id from ever getting a spurious 404.
"""

from __future__ import annotations

import collections
import threading

from feedback.ports import DecisionRef, RowStore

__all__ = ["DecisionIndex"]


class DecisionIndex:
    def __init__(self, rows: RowStore, capacity: int) -> None:
        self._rows = rows
        self._capacity = capacity
        self._lru: collections.OrderedDict[str, tuple[DecisionRef, str]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def remember(self, ref: DecisionRef, user: str = "") -> None:
        with self._lock:
            self._lru[ref.decision_id] = (ref, user)
            if len(self._lru) > self._capacity:
                self._lru.popitem(last=False)

    def cached(self, decision_id: str) -> DecisionRef | None:
        with self._lock:
            entry = self._lru.get(decision_id)
        return entry[0] if entry else None

    def user(self, decision_id: str) -> str:
        """The ``user`` of a recent decision ("" if unknown or too old to be cached)."""
        with self._lock:
            entry = self._lru.get(decision_id)
        return entry[1] if entry else ""

    def lookup(self, decision_id: str) -> DecisionRef | None:
        """From the LRU, else from the store (blocking I/O: call off the event loop)."""
        return self.cached(decision_id) or self._rows.find_decision(decision_id)
