"""The request path's holder of the live routing view, swapped in without a restart.

``Router.swap`` validates a snapshot, compiles it into a ``learner.routing.View`` (posterior
draws seeded by the snapshot version, so every replica logs the same propensities) and
replaces the live view with one assignment. A request reads ``Router.view`` once and decides
on that view (``learner.routing.decide``), so a swap in between cannot mix two snapshots.
"""

from __future__ import annotations

import logging
import threading

from learner.cascade import CascadeArm
from learner.routing import Prices, RouteChoice, RoutingParams, View
from learner.snapshot import Snapshot, SnapshotError, validate

__all__ = ["Prices", "RouteChoice", "Router", "View"]

log = logging.getLogger("turnout.router")


class Router:
    def __init__(self, prices: Prices, params: RoutingParams, cascades: tuple[CascadeArm, ...] = ()) -> None:
        self._prices = prices
        self._params = params
        self._cascades = cascades  # columns of the routing axis that are cascades (learner/cascade.py)
        self._lock = threading.Lock()
        self._view: View | None = None
        self.rejected = 0

    @property
    def view(self) -> View:
        view = self._view
        if view is None:
            raise RuntimeError("no snapshot loaded")
        return view

    @property
    def pricing(self) -> Prices:
        return self._prices

    @property
    def params(self) -> RoutingParams:
        return self._params

    @property
    def cascades(self) -> tuple[CascadeArm, ...]:
        return self._cascades

    def swap(self, snapshot: Snapshot) -> bool:
        """Install ``snapshot`` if it validates and is newer; keep the last good one otherwise."""
        try:
            validate(snapshot)
            view = View(snapshot, self._prices, self._params, self._cascades)
            view.draw_all()  # every draw made here, none on the request path
        except (SnapshotError, ValueError) as exc:
            self.rejected += 1
            log.error("snapshot v%s rejected, keeping the live one: %s", snapshot.version, exc)
            return False
        with self._lock:
            current = self._view
            if current is not None and snapshot.version <= current.snapshot.version and snapshot.reason != "rollback":
                return False
            self._view = view
        log.info("snapshot v%d live (%s)", snapshot.version, snapshot.reason)
        return True
