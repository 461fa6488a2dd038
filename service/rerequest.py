"""Re-requests: asking again, soon, in other words, says the last answer did not do.

For each asker (tenant + ``user``, or tenant + session header) the last decision and its prompt
embedding are kept. A new prompt within ``window_s`` whose embedding has cosine similarity of at
least ``min_cosine`` with the last one makes the last decision's implicit feedback: reward 0,
kind ``re_request``. Each decision is judged at most once. Bounded memory (LRU of askers).
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import numpy as np

__all__ = ["RerequestTracker"]


class RerequestTracker:
    def __init__(self, window_s: float, min_cosine: float, capacity: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.window_s = window_s
        self.min_cosine = min_cosine
        self._capacity = capacity
        self._clock = clock
        self._last: collections.OrderedDict[tuple[str, str], tuple[float, str, np.ndarray]] = collections.OrderedDict()

    def observe(self, tenant: str, asker: str, decision_id: str, embedding: np.ndarray) -> str | None:
        """Record a decision; return the previous decision's id if this request re-asks it.

        embedding: (d,) unit-norm float32.
        """
        if not asker:
            return None
        now = self._clock()
        key = (tenant, asker)
        prev = self._last.pop(key, None)
        self._last[key] = (now, decision_id, embedding)
        if len(self._last) > self._capacity:
            self._last.popitem(last=False)
        if prev is None or now - prev[0] > self.window_s:
            return None
        return prev[1] if float(np.dot(prev[2], embedding)) >= self.min_cosine else None

    def forget(self, tenant: str, asker: str, decision_id: str) -> None:
        """Drop the asker's last decision if it is ``decision_id`` (it failed: nothing to re-ask)."""
        entry = self._last.get((tenant, asker))
        if entry is not None and entry[1] == decision_id:
            del self._last[(tenant, asker)]
