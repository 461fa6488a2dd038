"""ClickHouse adapters for the small tables that are not events: the snapshot store, the learner's
log of its runs and drift, and the sink's dead letters (``feedback.clickhouse`` re-exports them).
"""

from __future__ import annotations

import logging
import operator
import threading
from datetime import datetime, timezone
from typing import Any, Sequence

from feedback.clickhouse_dedup import TableRows, insert_once
from feedback.deadletters import DeadLetter
from learner.ports import DriftEvent, SnapshotInfo, WindowStats

__all__ = ["ClickHouseDeadLetterStore", "ClickHouseLearnerLog", "ClickHouseSnapshotStore"]

log = logging.getLogger("turnout.clickhouse")


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


class ClickHouseSnapshotStore:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.saves = 0  # snapshots this instance stored (the storage process's poll answer: service.storage_process)

    def save(self, version: int, parent: int, created_at_ms: int, reason: str, body: bytes) -> None:
        with self._lock:
            self._client.insert(
                "snapshots",
                [[version, parent, _ts(created_at_ms), reason, body]],
                column_names=["version", "parent", "created_at", "reason", "body"],
            )
            self.saves += 1

    def _one(self, where: str, params: dict[str, Any]) -> bytes | None:
        with self._lock:
            res = self._client.query(
                f"SELECT body FROM snapshots {where} ORDER BY version DESC LIMIT 1",
                parameters=params,
                column_formats={"body": "bytes"},
            )
        rows = res.result_rows
        return bytes(rows[0][0]) if rows else None

    def latest(self) -> bytes | None:
        return self._one("", {})

    def get(self, version: int) -> bytes | None:
        return self._one("WHERE version = {v:UInt64}", {"v": version})

    def list(self, limit: int = 50) -> list[SnapshotInfo]:
        with self._lock:
            rows = self._client.query(
                "SELECT version, any(parent), toUnixTimestamp64Milli(any(created_at)), any(reason) "
                "FROM snapshots GROUP BY version ORDER BY version DESC LIMIT {n:UInt64}",
                parameters={"n": limit},
            ).result_rows
        return [SnapshotInfo(int(r[0]), int(r[1]), int(r[2]), r[3]) for r in rows]


_WINDOW_COLS = [
    "version", "since_ms", "until_ms", "clustering", "cluster", "model", "policy", "decisions", "cost_usd",
    "margin_sum", "rewards", "reward_sum",
]  # fmt: skip
_DRIFT_COLS = [
    "version", "key", "at_ms", "clustering", "kind", "clusters", "model", "old_value", "new_value", "action",
    "new_clustering",
]  # fmt: skip


class ClickHouseLearnerLog:
    """The learner's per-window statistics and drift events (``learner_windows``, ``drift_events``).

    Both tables replace rows by (version, key): a cycle retried after a crash rewrites its rows.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def record(self, version: int, windows: Sequence[WindowStats], drift: Sequence[DriftEvent]) -> None:
        wrows = [[getattr(w, c) for c in _WINDOW_COLS] for w in windows]
        drows = [
            [e.version, f"{e.kind}:{e.model}:{','.join(map(str, e.clusters))}", e.at_ms, e.clustering, e.kind,
             list(e.clusters), e.model, e.old_value, e.new_value, e.action, e.new_clustering]
            for e in drift
        ]  # fmt: skip
        with self._lock:
            if wrows:
                self._client.insert("learner_windows", wrows, column_names=_WINDOW_COLS)
            if drows:
                self._client.insert("drift_events", drows, column_names=_DRIFT_COLS)

    def drift_events(self, limit: int = 100) -> list[DriftEvent]:
        with self._lock:
            rows = self._client.query(
                "SELECT version, " + ", ".join(f"argMax({c}, written_ms)" for c in _DRIFT_COLS[2:]) + " "
                "FROM drift_events GROUP BY version, key "
                "ORDER BY version DESC, key LIMIT {n:UInt64}",
                parameters={"n": limit},
            ).result_rows
        return [
            DriftEvent(int(r[0]), int(r[1]), int(r[2]), r[3], tuple(int(c) for c in r[4]), r[5], float(r[6]),
                       float(r[7]), r[8], int(r[9]))
            for r in rows
        ]  # fmt: skip

    def windows(self, since_version: int = 0) -> list[WindowStats]:
        cols = ", ".join(f"argMax({c}, written_ms)" for c in _WINDOW_COLS[1:])
        with self._lock:
            rows = self._client.query(
                f"SELECT version, {cols} FROM learner_windows WHERE version > {{v:UInt64}} "
                "GROUP BY version, clustering, cluster, model, policy ORDER BY version, clustering, cluster, model, policy",
                parameters={"v": since_version},
            ).result_rows
        return [WindowStats(*r) for r in rows]


class ClickHouseDeadLetterStore:
    """Dead letters in the ``dead_letters`` table (migration 010); idempotent by ``letter_id``."""

    _COLUMNS = ("letter_id", "topic", "partition", "offset", "key", "error", "payload", "received_at")

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Exactly once per ``letter_id``, one block per partition read (``feedback.clickhouse_dedup``)."""

        def write(block: list[DeadLetter], insert_id: str, settings: dict[str, Any]) -> None:
            rows = [[x.letter_id, x.topic, x.partition, x.offset, x.key, x.error, x.payload, _ts(x.received_ms),
                     insert_id] for x in block]  # fmt: skip
            self._client.insert("dead_letters", rows, column_names=[*self._COLUMNS, "insert_id"], settings=settings)

        rows = TableRows("dead_letters", "letter_id", operator.attrgetter("letter_id"), write,
                         [(x, f"{x.topic}:{x.partition}") for x in letters])  # fmt: skip
        with self._lock:
            insert_once(self._client, [rows] if letters else [])

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        with self._lock:
            rows = self._client.query(
                "SELECT letter_id, any(topic), any(partition), any(offset) AS o, any(key) AS k, any(error), "
                "any(payload) AS p, toUnixTimestamp64Milli(any(received_at)) AS r FROM dead_letters "
                "GROUP BY letter_id ORDER BY r, o LIMIT {n:UInt64}",
                parameters={"n": limit}, column_formats={"k": "bytes", "p": "bytes"},
            ).result_rows  # fmt: skip
        return [DeadLetter(letter_id=r[0], topic=r[1], partition=int(r[2]), offset=int(r[3]), key=bytes(r[4]),
                           error=r[5], payload=bytes(r[6]), received_ms=int(r[7])) for r in rows]  # fmt: skip
