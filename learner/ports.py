"""Ports the learner reads and writes through, and the rows that cross them.

The row types are the learner's: what a learning cycle reads (``RewardRow``, ``DecisionStats``,
``RewardStats``), what it records (``WindowStats``, ``DriftEvent``), what it publishes
(``SnapshotInfo``). Adapters in ``feedback`` (``memory.py``, ``inprocess.py``, ``clickhouse.py``)
implement the Protocols and import these types from here, held to one contract suite in
``tests/feedback``.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import msgspec

from feedback.events import Event

__all__ = [
    "DecisionRef",
    "DecisionStats",
    "DriftEvent",
    "LearnerLog",
    "RewardRow",
    "RewardStats",
    "RowStore",
    "SnapshotInfo",
    "SnapshotStore",
    "WindowStats",
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
    arm: str = ""  # what the policy chose (``model`` answered; they differ after a failover)


class DecisionStats(msgspec.Struct, frozen=True):
    """Decisions routed per (clustering, cluster, model) in a window, with usage sums."""

    clustering: int
    cluster: int
    model: str
    decisions: int
    completion_tokens: float
    latency_ms: float
    policy: str = ""
    cost_usd: float = 0.0
    margin_sum: float = 0.0
    margin_sq: float = 0.0  # sum of squared margins
    tenant: str = ""
    escalations: float = 0.0  # a cascade's decisions whose gate rejected the cheap answer


class RewardStats(msgspec.Struct, frozen=True):
    """Feedback per (clustering, cluster, model, arm, kind) of the decisions it is about."""

    clustering: int
    cluster: int
    model: str
    arm: str
    kind: str
    count: int
    reward_sum: float


class WindowStats(msgspec.Struct, frozen=True):
    """What one learning cycle read, per (clustering, cluster, model, policy): the pre-aggregated
    history of the learner, one set of rows per snapshot version (dashboards, reports)."""

    version: int
    since_ms: int
    until_ms: int
    clustering: int
    cluster: int
    model: str
    policy: str
    decisions: int
    cost_usd: float
    margin_sum: float
    rewards: float  # evidence weight of the feedback folded in
    reward_sum: float


class DriftEvent(msgspec.Struct, frozen=True):
    """A change the learner detected and what it did about it.

    ``kind`` is ``margin`` (traffic moved away from the centroids of ``clusters``: re-clustered)
    or ``reward`` (``model``'s reward fell in ``clusters``: its old evidence there was faded).
    ``old_value``/``new_value`` are the baseline and the recent level (mean margin or reward).
    """

    version: int  # the snapshot that acted on it
    at_ms: int
    clustering: int
    kind: str
    clusters: tuple[int, ...]
    model: str
    old_value: float
    new_value: float
    action: str
    new_clustering: int = 0


class SnapshotInfo(msgspec.Struct, frozen=True):
    version: int
    parent: int
    created_at_ms: int
    reason: str


class RowStore(Protocol):
    """Durable rows of decisions and feedback, and the queries the product needs of them.

    Windows ``[since_ms, until_ms)`` are in ingestion time, and each fact counts in exactly one
    window however often it was delivered: a decision in the window of its first ingestion, a
    piece of feedback in the window where both it and its decision had arrived (the later of
    the two first ingestions), so feedback that overtakes its decision is not lost.

    One rating per decision: of a decision's explicit ratings only the first stored counts
    (earliest ingestion, then smallest event id); later ones are kept but never read as evidence.
    Implicit signals (``re_request``, ``upstream_error``) are their own kinds and always count.
    """

    def insert(self, events: Sequence[Event], streams: Sequence[str] | None = None) -> None:
        """Store each event once, however often it is inserted: also by writers racing on it.

        ``streams[i]`` names where ``events[i]`` was read (a Kafka topic and partition), the
        events of one stream in its order; writers racing on the same stream converge on one
        copy. ``None``: the call is one stream.
        """
        ...

    def now_ms(self) -> int: ...

    def find_decision(self, decision_id: str) -> DecisionRef | None: ...

    def rewards(self, since_ms: int, until_ms: int, clustering: int) -> list[RewardRow]: ...

    def reward_stats(self, since_ms: int, until_ms: int) -> list[RewardStats]: ...

    def decision_stats(self, since_ms: int, until_ms: int) -> list[DecisionStats]: ...

    def recent_embeddings(self, limit: int, until_ms: int | None = None) -> list[bytes]:
        """Embeddings of the newest ``limit`` decisions (ingested before ``until_ms`` if given)."""
        ...

    def count(self, table: str) -> int: ...


class SnapshotStore(Protocol):
    """Versioned snapshots, newest wins; bodies are msgpack-encoded ``Snapshot``s."""

    def save(self, version: int, parent: int, created_at_ms: int, reason: str, body: bytes) -> None: ...

    def latest(self) -> bytes | None: ...

    def get(self, version: int) -> bytes | None: ...

    def list(self, limit: int = 50) -> list[SnapshotInfo]: ...


class LearnerLog(Protocol):
    """What the learner did, kept beside the rows: per-window statistics and drift events.

    Records are keyed by snapshot version, so a cycle that crashed before its commit point and
    ran again overwrites what it had written instead of adding to it.
    """

    def record(self, version: int, windows: Sequence[WindowStats], drift: Sequence[DriftEvent]) -> None: ...

    def drift_events(self, limit: int = 100) -> list[DriftEvent]: ...

    def windows(self, since_version: int = 0) -> list[WindowStats]: ...
