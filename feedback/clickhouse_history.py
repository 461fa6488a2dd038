"""ClickHouse adapter of ``HistoryStore``: traffic buckets from the ``decisions`` table.

One aggregate query per call, transferring a row per (bucket, clustering, cluster, model, language).
Decision ids are UUIDv7 and the table is sorted by them, so the time window is also given as a
range of the primary key (with slack for the time between creating the id and stamping ``ts``):
the query reads the window's granules, not the table.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np

from feedback.history import ATTEMPT_POLICIES, Prices, StoredPrompt, TrafficBucket

__all__ = ["ClickHouseHistory", "uuid7_floor"]

_SLACK_MS = 10 * 60 * 1000  # a decision's ts is stamped at most this long after its id


def uuid7_floor(ms: int) -> str:
    """The smallest UUIDv7 string of millisecond ``ms``: a key bound for ids at or after it."""
    h = f"{max(ms, 0) & ((1 << 48) - 1):012x}"
    return f"{h[:8]}-{h[8:]}-"


class ClickHouseHistory:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()

    def traffic(self, since_ms: int, until_ms: int, bucket_ms: int, prices: Prices) -> list[TrafficBucket]:
        if bucket_ms <= 0:
            raise ValueError("bucket_ms must be positive")
        sql = """
            SELECT intDiv(t, {b:Int64}) * {b:Int64} AS bucket, c, k, m, count(), countIf(answered),
                   sumIf(cost, answered), sumIf(cf, answered), sum(mg), lang
            FROM (
                SELECT decision_id, toUnixTimestamp64Milli(any(ts)) AS t, any(clustering) AS c,
                       any(cluster) AS k, if(any(arm) != '', any(arm), any(model)) AS m, any(language) AS lang,
                       any(model) != '' AND any(status) = 'ok' AS answered, any(cost_usd) AS cost, toFloat64(any(margin)) AS mg,
                       if(length({pin:Array(Float64)}) = 0, 0.,
                          arrayMax(arrayMap((a, o) -> (any(prompt_tokens) * a + any(completion_tokens) * o) / 1e6,
                                            {pin:Array(Float64)}, {pout:Array(Float64)}))) AS cf
                FROM decisions
                WHERE decision_id >= {lo_id:String} AND decision_id < {hi_id:String}
                GROUP BY decision_id
                HAVING t >= {lo:Int64} AND t < {hi:Int64} AND any(policy) NOT IN {attempts:Array(String)}
                       AND any(purpose) = ''  -- shadow and judge calls are not traffic (070_judge_shadow.sql)
            )
            GROUP BY bucket, c, k, m, lang
            ORDER BY bucket, c, k, m, lang
        """
        params = {
            "b": bucket_ms, "attempts": list(ATTEMPT_POLICIES), "lo": since_ms, "hi": until_ms,
            "lo_id": uuid7_floor(since_ms - _SLACK_MS), "hi_id": uuid7_floor(until_ms + 1),
            "pin": list(prices.price_in_per_mtok), "pout": list(prices.price_out_per_mtok),
        }  # fmt: skip
        with self._lock:
            rows = self._client.query(sql, parameters=params).result_rows
        return [
            TrafficBucket(int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]), int(r[5]), float(r[6]), float(r[7]),
                          float(r[8]), r[9])
            for r in rows
        ]  # fmt: skip

    def prompts(self, since_ms: int, until_ms: int, limit: int,
                tenants: Sequence[str] | None = None) -> list[StoredPrompt]:  # fmt: skip
        # the newest ids first (the sort key, read in order, small columns), then the wide
        # embedding column of those only
        sql = """
            SELECT toUnixTimestamp64Milli(any(ts)) AS t, any(tenant), any(prompt_text), any(embedding)
            FROM decisions
            WHERE decision_id IN (
                SELECT decision_id FROM decisions
                WHERE decision_id >= {lo_id:String} AND decision_id < {hi_id:String} AND prompt_text != ''
                      AND notEmpty(embedding) AND policy NOT IN {attempts:Array(String)} AND purpose = ''
                      AND (NOT {filter:Bool} OR tenant IN {tenants:Array(String)})
                      AND ts >= fromUnixTimestamp64Milli({lo:Int64}) AND ts < fromUnixTimestamp64Milli({hi:Int64})
                ORDER BY decision_id DESC LIMIT {n:UInt64})
            GROUP BY decision_id
            ORDER BY decision_id DESC
        """
        params = {
            "lo_id": uuid7_floor(since_ms - _SLACK_MS), "hi_id": uuid7_floor(until_ms + 1), "attempts": list(ATTEMPT_POLICIES),
            "filter": tenants is not None, "tenants": list(tenants or ()), "lo": since_ms, "hi": until_ms,
            "n": max(0, limit),
        }  # fmt: skip
        with self._lock:
            rows = self._client.query(sql, parameters=params).result_rows
        return [StoredPrompt(int(r[0]), r[1], r[2], np.asarray(r[3], dtype="<f4").tobytes()) for r in rows]
