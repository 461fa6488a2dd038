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


def _feedback(did: str, reward: float, kind: str = "explicit", event_id: str = "") -> FeedbackGiven:
    return FeedbackGiven(event_id=event_id or uuid7(), decision_id=did, ts_ms=int(time.time() * 1000), reward=reward,
                         kind=kind)  # fmt: skip


def _mark(rows) -> int:
    """A window boundary strictly between what was inserted before and what is inserted after."""
    time.sleep(0.005)
    t = rows.now_ms()
    time.sleep(0.005)
    return t


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
    rows.insert([_feedback("d1", 1.0), _feedback("d2", 0.5), _feedback("d2", 0.0, "re_request")])
    t1 = rows.now_ms() + 1
    got = sorted((r.decision_id, r.cluster, r.model, r.reward, r.kind) for r in rows.rewards(0, t1, 1))
    assert got == [("d1", 1, "a", 1.0, "explicit"), ("d2", 2, "b", 0.0, "re_request"), ("d2", 2, "b", 0.5, "explicit")]
    assert all(r.embedding == b"" for r in rows.rewards(0, t1, 1))  # same clustering: no embedding
    stale = rows.rewards(0, t1, 2)
    assert all(np.frombuffer(r.embedding, dtype="<f4").tolist() == [1.0, 0.0] for r in stale)
    every = rows.rewards(0, t1, -1)  # no clustering: every row with its embedding
    assert len(every) == 3 and all(np.frombuffer(r.embedding, dtype="<f4").tolist() == [1.0, 0.0] for r in every)
    time.sleep(0.005)
    rows.insert([_feedback("d1", 0.0, "re_request")])
    t2 = rows.now_ms() + 1
    later = rows.rewards(t1, t2, 1)
    assert [(r.decision_id, r.reward) for r in later] == [("d1", 0.0)]  # only the new window


# One rating per decision: the first explicit rating stored counts; later ones are kept, not counted.


def _explicit(rows, lo: int, hi: int) -> dict[str, tuple[int, float]]:
    """Explicit evidence per decision in [lo, hi): (count, reward sum), from both window queries."""
    stats = {(s.cluster, s.model): (s.count, s.reward_sum) for s in rows.reward_stats(lo, hi) if s.kind == "explicit"}
    per_row: dict[str, tuple[int, float]] = {}
    for r in rows.rewards(lo, hi, 1):
        if r.kind == "explicit":
            n, total = per_row.get(r.decision_id, (0, 0.0))
            per_row[r.decision_id] = (n + 1, total + r.reward)
    # each decision here has a cluster and model of its own, so the two queries must agree
    assert sorted(stats.values()) == sorted(per_row.values())
    return per_row


def test_a_repeated_or_contradicting_rating_does_not_add_evidence(stores):
    rows, _ = stores
    rows.insert([_decision("same", cluster=1), _decision("contra", cluster=2)])
    t0 = _mark(rows)
    rows.insert([_feedback("same", 1.0), _feedback("contra", 1.0)])
    time.sleep(0.005)
    # a client retry posts the same thumbs up again; another client changes its mind
    rows.insert([_feedback("same", 1.0), _feedback("contra", 0.0), _feedback("same", 0.0, "re_request")])
    t1 = _mark(rows)
    assert _explicit(rows, t0, t1) == {"same": (1, 1.0), "contra": (1, 1.0)}
    implicit = [(s.cluster, s.kind, s.count) for s in rows.reward_stats(t0, t1) if s.kind != "explicit"]
    assert implicit == [(1, "re_request", 1)]  # an implicit signal on the same decision still counts
    assert rows.count("feedback") == 5  # nothing is lost: the later ratings are stored


def test_a_later_rating_does_not_count_in_a_later_window(stores):
    rows, _ = stores
    rows.insert([_decision("same", cluster=1), _decision("contra", cluster=2)])
    t0 = _mark(rows)
    rows.insert([_feedback("same", 1.0), _feedback("contra", 0.0)])
    t1 = _mark(rows)
    rows.insert([_feedback("same", 1.0), _feedback("contra", 1.0), _feedback("contra", 0.0, "re_request")])
    t2 = _mark(rows)
    assert _explicit(rows, t0, t1) == {"same": (1, 1.0), "contra": (1, 0.0)}
    assert _explicit(rows, t1, t2) == {}
    assert [(s.cluster, s.kind, s.count) for s in rows.reward_stats(t1, t2)] == [(2, "re_request", 1)]
    assert _explicit(rows, 0, t2) == {"same": (1, 1.0), "contra": (1, 0.0)}  # one window over all: still one each


def test_ratings_that_overtook_their_decision_count_once_when_it_arrives(stores):
    rows, _ = stores
    t0 = _mark(rows)
    rows.insert([_feedback("late", 0.0)])
    time.sleep(0.005)
    rows.insert([_feedback("late", 1.0)])
    t1 = _mark(rows)
    rows.insert([_decision("late", cluster=1)])
    t2 = _mark(rows)
    rows.insert([_feedback("late", 1.0)])
    t3 = _mark(rows)
    assert _explicit(rows, t0, t1) == {}
    assert _explicit(rows, t1, t2) == {"late": (1, 0.0)}  # the first stored, though both arrived before it
    assert _explicit(rows, t2, t3) == {}


def test_ratings_stored_together_are_ordered_by_event_id(stores):
    rows, _ = stores
    now = int(time.time() * 1000)
    first, second = uuid7(now - 2), uuid7(now - 1)  # UUIDv7: the id made first sorts first
    t0 = _mark(rows)
    rows.insert([_decision("d", cluster=1), _feedback("d", 0.0, event_id=second), _feedback("d", 1.0, event_id=first)])
    t1 = _mark(rows)
    assert _explicit(rows, t0, t1) == {"d": (1, 1.0)}


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
