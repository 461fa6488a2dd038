"""A crash in the middle of a cycle leaves the previous snapshot live and the watermark unmoved;
the next cycle catches up, counting every decision and every piece of feedback exactly once."""

from __future__ import annotations

import time

import numpy as np
import pytest

from feedback.clickhouse import ClickHouseLearnerLog, ClickHouseRowStore, ClickHouseSnapshotStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.memory import MemoryLearnerLog, MemoryRowStore, MemorySnapshotStore
from learner.cycle import LearnerParams, LearningCycle, PoolPrior
from learner.embedding import normalize_rows
from learner.snapshot import decode_snapshot, encode_snapshot, initial_snapshot

POOL = PoolPrior(models=("a", "b"), prior_mean=(0.5, 0.5), completion_tokens=(10.0, 10.0), latency_s=(0.1, 0.1))
CENTROIDS = normalize_rows(np.eye(2, 4))


class Crash(RuntimeError):
    pass


class CrashingRows:
    """The row store, failing one read when armed (a crash after the rewards were read)."""

    def __init__(self, rows) -> None:
        self.rows, self.armed = rows, False

    def decision_stats(self, since_ms, until_ms):
        if self.armed:
            self.armed = False
            raise Crash("killed while reading")
        return self.rows.decision_stats(since_ms, until_ms)

    def __getattr__(self, name):
        return getattr(self.rows, name)


class CrashingSnapshots:
    """The snapshot store, failing one save when armed (a crash at the commit point)."""

    def __init__(self, snapshots) -> None:
        self.snapshots, self.armed = snapshots, False

    def save(self, *args) -> None:
        if self.armed:
            self.armed = False
            raise Crash("killed before the save")
        self.snapshots.save(*args)

    def __getattr__(self, name):
        return getattr(self.snapshots, name)


@pytest.fixture(params=["memory", "clickhouse"])
def stores(request, chdb_dir, ch_database):
    if request.param == "memory":
        return MemoryRowStore(), MemorySnapshotStore(), MemoryLearnerLog()
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    return ClickHouseRowStore(client), ClickHouseSnapshotStore(client), ClickHouseLearnerLog(client)


def _traffic(rng: np.random.Generator, n: int) -> list:
    events = []
    for _ in range(n):
        cluster, model = int(rng.integers(2)), ("a", "b")[int(rng.integers(2))]
        emb = CENTROIDS[cluster].astype("<f4").tobytes()
        did = uuid7()
        events.append(DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=0, clustering=1, cluster=cluster, arm=model,
                                   model=model, margin=0.5, cost_usd=0.001, embedding=emb))  # fmt: skip
        events.append(FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=0, reward=float(rng.random() < 0.7)))
    return events


def _pause() -> None:
    time.sleep(0.005)  # ingestion time is the store's clock: keep batches in distinct milliseconds


@pytest.mark.parametrize("where", ["read", "save"])
def test_crash_mid_cycle_keeps_the_previous_snapshot_and_the_next_cycle_counts_once(stores, where):
    rows, snapshots, learner_log = stores
    rows, snapshots = CrashingRows(rows), CrashingSnapshots(snapshots)
    first = initial_snapshot(models=POOL.models, centroids=CENTROIDS, prior_mean=POOL.prior_mean,
                             completion_tokens=POOL.completion_tokens, latency_s=POOL.latency_s,
                             prior_strength=2.0, shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    snapshots.save(1, 0, 0, "initial", encode_snapshot(first))
    live = []
    cycle = LearningCycle(rows, snapshots, POOL, LearnerParams(grace_ms=0, n_clusters=2), np.random.default_rng(0),
                          publish=live.append, learner_log=learner_log)  # fmt: skip
    rng = np.random.default_rng(7)
    a, b, c = _traffic(rng, 40), _traffic(rng, 30), _traffic(rng, 20)

    rows.insert(a)
    _pause()
    v2 = cycle.run()
    assert (v2.version, sum(map(sum, v2.n))) == (2, 40)

    rows.insert(b)
    _pause()
    (rows if where == "read" else snapshots).armed = True
    with pytest.raises(Crash):
        cycle.run()
    after = decode_snapshot(snapshots.latest())
    assert after == v2 and after.watermark_ms == v2.watermark_ms  # the previous snapshot is still the live one
    assert [s.version for s in live] == [2]  # nothing new was published

    rows.insert(c + a[:10])  # more traffic, and a re-delivery of some of the first batch
    _pause()
    v3 = cycle.run()
    assert v3.version == 3 and v3.parent == 2
    assert sum(map(sum, v3.n)) == 90  # a + b + c feedback, each once
    assert sum(map(sum, v3.decisions)) == 90
    wins = [w for w in learner_log.windows(2) if w.version == 3]
    assert sum(w.decisions for w in wins) == 50 and sum(w.rewards for w in wins) == 50  # b + c, once
    assert [s.version for s in live] == [2, 3]
