"""In-memory adapters of the row store and the snapshot store (for tests and simulations)."""

from __future__ import annotations

import bisect
import threading
import time
from typing import Callable, Sequence

from feedback.events import DecisionMade, Event, FeedbackGiven
from learner.ports import DecisionRef, DecisionStats, DriftEvent, RewardRow, RewardStats, SnapshotInfo, WindowStats

__all__ = ["MemoryLearnerLog", "MemoryRowStore", "MemorySnapshotStore"]


def _wall_ms() -> int:
    return int(time.time() * 1000)


_EXPLICIT = "explicit"  # the kind of a rating (thumbs or score); the other kinds are implicit signals


class MemoryRowStore:
    """Keeps every event with its ingestion time; idempotent by ``event_id``.

    One rating per decision: of a decision's explicit feedback, only the first stored counts in
    the window queries (``rewards``, ``reward_stats``); first = earliest ingestion time, ties
    (one insert) broken by the smaller ``event_id`` (UUIDv7: the one created first), as in the
    ClickHouse store. Later ratings are kept (``count`` sees them) but never count, in their
    window or any other. Implicit kinds (``re_request``, ``upstream_error``) all count.
    """

    def __init__(self, clock_ms: Callable[[], int] = _wall_ms) -> None:
        self._clock = clock_ms
        self._lock = threading.Lock()
        self._decisions: dict[str, tuple[int, DecisionMade]] = {}
        self._feedback: dict[str, tuple[int, FeedbackGiven]] = {}
        self._seen: set[str] = set()
        # arrival-time indexes, so a window query reads the window, not everything
        self._decision_times: list[tuple[int, str]] = []
        self._feedback_times: list[tuple[int, str]] = []
        self._feedback_of: dict[str, list[str]] = {}
        self._first_rating: dict[str, tuple[int, str]] = {}  # decision_id -> (ingested, event_id) of the one that counts

    def insert(self, events: Sequence[Event], streams: Sequence[str] | None = None) -> None:
        with self._lock:  # one lock for every writer: streams do not matter here
            now = self._clock()
            for ev in events:
                if ev.event_id in self._seen:
                    continue
                self._seen.add(ev.event_id)
                if isinstance(ev, DecisionMade):
                    if ev.decision_id not in self._decisions:
                        self._decisions[ev.decision_id] = (now, ev)
                        bisect.insort(self._decision_times, (now, ev.decision_id))
                else:
                    self._feedback[ev.event_id] = (now, ev)
                    bisect.insort(self._feedback_times, (now, ev.event_id))
                    self._feedback_of.setdefault(ev.decision_id, []).append(ev.event_id)
                    if ev.kind == _EXPLICIT:
                        first = self._first_rating.get(ev.decision_id)
                        if first is None or (now, ev.event_id) < first:
                            self._first_rating[ev.decision_id] = (now, ev.event_id)

    def now_ms(self) -> int:
        return self._clock()

    def find_decision(self, decision_id: str) -> DecisionRef | None:
        with self._lock:
            item = self._decisions.get(decision_id)
        if item is None:
            return None
        d = item[1]
        return DecisionRef(d.decision_id, d.tenant, d.cluster, d.model, d.snapshot_version)

    def _ready(self, since_ms: int, until_ms: int) -> list[tuple[FeedbackGiven, DecisionMade]]:
        """Feedback whose later-arriving half (it or its decision) arrived in the window, less the
        ratings that are not their decision's first."""
        out = []
        with self._lock:
            ids = [e for _, e in _between(self._feedback_times, since_ms, until_ms)]
            for _, did in _between(self._decision_times, since_ms, until_ms):
                ids.extend(self._feedback_of.get(did, ()))
            for eid in dict.fromkeys(ids):
                at, fb = self._feedback[eid]
                if fb.kind == _EXPLICIT and self._first_rating[fb.decision_id] != (at, eid):
                    continue
                item = self._decisions.get(fb.decision_id)
                if item is not None and not item[1].purpose and since_ms <= max(at, item[0]) < until_ms:
                    out.append((fb, item[1]))
        return out

    def rewards(self, since_ms: int, until_ms: int, clustering: int) -> list[RewardRow]:
        return [
            RewardRow(d.decision_id, d.clustering, d.cluster, d.model, fb.reward, fb.kind,
                      d.embedding if d.clustering != clustering else b"", d.arm)
            for fb, d in self._ready(since_ms, until_ms)
        ]  # fmt: skip

    def reward_stats(self, since_ms: int, until_ms: int) -> list[RewardStats]:
        acc: dict[tuple[int, int, str, str, str], list[float]] = {}
        for fb, d in self._ready(since_ms, until_ms):
            row = acc.setdefault((d.clustering, d.cluster, d.model, d.arm, fb.kind), [0, 0.0])
            row[0] += 1
            row[1] += fb.reward
        return [RewardStats(c, k, m, a, kind, int(v[0]), v[1]) for (c, k, m, a, kind), v in acc.items()]

    def decision_stats(self, since_ms: int, until_ms: int) -> list[DecisionStats]:
        acc: dict[tuple[int, int, str, str, str], list[float]] = {}
        with self._lock:
            for at, did in _between(self._decision_times, since_ms, until_ms):
                d = self._decisions[did][1]
                if d.model and not d.purpose:  # shadow and judge records are not routed traffic
                    key = (d.clustering, d.cluster, d.model, d.policy, d.tenant)
                    row = acc.setdefault(key, [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
                    row[0] += 1
                    row[1] += d.completion_tokens
                    row[2] += d.latency_ms
                    row[3] += d.cost_usd
                    row[4] += d.margin
                    row[5] += d.margin * d.margin
                    row[6] += d.escalated
        return [
            DecisionStats(c, k, m, int(v[0]), v[1], v[2], p, v[3], v[4], v[5], t, v[6])
            for (c, k, m, p, t), v in acc.items()
        ]

    def recent_embeddings(self, limit: int, until_ms: int | None = None) -> list[bytes]:
        with self._lock:
            end = len(self._decision_times) if until_ms is None else bisect.bisect_left(self._decision_times, (until_ms, ""))
            newest = [self._decisions[did][1] for _, did in reversed(self._decision_times[max(0, end - limit) : end])]
        return [d.embedding for d in newest if d.embedding and not d.purpose]

    def count(self, table: str) -> int:
        with self._lock:
            return len(self._decisions) if table == "decisions" else len(self._feedback)


def _between(index: list[tuple[int, str]], since_ms: int, until_ms: int) -> list[tuple[int, str]]:
    lo = bisect.bisect_left(index, (since_ms, ""))
    hi = bisect.bisect_left(index, (until_ms, ""))
    return index[lo:hi]


class MemorySnapshotStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, tuple[SnapshotInfo, bytes]] = {}

    def save(self, version: int, parent: int, created_at_ms: int, reason: str, body: bytes) -> None:
        with self._lock:
            self._rows[version] = (SnapshotInfo(version, parent, created_at_ms, reason), body)

    def latest(self) -> bytes | None:
        with self._lock:
            return self._rows[max(self._rows)][1] if self._rows else None

    def get(self, version: int) -> bytes | None:
        with self._lock:
            row = self._rows.get(version)
        return row[1] if row else None

    def list(self, limit: int = 50) -> list[SnapshotInfo]:
        with self._lock:
            return [self._rows[v][0] for v in sorted(self._rows, reverse=True)[:limit]]


class MemoryLearnerLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_version: dict[int, tuple[list[WindowStats], list[DriftEvent]]] = {}

    def record(self, version: int, windows: Sequence[WindowStats], drift: Sequence[DriftEvent]) -> None:
        with self._lock:
            self._by_version[version] = (list(windows), list(drift))

    def drift_events(self, limit: int = 100) -> list[DriftEvent]:
        with self._lock:
            events = [e for v in sorted(self._by_version, reverse=True) for e in self._by_version[v][1]]
        return events[:limit]

    def windows(self, since_version: int = 0) -> list[WindowStats]:
        with self._lock:
            return [w for v in sorted(self._by_version) if v > since_version for w in self._by_version[v][0]]
