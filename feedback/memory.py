"""In-memory adapters of the row store and the snapshot store (for tests and simulations)."""

from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

from feedback.events import DecisionMade, Event, FeedbackGiven
from feedback.ports import DecisionRef, DecisionStats, RewardRow, SnapshotInfo

__all__ = ["MemoryRowStore", "MemorySnapshotStore"]


def _wall_ms() -> int:
    return int(time.time() * 1000)


class MemoryRowStore:
    """Keeps every event with its ingestion time; idempotent by ``event_id``."""

    def __init__(self, clock_ms: Callable[[], int] = _wall_ms) -> None:
        self._clock = clock_ms
        self._lock = threading.Lock()
        self._decisions: dict[str, tuple[int, DecisionMade]] = {}
        self._feedback: dict[str, tuple[int, FeedbackGiven]] = {}
        self._seen: set[str] = set()

    def insert(self, events: Sequence[Event]) -> None:
        with self._lock:
            now = self._clock()
            for ev in events:
                if ev.event_id in self._seen:
                    continue
                self._seen.add(ev.event_id)
                if isinstance(ev, DecisionMade):
                    self._decisions.setdefault(ev.decision_id, (now, ev))
                else:
                    self._feedback[ev.event_id] = (now, ev)

    def now_ms(self) -> int:
        return self._clock()

    def find_decision(self, decision_id: str) -> DecisionRef | None:
        with self._lock:
            item = self._decisions.get(decision_id)
        if item is None:
            return None
        d = item[1]
        return DecisionRef(d.decision_id, d.tenant, d.cluster, d.model, d.snapshot_version)

    def rewards(self, since_ms: int, until_ms: int, clustering: int) -> list[RewardRow]:
        out = []
        with self._lock:
            for at, fb in self._feedback.values():
                if not since_ms <= at < until_ms:
                    continue
                item = self._decisions.get(fb.decision_id)
                if item is None:
                    continue
                d = item[1]
                emb = d.embedding if d.clustering != clustering else b""
                out.append(RewardRow(d.decision_id, d.clustering, d.cluster, d.model, fb.reward, fb.kind, emb))
        return out

    def decision_stats(self, since_ms: int, until_ms: int) -> list[DecisionStats]:
        acc: dict[tuple[int, int, str], list[float]] = {}
        with self._lock:
            for at, d in self._decisions.values():
                if since_ms <= at < until_ms and d.model:
                    row = acc.setdefault((d.clustering, d.cluster, d.model), [0, 0.0, 0.0])
                    row[0] += 1
                    row[1] += d.completion_tokens
                    row[2] += d.latency_ms
        return [DecisionStats(c, k, m, int(v[0]), v[1], v[2]) for (c, k, m), v in acc.items()]

    def recent_embeddings(self, limit: int) -> list[bytes]:
        with self._lock:
            items = sorted(self._decisions.values(), key=lambda x: x[0], reverse=True)
        return [d.embedding for _, d in items[:limit] if d.embedding]

    def count(self, table: str) -> int:
        with self._lock:
            return len(self._decisions) if table == "decisions" else len(self._feedback)


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
