"""One learning cycle: read what arrived since the watermark, fold it in, publish a snapshot.

``LearningCycle`` is the thin I/O shell around the pure ``learner.fold``: it reads one window of
aggregated rows from the row store, folds it, re-clusters when margins decayed, writes the
learner log and saves the snapshot, then hands it to whoever serves it.

The snapshot carries the watermark, the evidence, the drift detectors' memory and the learned
budget weights, so saving it is the commit point of the cycle: a crash before the save leaves
the previous snapshot live and the watermark unmoved, and the next cycle reads the same window
again (plus what came since), counting each fact once.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

import numpy as np

from learner.cascade import CASCADE_POLICY
from learner.drift import Alarm
from learner.fold import LearnerParams, PoolPrior, Window, align, fold, rebuild_clusters, recluster_snapshot
from learner.ports import DriftEvent, LearnerLog, RewardRow, RowStore, SnapshotStore, WindowStats
from learner.snapshot import Snapshot, centroid_array, decode_snapshot, encode_snapshot, validate, validate_pool

__all__ = [
    "LearnerParams",
    "LearningCycle",
    "PoolPrior",
    "Window",
    "align",
    "rebuild_clusters",
    "fold",
    "recluster_snapshot",
]  # the pure parts are re-exported: callers need one import

log = logging.getLogger("turnout.learner")


def _windows(version: int, window: Window) -> list[WindowStats]:
    out = [
        WindowStats(version, window.since_ms, window.until_ms, st.clustering, st.cluster, st.model, st.policy,
                    st.decisions, st.cost_usd, st.margin_sum, 0.0, 0.0)
        for st in window.decisions
    ]  # fmt: skip
    acc: dict[tuple[int, int, str], list[float]] = {}
    for r in window.rewards:  # feedback is not per policy: its rows have policy ""
        row = acc.setdefault((r.clustering, r.cluster, r.model), [0.0, 0.0])
        row[0] += r.count
        row[1] += r.reward_sum
    out += [WindowStats(version, window.since_ms, window.until_ms, c, k, mdl, "", 0, 0.0, 0.0, v[0], v[1])
            for (c, k, mdl), v in acc.items()]  # fmt: skip
    return out


def _events(before: Snapshot, after: Snapshot, alarms: list[Alarm], at_ms: int) -> list[DriftEvent]:
    margin = [a for a in alarms if a.model < 0]
    reclustered = after.clustering != before.clustering
    out = []
    if margin:
        out.append(DriftEvent(
            after.version, at_ms, before.clustering, "margin", tuple(a.cluster for a in margin), "",
            float(np.mean([a.old_value for a in margin])), float(np.mean([a.new_value for a in margin])),
            "recluster" if reclustered else "none", after.clustering if reclustered else 0,
        ))  # fmt: skip
    out += [
        DriftEvent(after.version, at_ms, before.clustering, "reward", (a.cluster,), before.models[a.model],
                   a.old_value, a.new_value, "reset")
        for a in alarms if a.model >= 0
    ]  # fmt: skip
    return out


class _NoLog:
    def record(self, version: int, windows: Sequence[WindowStats], drift: Sequence[DriftEvent]) -> None:
        pass

    def drift_events(self, limit: int = 100) -> list[DriftEvent]:
        return []

    def windows(self, since_version: int = 0) -> list[WindowStats]:
        return []


def _stack(blobs: list[bytes]) -> np.ndarray:
    return np.stack([np.frombuffer(b, dtype="<f4") for b in blobs]) if blobs else np.zeros((0, 0), np.float32)


class LearningCycle:
    """The I/O shell of learning: ports in, one snapshot out per ``run``. Thread-safe."""

    def __init__(
        self,
        rows: RowStore,
        snapshots: SnapshotStore,
        pool: PoolPrior,
        params: LearnerParams,
        rng: np.random.Generator,
        publish: Callable[[Snapshot], None] = lambda s: None,
        before: Callable[[], None] = lambda: None,
        learner_log: LearnerLog | None = None,
    ) -> None:
        self._rows = rows
        self._snapshots = snapshots
        self._pool = pool
        self._params = params
        self._rng = rng
        self._publish = publish
        self._before = before
        self._log = learner_log or _NoLog()
        self._lock = threading.Lock()
        self.idle_runs = 0  # cycles that found nothing new and published nothing

    def current(self) -> Snapshot | None:
        blob = self._snapshots.latest()
        return align(decode_snapshot(blob), self._pool) if blob else None

    def save(self, snap: Snapshot) -> None:
        validate(snap)
        validate_pool(snap, self._pool.models)
        self._snapshots.save(snap.version, snap.parent, snap.created_at_ms, snap.reason, encode_snapshot(snap))
        self._publish(snap)

    def read(self, snap: Snapshot, until_ms: int) -> Window:
        """The window (snap.watermark_ms, until_ms] from the row store, aggregated."""
        rewards = tuple(self._rows.reward_stats(snap.watermark_ms, until_ms))
        stale: tuple[RewardRow, ...] = ()
        if any(r.clustering != snap.clustering for r in rewards):
            stale = tuple(r for r in self._rows.rewards(snap.watermark_ms, until_ms, snap.clustering)
                          if r.clustering != snap.clustering)  # fmt: skip
        # a failed attempt's own record (policy "failover") is not traffic: its zero reward
        # reaches the posterior through feedback, but it must not count as a decision or pull
        # the failing model's usage means (0 tokens) down
        # nor is an attempt inside a cascade (policy "cascade"): the request's own record carries
        # the cascade's decision, its bill and whether it escalated
        decisions = tuple(s for s in self._rows.decision_stats(snap.watermark_ms, until_ms)
                          if s.policy not in ("failover", CASCADE_POLICY))
        return Window(snap.watermark_ms, until_ms, rewards, stale, decisions)

    def due_rebuild(self, snap: Snapshot) -> bool:
        """Is it time to cluster the traffic (again)? At ``cold_start_min`` decisions, then each
        time the traffic grew by ``recluster_growth``, until ``recluster_until``."""
        p = self._params
        if p.n_clusters <= 1:
            return False
        if snap.clustered_at == 0:  # never clustered from traffic: one catch-all or example centroids
            return snap.seen >= p.cold_start_min or (
                len(snap.n) == 1 and len(self._rows.recent_embeddings(p.cold_start_min)) >= p.cold_start_min
            )
        return p.recluster_growth > 1 and snap.clustered_at * p.recluster_growth <= min(snap.seen, p.recluster_until)

    def run(self, reason: str = "scheduled") -> Snapshot:
        """One cycle: the new snapshot, or the live one when nothing arrived (no new version).
        Raises if there is no snapshot to continue from."""
        with self._lock:
            self._before()
            snap = self.current()
            if snap is None:
                raise RuntimeError("no snapshot to learn from: bootstrap one first")
            p = self._params
            now = self._rows.now_ms()
            until = max(now - p.grace_ms, snap.watermark_ms)
            start = snap
            if self.due_rebuild(snap):
                embs = self._rows.recent_embeddings(p.recluster.sample, until_ms=until)
                if len(embs) >= max(p.n_clusters, 2):
                    done = self._rows.rewards(0, snap.watermark_ms, -1) if snap.watermark_ms else []
                    # sorted: the clustering depends on which prompts were seen, not on their arrival order
                    snap = rebuild_clusters(snap, _stack(sorted(embs)), done, p.n_clusters, self._rng, p.rewards)
                    if snap.clustering != start.clustering:
                        reason = "recluster"
            window = self.read(snap, until)
            if snap.clustered_at == start.clustered_at and not window.rewards and not window.decisions and not window.stale:
                self.idle_runs += 1
                log.info("learning cycle: nothing new since v%d, no new snapshot", snap.version)
                return snap
            new, alarms = fold(snap, window, now_ms=now, params=p, reason=reason)
            margin = [a for a in alarms if a.model < 0]
            if margin and len(centroid_array(new)) > 1:
                recent = self._rows.recent_embeddings(p.recluster.sample)
                if len(recent) >= p.recluster.min_sample:
                    normal = min(a.normal_until_ms for a in margin)
                    ref = self._rows.recent_embeddings(p.recluster.sample, until_ms=normal)
                    new = recluster_snapshot(new, _stack(recent), _stack(ref) if ref else None, self._rng, p.recluster,
                                             max_splits=len(margin))  # fmt: skip
            events = _events(snap, new, alarms, now)
            self._log.record(new.version, _windows(new.version, window), events)
            self.save(new)  # the commit point
            for e in events:  # an alarm the learner acted on is a warning; one it only recorded is not
                (log.warning if e.action != "none" else log.info)(
                    "drift (%s) in clusters %s%s: %.3f -> %.3f, %s", e.kind, e.clusters,
                    f" for {e.model}" if e.model else "", e.old_value, e.new_value, e.action)  # fmt: skip
            log.info(
                "learning cycle: snapshot v%d (%s), %d feedback groups, %d decision groups, %d clusters",
                new.version, new.reason, len(window.rewards), len(window.decisions), len(new.n),
            )  # fmt: skip
            return new
