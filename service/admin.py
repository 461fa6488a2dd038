"""What the admin API does in the process that holds the store and routes: the operations.

``Admin`` composes ``learner.admin`` (snapshots over the ports) with this process's router, so
a rollback is live here at once (other replicas poll it), and runs a learning cycle on demand.
Writes to the snapshot line (a rollback, a cycle) take the process's one write lock, shared
with its scheduled cycles, so two of them never publish the same version. The off-policy
evaluation, the learner's status and the effective configuration are handed in by the
composition root (``service.runtime``), which may reach ``simulations/``; the request path may not.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from learner.admin import (
    LearnedNow, LearnerStatus, Rollback, SnapshotDetail, SnapshotList, list_snapshots, load_snapshot, roll_back, snapshot_detail,
)  # fmt: skip
from learner.ports import LearnerLog, SnapshotStore
from learner.snapshot import Snapshot
from service.clusters_about import ClusterAbout, ClusterTexts
from service.routing import Router

__all__ = ["Admin"]


class Admin:
    """The admin API's operations. ``align`` fits a stored snapshot to this process's pool;
    ``learn`` runs one learning cycle and returns the snapshot it ends on."""

    def __init__(self, *, router: Router, snapshots: SnapshotStore, learner_log: LearnerLog,
                 align: Callable[[Snapshot], Snapshot], learn: Callable[[], Snapshot],
                 status: Callable[[], LearnerStatus], config: Callable[[], dict[str, Any]],
                 ope: Callable[[Any], Any] | None = None, candidate: type | None = None,
                 about: ClusterTexts | None = None, write_lock: threading.Lock | None = None,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:  # fmt: skip
        self.router = router
        self._snapshots = snapshots
        self._log = learner_log
        self._align = align
        self._learn = learn
        self.status = status
        self.config = config
        self.ope = ope  # Candidate -> OpeReport; None: this process cannot evaluate
        self.candidate = candidate  # the struct ``ope`` takes (``simulations.candidate.Candidate``)
        self._about = about
        self._lock = write_lock or threading.Lock()
        self._clock_ms = clock_ms

    @property
    def live(self) -> int:
        return self.router.view.snapshot.version

    def snapshots(self, limit: int) -> SnapshotList:
        return list_snapshots(self._snapshots, limit, self.live)

    def snapshot(self, version: int) -> SnapshotDetail:
        """Raises ``LookupError`` for an unknown version."""
        return snapshot_detail(load_snapshot(self._snapshots, version), self._log.drift_events(1000), self.live)

    def rollback(self, version: int) -> Rollback:
        """A new snapshot that routes as ``version`` did, saved and live in this process."""
        with self._lock:
            snap = roll_back(self._snapshots, version, self._clock_ms())
            self.router.swap(self._align(snap))
        return Rollback(snap.version, version, snap.parent)

    def learn(self) -> LearnedNow:
        """One learning cycle now (as ``turnout learn --once``): the snapshot it ends on."""
        with self._lock:
            before = self.live
            snap = self._learn()
        return LearnedNow(snap.version, snap.watermark_ms, snap.version > before)

    def clusters(self, since_ms: int, until_ms: int) -> list[ClusterAbout]:
        """What each cluster of the live snapshot is about (stored prompts from [since_ms, until_ms))."""
        if self._about is None:
            return []
        return self._about.about(self.router.view.snapshot, since_ms, until_ms)
