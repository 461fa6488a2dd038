"""What the learner must show, on the simulated pool and topics (seeded, through the real router
arithmetic and the real learning cycle): degradation noticed, a new topic re-clustered, no false
alarms on stable traffic, a budget tracked at the quality it buys."""

from __future__ import annotations

import collections

import msgspec
import numpy as np
import pytest

from learner.budget import BudgetTarget, tenant_budget_key
from learner.cycle import LearnerParams
from simulations.pool import DEFAULT_POOL, DEFAULT_TOPICS, Topic
from tests.learner.world import World

PARAMS = LearnerParams(grace_ms=0)
TOPICS = tuple(t.name for t in DEFAULT_TOPICS)

LEGAL = Topic("legal", (
    "Is it legal to {} without a written contract?",
    "What are my rights if my landlord wants to {}?",
    "Draft a clause that allows a tenant to {}.",
    "Can my employer force me to {}?",
    "How do I sue a company that refused to {}?",
), (
    "terminate the lease early", "sublet the apartment", "keep the security deposit", "work overtime unpaid",
    "change my shift schedule", "refund a defective product", "cancel a gym membership",
    "share my personal data", "raise the rent twice a year", "install a security camera",
    "withhold my final paycheck", "enter my apartment",
))  # fmt: skip
# on the new topic the generalist chat model is the one to use; the coder, whose cluster the
# new prompts mostly fall into, is bad at it
LEGAL_QUALITY = {"sim-frontier": 0.9, "sim-coder": 0.2, "sim-chat": 0.85, "sim-mini": 0.3}


def _share(served, model: str, cluster: int) -> float:
    inside = [s for s in served if s.cluster == cluster]
    return sum(s.model == model for s in inside) / max(len(inside), 1)


def _mean_quality(served, topic: str) -> float:
    return float(np.mean([s.quality for s in served if s.topic == topic]))


def test_degraded_model_loses_its_cluster_within_a_few_cycles(embedder):
    world = World(embedder, PARAMS, seed=3)
    # the learner re-clusters as traffic grows (until recluster_until decisions), and each new
    # clustering starts the detectors afresh: warm up past that, so they watch a settled clustering
    warm = world.run(30, 200)
    settled = world.router.view.snapshot
    assert settled.clustered_at <= PARAMS.recluster_until < settled.seen
    warm = [s for s in warm if s.cycle >= 20]  # well after the last re-clustering
    code = collections.Counter(s.cluster for s in warm if s.topic == "code").most_common(1)[0][0]
    assert _share(warm[-200:], "sim-coder", code) > 0.6  # the code cluster's favourite

    world.quality = lambda m, topic: 0.15 if (m.name, topic) == ("sim-coder", "code") else m.quality_on(topic)
    shares = [_share(world.step(200), "sim-coder", code) for _ in range(10)]
    assert max(shares[6:]) < 0.2, shares  # below 20% six cycles on, and it stays there
    assert world.router.view.snapshot.clustering == settled.clustering  # ``code`` named one cluster throughout
    events = world.log.drift_events()
    assert [(e.kind, e.model, e.clusters) for e in events] == [("reward", "sim-coder", (code,))]
    assert events[0].new_value < events[0].old_value - 0.3


def test_new_topic_is_detected_reclustered_and_routed_as_well_as_old_ones(embedder):
    pool = tuple(msgspec.structs.replace(m, quality={**m.quality, "legal": LEGAL_QUALITY[m.name]}) for m in DEFAULT_POOL)
    # seed 1: on seeds 0 and 4 the last growth re-clustering (one k-means++ start) merges two of the
    # four topics and splits another, and the new topic's margin decay spreads too thin to detect
    world = World(embedder, PARAMS, seed=1, pool=pool)
    # past the growth re-clusterings (up to recluster_until decisions): the detectors then watch
    # one clustering long enough to know its normal margins
    world.run(30, 300)
    world.add_topic(LEGAL, 1.0)  # a fifth of the traffic from now on
    before = world.router.view.snapshot
    assert before.clustered_at <= PARAMS.recluster_until and before.seen - before.clustered_at >= 15 * 300
    served, detected = [], None
    for cycle in range(12):
        served += world.step(300)
        if world.router.view.snapshot.clustering != before.clustering:
            detected = cycle
            break
    assert detected is not None, "the margin decay was not detected"
    # (the coder's reward fell where the new prompts landed: reward events may come first)
    (event,) = [e for e in world.log.drift_events() if e.kind == "margin"]
    assert event.action == "recluster" and event.new_value < 0.8 * event.old_value
    snap = world.router.view.snapshot
    assert len(snap.n) > len(before.n) and snap.reason == "drift"

    late = world.run(10, 300)[-1500:]
    # the new topic has clusters of its own (one, or a few if its prompts form distinct groups)
    traffic = collections.Counter(s.cluster for s in late)
    legal = collections.Counter(s.cluster for s in late if s.topic == "legal")
    own = [c for c in legal if legal[c] >= 0.75 * traffic[c]]
    assert sum(legal[c] for c in own) >= 0.9 * sum(legal.values()), (legal, traffic)
    # routing on it is as good as on the old topics: close to its best model, as they are
    regret = {t: max(m.quality_on(t) for m in pool if m.name != "sim-frontier") - _mean_quality(late, t)
              for t in ("legal", "cooking", "travel")}  # fmt: skip
    assert regret["legal"] <= max(regret["cooking"], regret["travel"]) + 0.03, regret
    assert _mean_quality(late, "legal") > 0.8
    assert [e.kind for e in world.log.drift_events()].count("margin") == 1  # the new clustering is stable


def test_no_false_alarms_over_a_long_stable_run(embedder):
    world = World(embedder, PARAMS, seed=11)
    world.run(150, 200)
    snap = world.router.view.snapshot
    blocks = [len(d.margin_blocks) for d in snap.drift]
    assert min(blocks) >= 20  # the detectors did watch: each cluster has a full history
    assert world.log.drift_events() == []
    # the clustering changed only as traffic grew (cold start, then each doubling up to
    # recluster_until), never for drift
    reasons = collections.Counter(info.reason for info in world.snapshots.list(limit=1000))
    assert set(reasons) == {"initial", "scheduled", "recluster"}, reasons
    assert snap.clustering == 1 + reasons["recluster"] and snap.clustered_at <= PARAMS.recluster_until


@pytest.mark.parametrize("target,tenant", [(0.0015, ""), (0.004, ""), (0.0015, "acme")])
def test_budget_is_tracked_with_quality_of_at_least_the_best_affordable_model(embedder, target, tenant):
    """A policy's budget, or a tenant's (key tenant:NAME, over that tenant's requests)."""
    key = tenant_budget_key(tenant) if tenant else "auto"
    params = msgspec.structs.replace(PARAMS, budgets=(BudgetTarget(key, target, 25.0),))
    world = World(embedder, params, seed=5, tenant=tenant)
    served = world.run(50, 300)
    after = [s for s in served if s.cycle >= 15]
    cost = float(np.mean([s.cost_usd for s in after]))
    assert abs(cost / target - 1.0) < 0.10, cost
    quality = float(np.mean([s.quality for s in after]))
    by_model = collections.defaultdict(list)
    for s in served:
        by_model[s.model].append(s.cost_usd)
    affordable = [m for m in DEFAULT_POOL if np.mean(by_model[m.name]) <= target]
    best = max(np.mean([m.quality_on(t) for t in TOPICS]) for m in affordable)
    assert quality >= best, (quality, best)
    (budget,) = world.router.view.snapshot.budgets
    assert budget.cost_weight != 25.0  # the learner moved it
    assert (budget.policy, budget.decisions) == (key, 50 * 300)  # every request of the policy, or the tenant
