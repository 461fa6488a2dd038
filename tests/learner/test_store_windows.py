"""The window queries the learner reads through, and its log: one contract, in-memory and chDB.

Each fact counts once, in the window of its first arrival; feedback that overtakes its
decision counts when the decision arrives.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from feedback.clickhouse import ClickHouseLearnerLog, ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.memory import MemoryLearnerLog, MemoryRowStore
from learner.ports import DriftEvent, WindowStats


@pytest.fixture(params=["memory", "clickhouse"])
def stores(request, chdb_dir, ch_database):
    if request.param == "memory":
        return MemoryRowStore(), MemoryLearnerLog()
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    return ClickHouseRowStore(client), ClickHouseLearnerLog(client)


def _decision(did: str, cluster: int = 0, model: str = "a", arm: str = "a", policy: str = "auto", emb: float = 1.0):
    return DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=0, clustering=1, cluster=cluster, model=model, arm=arm,
                        policy=policy, margin=0.25, cost_usd=0.002, completion_tokens=7,
                        embedding=np.array([emb, 0.0], dtype="<f4").tobytes())  # fmt: skip


def _feedback(did: str, reward: float, kind: str = "explicit"):
    return FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=0, reward=reward, kind=kind)


def _mark(rows) -> int:
    time.sleep(0.005)
    t = rows.now_ms()
    time.sleep(0.005)
    return t


def test_each_fact_counts_once_in_the_window_of_its_first_arrival(stores):
    rows, _ = stores
    late = _feedback("d2", 1.0)
    t0 = _mark(rows)
    rows.insert([late])  # feedback that overtook its decision
    d1 = _decision("d1", cluster=1, policy="cheap")
    rows.insert([d1, _feedback("d1", 0.0, "re_request")])
    t1 = _mark(rows)
    rows.insert([_decision("d2", model="b", arm="a"), _feedback("d1", 1.0)])
    t2 = _mark(rows)
    rows.insert([d1, late])  # re-delivered, a window later
    t3 = _mark(rows)

    def rewards(lo, hi):
        return sorted((r.cluster, r.model, r.arm, r.kind, r.count, r.reward_sum) for r in rows.reward_stats(lo, hi))

    assert rewards(t0, t1) == [(1, "a", "a", "re_request", 1, 0.0)]
    assert rewards(t1, t2) == [(0, "b", "a", "explicit", 1, 1.0), (1, "a", "a", "explicit", 1, 1.0)]
    assert rewards(t2, t3) == []
    assert sorted((r.decision_id, r.arm) for r in rows.rewards(t1, t2, 1)) == [("d1", "a"), ("d2", "a")]

    stats = {(s.cluster, s.model, s.policy): s for s in rows.decision_stats(t0, t1)}
    assert list(stats) == [(1, "a", "cheap")]
    s = stats[(1, "a", "cheap")]
    assert (s.decisions, s.completion_tokens, s.cost_usd, s.margin_sum, s.margin_sq) == (1, 7.0, 0.002, 0.25, 0.0625)
    assert [x.decisions for x in rows.decision_stats(t1, t2)] == [1]
    assert rows.decision_stats(t2, t3) == []
    assert sum(x.count for x in rows.reward_stats(0, t3)) == 3  # one whole window: each once


def test_recent_embeddings_before_a_time(stores):
    rows, _ = stores
    rows.insert([_decision(f"old{i}", emb=1.0) for i in range(3)])
    t = _mark(rows)
    rows.insert([_decision(f"new{i}", emb=2.0) for i in range(2)])
    firsts = lambda blobs: sorted(float(np.frombuffer(b, dtype="<f4")[0]) for b in blobs)  # noqa: E731
    assert firsts(rows.recent_embeddings(10)) == [1.0, 1.0, 1.0, 2.0, 2.0]
    assert firsts(rows.recent_embeddings(2)) == [2.0, 2.0]
    assert firsts(rows.recent_embeddings(10, until_ms=t)) == [1.0, 1.0, 1.0]


def test_learner_log_rewrites_a_version_instead_of_adding_to_it(stores):
    _, log = stores
    win = lambda version, n: WindowStats(version, 0, 10, 1, 0, "a", "auto", n, 0.5, 1.0, 2.0, 1.0)  # noqa: E731
    event = DriftEvent(3, 5, 1, "margin", (0, 2), "", 0.4, 0.1, "recluster", 2)
    log.record(3, [win(3, 5)], [event])
    time.sleep(0.005)
    log.record(3, [win(3, 7)], [event])  # the same cycle, run again after a crash
    log.record(4, [win(4, 1)], [])
    assert [(w.version, w.decisions) for w in log.windows()] == [(3, 7), (4, 1)]
    assert [(w.version, w.decisions) for w in log.windows(since_version=3)] == [(4, 1)]
    assert log.drift_events() == [event]
