"""Cold start without example prompts: one catch-all cluster until the first requests arrive,
then k-means on their embeddings, evidence carried over and the clustering generation bumped."""

from __future__ import annotations

import time

import msgspec
import numpy as np

from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.memory import MemoryRowStore, MemorySnapshotStore
from learner.clusters import coherence, kmeans
from learner.cycle import LearnerParams, LearningCycle, PoolPrior
from learner.embedding import normalize_rows
from learner.fold import rebuild_clusters
from learner.reward import RewardWeights
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


def _traffic(rows: MemoryRowStore, rng: np.random.Generator, topics: np.ndarray, n: int, clustering: int) -> None:
    events = []
    for i in range(n):
        t = i % len(topics)
        emb = normalize_rows((topics[t] + 0.05 * rng.normal(size=topics.shape[1]))[None, :])[0]
        did, model = uuid7(), ("a", "b")[t % 2]
        events.append(DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=0, cluster=0, clustering=clustering,
                                   model=model, arm=model, embedding=emb.astype("<f4").tobytes()))  # fmt: skip
        events.append(FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=0, reward=float(t % 2 == 0)))
    rows.insert(events)


def test_clusters_are_rebuilt_as_traffic_grows_and_an_idle_cycle_publishes_nothing():
    rng = np.random.default_rng(3)
    dim = 16
    clock = [1_000]
    pool = PoolPrior(models=("a", "b"), prior_mean=(0.5, 0.5), completion_tokens=(10.0, 10.0), latency_s=(0.1, 0.1))
    first = initial_snapshot(models=pool.models, centroids=normalize_rows(np.ones((1, dim))), prior_mean=pool.prior_mean,
                             completion_tokens=pool.completion_tokens, latency_s=pool.latency_s, prior_strength=2.0,
                             shrink_strength=0.0, created_at_ms=0)  # fmt: skip
    rows, snaps = MemoryRowStore(clock_ms=lambda: clock[0]), MemorySnapshotStore()
    snaps.save(1, 0, 0, "initial", encode_snapshot(first))
    cycle = LearningCycle(rows, snaps, pool, LearnerParams(n_clusters=4, grace_ms=0, cold_start_min=40,
                          recluster_growth=2.0, recluster_until=1000), np.random.default_rng(1))  # fmt: skip
    # the first traffic shows two topics only; four arrive later
    topics = normalize_rows(rng.normal(size=(4, dim)))
    clusterings = []
    for step, (n, k) in enumerate([(40, 2), (40, 2), (80, 4), (160, 4), (320, 4), (640, 4)]):
        live = cycle.current()
        _traffic(rows, rng, topics[:k], n, live.clustering)
        clock[0] += 1000
        snap = cycle.run()
        clusterings.append((snap.seen, snap.clustering, snap.reason))
    seen = [s for s, _, _ in clusterings]
    assert seen == [40, 80, 160, 320, 640, 1280]
    # clustered from the traffic at 40 prompts (cold start), again once it doubled (80 -> 160 seen),
    # and again (320 -> 640); at 1280 > recluster_until the clustering stays
    assert [c for _, c, _ in clusterings] == [2, 2, 3, 3, 4, 4]
    snap = cycle.current()
    cents = centroid_array(snap)
    # the late clustering separates all four topics (the first one, from two topics, could not)
    assert len({int(np.argmax(cents @ t)) for t in topics}) == 4
    assert np.isclose(np.array(snap.n).sum(), 1280)  # every reward counted once, refolded by embedding
    # nothing new: the run is recorded, no new version is published
    version = snap.version
    clock[0] += 1000
    assert cycle.run().version == version and cycle.idle_runs == 1
    assert len(snaps.list()) == version


def test_a_growth_reclustering_keeps_the_live_clustering_when_it_explains_the_traffic_better():
    """Best of several k-means starts, and a new clustering replaces the live one only if it scores
    better on the same prompts (mean cosine to the nearest centre): a re-clustering as traffic
    grows must not swap a clean split of the topics for a worse local optimum."""
    rng = np.random.default_rng(4)
    dim = 16
    topics = normalize_rows(rng.normal(size=(6, dim)))
    x = normalize_rows(topics[np.arange(1200) % 6] + 0.08 * rng.normal(size=(1200, dim))).astype(np.float32)
    best = kmeans(x, 6, np.random.default_rng(0), starts=40)
    single = [coherence(x, kmeans(x, 6, np.random.default_rng(s))) for s in range(20)]
    assert min(single) < coherence(x, best) - 0.01  # one run alone does end in a worse optimum here
    assert coherence(x, kmeans(x, 6, np.random.default_rng(1), starts=8)) >= max(single[:8]) - 1e-6
    live = initial_snapshot(models=("a", "b"), centroids=best, prior_mean=(0.5, 0.5), completion_tokens=(10.0, 10.0),
                            latency_s=(0.1, 0.1), prior_strength=2.0, shrink_strength=0.0, created_at_ms=0)  # fmt: skip
    live = msgspec.structs.replace(live, seen=1200, clustered_at=600)
    for seed in range(5):
        after = rebuild_clusters(live, x, [], 6, np.random.default_rng(seed), RewardWeights())
        assert after.clustering == live.clustering and after.centroids == live.centroids
        assert after.clustered_at == 1200  # judged afresh at the next growth step
    # a clustering that is worse than what the traffic shows is replaced
    worse = msgspec.structs.replace(live, centroids=normalize_rows(rng.normal(size=(6, dim))).astype("<f4").tobytes())
    assert rebuild_clusters(worse, x, [], 6, np.random.default_rng(0), RewardWeights()).clustering == live.clustering + 1
