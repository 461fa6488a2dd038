"""A response-cache hit is a decision of model "cache": the learner reads it and learns nothing
about the pool from it (the snapshot validates, no model's posterior moves), while the decision
that stored the answer is learned as any other."""

from __future__ import annotations

import numpy as np

from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.memory import MemoryRowStore, MemorySnapshotStore
from learner.cycle import LearnerParams, LearningCycle, PoolPrior
from learner.embedding import normalize_rows
from learner.snapshot import decode_snapshot, encode_snapshot, initial_snapshot, validate

MODELS = ("a", "b")
EMB = normalize_rows(np.eye(2, 4))


def _cycle():
    clock = [5_000]  # rows arrive at 5 s, the cycle runs at 10 s
    rows, snaps = MemoryRowStore(clock_ms=lambda: clock[0]), MemorySnapshotStore()
    snap = initial_snapshot(models=MODELS, centroids=EMB, prior_mean=(0.5, 0.5), completion_tokens=(10.0, 10.0),
                            latency_s=(0.1, 0.1), prior_strength=2.0, shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    snaps.save(snap.version, snap.parent, 0, snap.reason, encode_snapshot(snap))
    prior = PoolPrior(MODELS, (0.5, 0.5), (10.0, 10.0), (0.1, 0.1))
    params = LearnerParams(n_clusters=2, grace_ms=0, drift=None, cold_start_min=10**6)
    cycle = LearningCycle(rows, snaps, prior, params, np.random.default_rng(0), before=lambda: clock.__setitem__(0, 10_000))
    return rows, snaps, cycle


def _decision(did: str, model: str, policy: str, cost: float, source: str = "") -> DecisionMade:
    return DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=1, tenant="acme", policy=policy, clustering=1, cluster=0,
                        arm=model, model=model, cost_usd=cost, completion_tokens=7,
                        embedding=EMB[0].astype("<f4").tobytes(), source_decision_id=source)  # fmt: skip


def _down(did: str) -> FeedbackGiven:
    return FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=2, reward=0.0, tenant="acme", rating="down")


def test_a_hit_and_its_feedback_move_no_posterior_and_the_snapshot_validates():
    rows, snaps, cycle = _cycle()
    rows.insert([_decision("src", "a", "auto", 0.01), _decision("hit", "cache", "cache", 0.0, source="src"),
                 _down("hit")])  # fmt: skip
    snap = cycle.run()
    validate(snap)
    assert snap.models == MODELS and snap.version == 2
    assert snap.n == ((0.0, 0.0), (0.0, 0.0))  # the thumbs-down on the hit reached no model
    assert snap.decisions == ((1, 0), (0, 0)) and snap.seen == 1  # the hit is not a routed decision
    assert decode_snapshot(snaps.latest()) == snap


def test_feedback_on_the_source_decision_is_learned_as_usual():
    rows, _, cycle = _cycle()
    rows.insert([_decision("src", "a", "auto", 0.01), _decision("hit", "cache", "cache", 0.0, source="src"),
                 _down("src")])  # fmt: skip
    snap = cycle.run()
    assert snap.n == ((1.0, 0.0), (0.0, 0.0)) and snap.reward_sum == ((0.0, 0.0), (0.0, 0.0))
    assert rows.find_decision("hit").model == "cache"  # the feedback API finds the hit (its tenant, 404 rules)
