"""ClickHouse adapters (clickhouse-connect): the row store of events here; the snapshot store, the
learner log and the dead letters in ``feedback.clickhouse_state``, and the connection in
``feedback.clickhouse_client``, all re-exported here.

The schema (migrations, retention) is ``feedback.clickhouse_schema``.

The same code runs on the embedded engine (``chdb:///path``, clickhouse-connect's chDB
backend) and on a ClickHouse server (``http://host:8123/db``).
"""

from __future__ import annotations

import logging
import operator
import threading
from typing import Any, Callable, Sequence

import numpy as np

from feedback.clickhouse_client import connect
from feedback.clickhouse_state import ClickHouseDeadLetterStore, ClickHouseLearnerLog, ClickHouseSnapshotStore
from feedback.clickhouse_dedup import TableRows, insert_once
from feedback.events import DecisionMade, Event, FeedbackGiven
from learner.ports import DecisionRef, DecisionStats, RewardRow, RewardStats

__all__ = [
    "ClickHouseDeadLetterStore", "ClickHouseLearnerLog", "ClickHouseRowStore", "ClickHouseSnapshotStore", "connect",
]  # fmt: skip

log = logging.getLogger("turnout.clickhouse")

def _embeddings(blobs: list[bytes]) -> Any:
    """Float32 byte strings -> an Arrow list column, without a Python float per value."""
    import pyarrow as pa

    arrays = [np.frombuffer(b, dtype="<f4") for b in blobs]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.float32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.float32()))


def _decisions_table(ds: list[DecisionMade], insert_id: str) -> Any:
    """Decisions as one Arrow table: serialised in C++, so the writer holds the GIL briefly."""
    import pyarrow as pa

    col = lambda f: [getattr(d, f) for d in ds]  # noqa: E731
    return pa.table({
        "event_id": col("event_id"), "decision_id": col("decision_id"),
        "schema_version": pa.array(col("schema_version"), pa.uint16()),
        "ts": pa.array(col("ts_ms"), pa.timestamp("ms", tz="UTC")),
        "tenant": col("tenant"), "user": col("user"), "policy": col("policy"),
        "requested_model": col("requested_model"),
        "snapshot_version": pa.array(col("snapshot_version"), pa.uint64()),
        "clustering": pa.array(col("clustering"), pa.uint32()),
        "cluster": pa.array(col("cluster"), pa.uint32()),
        "margin": pa.array(col("margin"), pa.float32()), "arm": col("arm"),
        "propensity": pa.array(col("propensity"), pa.float64()), "model": col("model"),
        "status": col("status"), "fallbacks": pa.array([min(f, 255) for f in col("fallbacks")], pa.uint8()),
        "errors": pa.array([list(e) for e in col("errors")], pa.list_(pa.string())),
        "prompt_hash": col("prompt_hash"),
        "prompt_tokens": pa.array(col("prompt_tokens"), pa.uint32()),
        "completion_tokens": pa.array(col("completion_tokens"), pa.uint32()),
        "cost_usd": pa.array(col("cost_usd"), pa.float64()),
        "latency_ms": pa.array(col("latency_ms"), pa.float64()),
        "stream": pa.array(col("stream"), pa.bool_()),
        "embedding": _embeddings(col("embedding")), "prompt_text": col("prompt_text"),
        "parent_decision_id": col("parent_decision_id"),  # 030_failover_attempts.sql
        "source_decision_id": col("source_decision_id"),  # 050_cache_hits.sql
        "language": col("language"),  # 061_language.sql
        "conversation_id": col("conversation_id"), "turn": pa.array(col("turn"), pa.uint32()),
        "sticky": pa.array(col("sticky"), pa.bool_()),  # 060_conversations.sql
        "escalated": pa.array(col("escalated"), pa.bool_()), "gate": col("gate"),  # 071_cascades.sql
        "purpose": col("purpose"),  # 070_judge_shadow.sql
        "insert_id": pa.array([insert_id] * len(ds), pa.string()),  # 040_exactly_once.sql
    })  # fmt: skip


def _feedback_table(fs: list[FeedbackGiven], insert_id: str) -> Any:
    import pyarrow as pa

    col = lambda f: [getattr(x, f) for x in fs]  # noqa: E731
    return pa.table({
        "event_id": col("event_id"), "decision_id": col("decision_id"),
        "schema_version": pa.array(col("schema_version"), pa.uint16()),
        "ts": pa.array(col("ts_ms"), pa.timestamp("ms", tz="UTC")),
        "reward": pa.array(col("reward"), pa.float64()), "kind": col("kind"), "tenant": col("tenant"),
        "user": col("user"), "rating": col("rating"), "comment": col("comment"),
        "insert_id": pa.array([insert_id] * len(fs), pa.string()),
    })  # fmt: skip


# event type -> its table, the table's sorting key (an event field), the Arrow table of a block
_EVENT_TABLES = ((DecisionMade, "decisions", "decision_id", _decisions_table),
                 (FeedbackGiven, "feedback", "event_id", _feedback_table))  # fmt: skip


class ClickHouseRowStore:
    """Row store on ClickHouse. Calls are serialised: one client is not safe to share freely.

    One rating per decision: of a decision's explicit feedback (kind ``explicit``: a thumb or a
    score), only the first stored counts in the window queries (``rewards``, ``reward_stats``).
    First = the smallest (``min(ingested_ms)`` of the event, ``event_id``): the earliest
    insertion, ties (one insert block shares its ``ingested_ms``) broken by the smaller event id,
    which for UUIDv7 ids is the one created first. Later ratings stay stored but never count, in
    their window or a later one, since the first is looked up among all the decision's feedback,
    not only the window's. Implicit kinds (``re_request``, ``upstream_error``) all count.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        with self._lock:
            return self._client.query(sql, parameters=params or {}).result_rows

    def insert(self, events: Sequence[Event], streams: Sequence[str] | None = None) -> None:
        """Store the events not stored yet, each exactly once (see ``feedback.clickhouse_dedup``).

        ``streams[i]`` names where ``events[i]`` was read (the sink: topic and partition); events
        of one stream in its order. Without it the call is one stream.
        """
        streams = streams if streams is not None else [""] * len(events)
        tables = [TableRows(table, key, operator.attrgetter(key), self._writer(table, arrow),
                            [(e, s) for e, s in zip(events, streams, strict=True) if isinstance(e, kind)])
                  for kind, table, key, arrow in _EVENT_TABLES]  # fmt: skip
        with self._lock:
            insert_once(self._client, [t for t in tables if t.items])

    def _writer(self, table: str, arrow: Callable[[list[Any], str], Any]) -> Callable[..., None]:
        def write(block: list[Any], insert_id: str, settings: dict[str, Any]) -> None:
            self._client.insert_arrow(table, arrow(block, insert_id), settings=settings)

        return write

    def now_ms(self) -> int:
        return int(self._query("SELECT toUnixTimestamp64Milli(now64(3))")[0][0])

    def find_decision(self, decision_id: str) -> DecisionRef | None:
        rows = self._query(
            "SELECT decision_id, tenant, cluster, model, snapshot_version FROM decisions "
            "WHERE decision_id = {id:String} LIMIT 1",
            {"id": decision_id},
        )
        if not rows:
            return None
        r = rows[0]
        return DecisionRef(r[0], r[1], int(r[2]), r[3], int(r[4]))

    # Window queries (learner): every fact counts once, in the window of its first arrival (see
    # RowStore). They read only what arrived in the window: ``ingested_ms`` has a minmax skip
    # index and the ids are UUIDv7 (time-ordered primary keys), so old granules are skipped and
    # the cost of a cycle follows the new data, not the table. Aggregation happens here, so a
    # cycle transfers a few hundred rows whatever the traffic.

    @staticmethod
    def _ready_sql(decision_cols: tuple[str, ...]) -> str:
        """Feedback joined to its decision, for pairs whose later half arrived in the window; of
        the ratings (kind ``explicit``) only each decision's first (see the class docstring)."""
        outer = ", ".join(f"d.{c} AS {c}" for c in decision_cols)
        # shadow and judge records (070_judge_shadow.sql) are not routed traffic: never evidence
        inner = ", ".join(f"any({c}) AS {c}" for c in (*decision_cols, "purpose"))
        in_play = """
            SELECT decision_id FROM feedback WHERE ingested_ms >= {lo:Int64} AND ingested_ms < {hi:Int64}
            UNION ALL
            SELECT decision_id FROM decisions WHERE ingested_ms >= {lo:Int64} AND ingested_ms < {hi:Int64}"""
        # every piece of feedback of the decisions in play (also what arrived before the window: a
        # rating there may be the first), ranked per decision among its own kind class
        return f"""
            SELECT f.event_id AS event_id, f.reward AS reward, f.kind AS kind, d.decision_id AS decision_id, {outer}
            FROM (
                SELECT event_id, decision_id, reward, kind, fi,
                       row_number() OVER (PARTITION BY decision_id, kind = 'explicit' ORDER BY fi, event_id) AS nth
                FROM (
                    SELECT event_id, any(decision_id) AS decision_id, any(reward) AS reward,
                           any(kind) AS kind, min(ingested_ms) AS fi
                    FROM (SELECT event_id, decision_id, reward, kind, ingested_ms FROM feedback
                          WHERE decision_id IN ({in_play}))
                    GROUP BY event_id
                )
            ) AS f
            INNER JOIN (
                SELECT decision_id, {inner}, min(ingested_ms) AS di
                FROM decisions
                WHERE decision_id IN ({in_play})
                GROUP BY decision_id
            ) AS d ON f.decision_id = d.decision_id
            WHERE greatest(f.fi, d.di) >= {{lo:Int64}} AND greatest(f.fi, d.di) < {{hi:Int64}}
              AND (f.kind != 'explicit' OR f.nth = 1) AND d.purpose = ''
        """

    def rewards(self, since_ms: int, until_ms: int, clustering: int) -> list[RewardRow]:
        cols = ("clustering", "cluster", "model", "arm", "embedding")
        rows = self._query(
            f"""
            SELECT decision_id, clustering, cluster, model, reward, kind,
                   if(toInt64(clustering) = {{c:Int64}}, [], embedding), arm
            FROM ({self._ready_sql(cols)})
            """,
            {"lo": since_ms, "hi": until_ms, "c": clustering},
        )
        return [
            RewardRow(r[0], int(r[1]), int(r[2]), r[3], float(r[4]), r[5],
                      np.asarray(r[6], dtype="<f4").tobytes() if len(r[6]) else b"", r[7])
            for r in rows
        ]  # fmt: skip

    def reward_stats(self, since_ms: int, until_ms: int) -> list[RewardStats]:
        cols = ("clustering", "cluster", "model", "arm")
        rows = self._query(
            f"""
            SELECT clustering, cluster, model, arm, kind, count(), sum(reward)
            FROM ({self._ready_sql(cols)})
            GROUP BY clustering, cluster, model, arm, kind
            """,
            {"lo": since_ms, "hi": until_ms},
        )
        return [RewardStats(int(r[0]), int(r[1]), r[2], r[3], r[4], int(r[5]), float(r[6])) for r in rows]

    def decision_stats(self, since_ms: int, until_ms: int) -> list[DecisionStats]:
        rows = self._query(
            """
            SELECT c, k, m, count(), sum(toff), sum(lat), p, sum(cost), sum(mg), sum(mg * mg), tn, sum(esc)
            FROM (
                SELECT decision_id, any(clustering) AS c, any(cluster) AS k, any(model) AS m, any(escalated) AS esc,
                       any(policy) AS p, any(tenant) AS tn, any(completion_tokens) AS toff, any(latency_ms) AS lat,
                       any(cost_usd) AS cost, toFloat64(any(margin)) AS mg, min(ingested_ms) AS di,
                       any(purpose) AS pu
                FROM decisions
                WHERE decision_id IN (SELECT decision_id FROM decisions
                                      WHERE ingested_ms >= {lo:Int64} AND ingested_ms < {hi:Int64})
                GROUP BY decision_id
                HAVING di >= {lo:Int64} AND m != '' AND pu = ''
            )
            GROUP BY c, k, m, p, tn
            """,
            {"lo": since_ms, "hi": until_ms},
        )
        return [
            DecisionStats(int(r[0]), int(r[1]), r[2], int(r[3]), float(r[4]), float(r[5]), r[6], float(r[7]),
                          float(r[8]), float(r[9]), r[10], float(r[11]))
            for r in rows
        ]  # fmt: skip

    def recent_embeddings(self, limit: int, until_ms: int | None = None) -> list[bytes]:
        # pick the ids first (small columns), then read the wide embedding column for those only
        rows = self._query(
            """
            SELECT any(embedding) FROM decisions
            WHERE decision_id IN (
                SELECT decision_id FROM decisions
                WHERE ingested_ms < {until:Int64} AND notEmpty(embedding) AND purpose = ''
                ORDER BY ingested_ms DESC LIMIT {n:UInt64})
            GROUP BY decision_id
            """,
            {"n": limit, "until": until_ms if until_ms is not None else 2**62},
        )
        return [np.asarray(r[0], dtype="<f4").tobytes() for r in rows]

    def count(self, table: str) -> int:
        if table not in ("decisions", "feedback"):
            raise ValueError(f"unknown table {table!r}")
        return int(self._query(f"SELECT uniqExact(event_id) FROM {table}")[0][0])
