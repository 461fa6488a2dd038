"""Ports of the event path: where events go (sink), where rows are kept (store), snapshots.

Each has an in-memory adapter (``memory.py``) beside the real ones (``inprocess.py``,
``clickhouse.py``), held to one contract suite in ``tests/feedback``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import msgspec

from feedback.events import Event

__all__ = [
    "DecisionRef",
    "DecisionStats",
    "EventSink",
    "RewardRow",
    "RowStore",
    "SnapshotInfo",
    "SnapshotStore",
]


class DecisionRef(msgspec.Struct, frozen=True):
    """What the feedback API needs to know about a past decision."""

    decision_id: str
    tenant: str
    cluster: int
    model: str
    snapshot_version: int


class RewardRow(msgspec.Struct, frozen=True):
    """One piece of feedback joined with the decision it is about."""

    decision_id: str
    clustering: int
    cluster: int
    model: str
    reward: float
    kind: str
    embedding: bytes  # filled only when asked for (the decision's clustering is stale)


class DecisionStats(msgspec.Struct, frozen=True):
    """Decisions routed per (clustering, cluster, model) in a window, with usage sums."""

    clustering: int
    cluster: int
    model: str
    decisions: int
    completion_tokens: float
    latency_ms: float


class SnapshotInfo(msgspec.Struct, frozen=True):
    version: int
    parent: int
    created_at_ms: int
    reason: str


class EventSink(Protocol):
    """Takes events off the request path; must never lose one it accepted."""

    def publish(self, event: Event) -> None: ...

    def flush(self, timeout_s: float = 10.0) -> bool: ...

    def close(self) -> None: ...


class RowStore(Protocol):
    """Durable rows of decisions and feedback, and the queries the product needs of them."""

    def insert(self, events: Sequence[Event]) -> None: ...

    def now_ms(self) -> int: ...

    def find_decision(self, decision_id: str) -> DecisionRef | None: ...

    def rewards(self, since_ms: int, until_ms: int, clustering: int) -> list[RewardRow]: ...

    def decision_stats(self, since_ms: int, until_ms: int) -> list[DecisionStats]: ...

    def recent_embeddings(self, limit: int) -> list[bytes]: ...

    def count(self, table: str) -> int: ...


class SnapshotStore(Protocol):
    """Versioned snapshots, newest wins; bodies are msgpack-encoded ``Snapshot``s."""

    def save(self, version: int, parent: int, created_at_ms: int, reason: str, body: bytes) -> None: ...

    def latest(self) -> bytes | None: ...

    def get(self, version: int) -> bytes | None: ...

    def list(self, limit: int = 50) -> list[SnapshotInfo]: ...
