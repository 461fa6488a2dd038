"""One contract for the row store and the snapshot store: in-memory and ClickHouse (chDB)."""

from __future__ import annotations

import time

import msgspec
import numpy as np
import pytest

from feedback.clickhouse import ClickHouseRowStore, ClickHouseSnapshotStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.memory import MemoryRowStore, MemorySnapshotStore


@pytest.fixture(params=["memory", "clickhouse"])
def stores(request, chdb_dir, ch_database):
    if request.param == "memory":
        return MemoryRowStore(), MemorySnapshotStore()
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    return ClickHouseRowStore(client), ClickHouseSnapshotStore(client)


def _decision(did: str, cluster=0, model="a", clustering=1, emb=(1.0, 0.0)) -> DecisionMade:
    return DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=int(time.time() * 1000), cluster=cluster,
                        model=model, arm=model, clustering=clustering, completion_tokens=10, latency_ms=20.0,
                        embedding=np.array(emb, dtype="<f4").tobytes())  # fmt: skip


def _feedback(did: str, reward: float) -> FeedbackGiven:
    return FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=int(time.time() * 1000), reward=reward)


def test_insert_is_idempotent_by_event_id(stores):
    rows, _ = stores
    d, f = _decision("d1"), _feedback("d1", 1.0)
    rows.insert([d, f])
    rows.insert([d, f])
    assert rows.count("decisions") == 1 and rows.count("feedback") == 1
    now = rows.now_ms() + 1
    assert len(rows.rewards(0, now, 1)) == 1


def test_find_decision(stores):
    rows, _ = stores
    rows.insert([_decision("d1", cluster=3, model="b")])
    ref = rows.find_decision("d1")
    assert ref is not None and ref.cluster == 3 and ref.model == "b"
    assert rows.find_decision("nope") is None


def test_rewards_join_feedback_to_decisions_within_the_window(stores):
    rows, _ = stores
    rows.insert([_decision("d1", cluster=1, model="a"), _decision("d2", cluster=2, model="b")])
    rows.insert([_feedback("d1", 1.0), _feedback("d2", 0.0), _feedback("d2", 0.5)])
    t1 = rows.now_ms() + 1
    got = sorted((r.decision_id, r.cluster, r.model, r.reward) for r in rows.rewards(0, t1, 1))
    assert got == [("d1", 1, "a", 1.0), ("d2", 2, "b", 0.0), ("d2", 2, "b", 0.5)]
    assert all(r.embedding == b"" for r in rows.rewards(0, t1, 1))  # same clustering: no embedding
    stale = rows.rewards(0, t1, 2)
    assert all(np.frombuffer(r.embedding, dtype="<f4").tolist() == [1.0, 0.0] for r in stale)
    time.sleep(0.005)
    rows.insert([_feedback("d1", 0.0)])
    t2 = rows.now_ms() + 1
    later = rows.rewards(t1, t2, 1)
    assert [(r.decision_id, r.reward) for r in later] == [("d1", 0.0)]  # only the new window


def test_decision_stats(stores):
    rows, _ = stores
    rows.insert([_decision(f"d{i}", cluster=i % 2, model="a") for i in range(5)])
    stats = {(s.cluster, s.model): s for s in rows.decision_stats(0, rows.now_ms() + 1)}
    assert stats[(0, "a")].decisions == 3 and stats[(1, "a")].decisions == 2
    assert stats[(0, "a")].completion_tokens == 30 and stats[(0, "a")].latency_ms == 60.0


def test_decision_stats_are_kept_apart_by_tenant(stores):
    rows, _ = stores
    rows.insert([msgspec.structs.replace(_decision(f"d{i}"), tenant="acme" if i < 3 else "globex", cost_usd=0.01 * i)
                 for i in range(5)])  # fmt: skip
    stats = {s.tenant: s for s in rows.decision_stats(0, rows.now_ms() + 1)}
    assert set(stats) == {"acme", "globex"}
    assert (stats["acme"].decisions, stats["globex"].decisions) == (3, 2)
    assert stats["acme"].cost_usd == pytest.approx(0.03) and stats["globex"].cost_usd == pytest.approx(0.07)


def test_snapshot_store_latest_get_list(stores):
    _, snaps = stores
    assert snaps.latest() is None
    snaps.save(1, 0, 100, "initial", b"one\x00")
    snaps.save(2, 1, 200, "scheduled", b"two\xff")
    assert snaps.latest() == b"two\xff"
    assert snaps.get(1) == b"one\x00" and snaps.get(9) is None
    assert [(i.version, i.parent, i.reason) for i in snaps.list()] == [(2, 1, "scheduled"), (1, 0, "initial")]
