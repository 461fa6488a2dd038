"""Cold start without example prompts: one catch-all cluster until the first requests arrive,
then k-means on their embeddings, evidence carried over and the clustering generation bumped."""

from __future__ import annotations

import time

import numpy as np

from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.memory import MemoryRowStore, MemorySnapshotStore
from learner.cycle import LearnerParams, LearningCycle, PoolPrior
from learner.embedding import normalize_rows
from learner.snapshot import centroid_array, encode_snapshot, initial_snapshot


def test_first_requests_become_clusters():
    rng = np.random.default_rng(0)
    dim = 16
    pool = PoolPrior(models=("a", "b"), prior_mean=(0.5, 0.5), completion_tokens=(10.0, 10.0), latency_s=(0.1, 0.1))
    first = initial_snapshot(models=pool.models, centroids=normalize_rows(np.ones((1, dim))), prior_mean=pool.prior_mean,
                             completion_tokens=pool.completion_tokens, latency_s=pool.latency_s, prior_strength=2.0,
                             shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    rows, snaps = MemoryRowStore(), MemorySnapshotStore()
    snaps.save(1, 0, 0, "initial", encode_snapshot(first))
    topics = normalize_rows(rng.normal(size=(2, dim)))
    events = []
    for i in range(80):
        t = i % 2
        emb = normalize_rows((topics[t] + 0.05 * rng.normal(size=dim))[None, :])[0]
        did = uuid7()
        model = "a" if t == 0 else "b"
        events.append(DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=int(time.time() * 1000), cluster=0,
                                   clustering=1, model=model, arm=model, embedding=emb.astype("<f4").tobytes()))  # fmt: skip
        events.append(FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=0, reward=1.0))
    rows.insert(events)
    cycle = LearningCycle(rows, snaps, pool, LearnerParams(n_clusters=2, grace_ms=0, cold_start_min=64),
                          np.random.default_rng(1))  # fmt: skip
    time.sleep(0.002)
    snap = cycle.run()
    cents = centroid_array(snap)
    assert len(cents) == 2 and snap.clustering == 2 and snap.reason == "recluster"
    # each topic's feedback lands in its own new cluster, re-placed by embedding
    n = np.array(snap.n)
    assert n.sum() == 80
    ka = int(np.argmax(cents @ topics[0]))
    assert n[ka, 0] == 40 and n[ka, 1] == 0 and n[1 - ka, 1] == 40
