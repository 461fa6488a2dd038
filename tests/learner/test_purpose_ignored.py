"""Shadow and judge records (``purpose``, migration 070) are not routed traffic: the learner, the
dashboard's traffic and off-policy evaluation leave them out, on the memory store and on ClickHouse.

The check is differential: the same routed traffic learned with and without the marked records
must give the same snapshot. A store that ignored the mark would count the shadow model's answers
(all graded 0 here, on a model the routed traffic rates 1) and the judge's calls as traffic.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from feedback.clickhouse import ClickHouseLearnerLog, ClickHouseRowStore, ClickHouseSnapshotStore, connect
from feedback.clickhouse_history import ClickHouseHistory
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.history import MemoryHistory, Prices
from feedback.memory import MemoryLearnerLog, MemoryRowStore, MemorySnapshotStore
from learner.cycle import LearnerParams, LearningCycle, PoolPrior
from learner.embedding import normalize_rows
from learner.snapshot import decode_snapshot, encode_snapshot, initial_snapshot
from simulations.logs import read_decisions

POOL = PoolPrior(models=("a", "b"), prior_mean=(0.5, 0.5), completion_tokens=(10.0, 10.0), latency_s=(0.1, 0.1))
CENTROIDS = normalize_rows(np.eye(2, 4))


def _stores(kind: str, chdb_dir, database: str):
    if kind == "memory":
        return MemoryRowStore(), MemorySnapshotStore(), MemoryLearnerLog(), None
    client = connect(f"chdb://{chdb_dir}", database)
    migrate(client)
    return ClickHouseRowStore(client), ClickHouseSnapshotStore(client), ClickHouseLearnerLog(client), client


def _routed(n: int, now: int) -> list:
    events = []
    for i in range(n):
        did = uuid7(now)
        emb = CENTROIDS[i % 2].astype("<f4").tobytes()
        events.append(DecisionMade(event_id=uuid7(now), decision_id=did, ts_ms=now, clustering=1, cluster=i % 2,
                                   arm="a", model="a", propensity=0.5, margin=0.5, cost_usd=0.001, embedding=emb,
                                   completion_tokens=10))  # fmt: skip
        events.append(FeedbackGiven(event_id=uuid7(now), decision_id=did, ts_ms=now, reward=1.0))
    return events


def _marked(routed: list, now: int) -> list:
    """For each routed decision: a shadow call to model b graded 0, and a judge call on model b."""
    events = []
    for d in [e for e in routed if isinstance(e, DecisionMade)]:
        for purpose in ("shadow", "judge"):
            did = uuid7(now)
            events.append(DecisionMade(event_id=uuid7(now), decision_id=did, ts_ms=now, clustering=1, cluster=d.cluster,
                                       policy=purpose, arm="b", model="b", cost_usd=0.5, completion_tokens=900,
                                       embedding=d.embedding, parent_decision_id=d.decision_id,
                                       purpose=purpose))  # fmt: skip
            events.append(FeedbackGiven(event_id=uuid7(now), decision_id=did, ts_ms=now, reward=0.0, kind="judge"))
    return events


def _learn(kind: str, chdb_dir, database: str, events: list) -> tuple:
    rows, snapshots, log, client = _stores(kind, chdb_dir, database)
    first = initial_snapshot(models=POOL.models, centroids=CENTROIDS, prior_mean=POOL.prior_mean,
                             completion_tokens=POOL.completion_tokens, latency_s=POOL.latency_s,
                             prior_strength=2.0, shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    snapshots.save(1, 0, 0, "initial", encode_snapshot(first))
    cycle = LearningCycle(rows, snapshots, POOL, LearnerParams(grace_ms=0, n_clusters=2, drift=None),
                          np.random.default_rng(0), learner_log=log)  # fmt: skip
    rows.insert(events)
    time.sleep(0.005)  # ingestion time is the store's clock: the window ends before this millisecond
    snap = cycle.run()
    return snap, rows, client


@pytest.mark.parametrize("kind", ["memory", "clickhouse"])
def test_the_learner_learns_the_same_with_and_without_shadow_and_judge_records(kind, chdb_dir):
    now = 1_700_000_000_000
    routed = _routed(20, now)
    marked = _marked(routed, now)
    plain, _, _ = _learn(kind, chdb_dir, "t_plain_" + uuid7()[-8:], routed)
    mixed, rows, client = _learn(kind, chdb_dir, "t_mixed_" + uuid7()[-8:], routed + marked)
    assert mixed.version == plain.version == 2
    assert mixed.n == plain.n and mixed.reward_sum == plain.reward_sum  # model b has no evidence
    assert mixed.decisions == plain.decisions and mixed.completion_tokens == plain.completion_tokens
    assert all(n == 0 for row in mixed.n for n in row[1:])
    stats = rows.decision_stats(0, 2**62)
    assert {s.model for s in stats} == {"a"} and sum(s.decisions for s in stats) == 20
    assert {(s.model, s.kind) for s in rows.reward_stats(0, 2**62)} == {("a", "explicit")}
    assert len(rows.recent_embeddings(1000)) == 20
    if client is not None:  # off-policy evaluation and the dashboard's traffic read routed traffic only
        logs = read_decisions(client, now - 60_000, now + 60_000)
        assert set(logs.arms) == {"a"} and len(logs.decision_ids) == 20
        traffic = ClickHouseHistory(client).traffic(now - 60_000, now + 60_000, 60_000, Prices((1.0, 1.0), (1.0, 1.0)))
        assert sum(t.decisions for t in traffic) == 20 and {t.model for t in traffic} == {"a"}
    else:
        history = MemoryHistory()
        history.insert(routed + marked)
        traffic = history.traffic(now - 60_000, now + 60_000, 60_000, Prices((1.0, 1.0), (1.0, 1.0)))
        assert sum(t.decisions for t in traffic) == 20 and {t.model for t in traffic} == {"a"}


def test_a_decision_from_before_the_field_decodes_as_routed_traffic():
    import msgspec

    from feedback.events import decode_event

    fields = {"type": "decision", **msgspec.structs.asdict(DecisionMade(event_id="e", decision_id="d", ts_ms=1))}
    del fields["purpose"]  # as a producer of the previous release wrote it
    assert decode_event(msgspec.msgpack.encode(fields)).purpose == ""


def test_a_snapshot_is_unchanged_by_marked_records_alone(chdb_dir):
    """Only marked records in a window: nothing to learn, no new snapshot."""
    now = 1_700_000_000_000
    routed = _routed(2, now)
    rows, snapshots, log, _ = _stores("memory", chdb_dir, "")
    first = initial_snapshot(models=POOL.models, centroids=CENTROIDS, prior_mean=POOL.prior_mean,
                             completion_tokens=POOL.completion_tokens, latency_s=POOL.latency_s,
                             prior_strength=2.0, shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    snapshots.save(1, 0, 0, "initial", encode_snapshot(first))
    cycle = LearningCycle(rows, snapshots, POOL, LearnerParams(grace_ms=0, n_clusters=2, drift=None),
                          np.random.default_rng(0), learner_log=log)  # fmt: skip
    rows.insert(_marked(routed, now))
    time.sleep(0.005)
    snap = cycle.run()
    assert snap.version == 1 and decode_snapshot(snapshots.latest()).n == first.n
