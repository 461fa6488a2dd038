"""A spending cap in USD per UTC day, for calls made off the request path (judge, shadow).

A call is made only if its estimated cost still fits (``allows``); what it actually cost is added
after (``spend``), so a day may end a single call over its cap, never more. The clock is injected.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

__all__ = ["DailyBudget"]

_DAY_S = 86_400


class DailyBudget:
    def __init__(self, usd_per_day: float, clock: Callable[[], float] = time.time) -> None:
        self.usd_per_day = usd_per_day
        self.clock = clock
        self._lock = threading.Lock()
        self._day = -1
        self._spent = 0.0
        self.refused = 0  # calls refused by the cap, since start

    def _roll(self) -> None:
        day = int(self.clock() // _DAY_S)
        if day != self._day:
            self._day, self._spent = day, 0.0

    def allows(self, estimate_usd: float) -> bool:
        """Whether a call estimated at ``estimate_usd`` fits in what is left of today's cap."""
        with self._lock:
            self._roll()
            ok = self._spent + max(0.0, estimate_usd) <= self.usd_per_day
            self.refused += not ok
            return ok

    def spend(self, usd: float) -> None:
        with self._lock:
            self._roll()
            self._spent += max(0.0, usd)

    def spent_today(self) -> float:
        with self._lock:
            self._roll()
            return self._spent
