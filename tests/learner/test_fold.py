"""``fold`` and friends, exactly: reward weights by kind, re-placement, half-lives, budgets, rollback."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from learner.budget import BudgetTarget, tenant_budget_key
from learner.cycle import LearnerParams, PoolPrior, Window, align, fold, recluster_snapshot
from learner.embedding import normalize_rows
from learner.ports import DecisionStats, RewardRow, RewardStats
from learner.recluster import ReclusterParams
from learner.reward import RewardWeights
from learner.snapshot import ClusterDrift, initial_snapshot, rollback_snapshot, validate

MODELS = ("a", "b")
CENTROIDS = normalize_rows(np.eye(2, 4))


def _snap(**changes):
    snap = initial_snapshot(models=MODELS, centroids=CENTROIDS, prior_mean=(0.5, 0.5), completion_tokens=(10.0, 10.0),
                            latency_s=(0.1, 0.1), prior_strength=2.0, shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    return msgspec.structs.replace(snap, **changes)


def _window(rewards=(), stale=(), decisions=(), since=0, until=1000):
    return Window(since, until, tuple(rewards), tuple(stale), tuple(decisions))


def _fold(snap, window, **params):
    return fold(snap, window, now_ms=5, params=LearnerParams(drift=None, **params))[0]


def test_feedback_kinds_weigh_as_configured_and_errors_go_to_the_arm():
    rewards = [
        RewardStats(1, 0, "a", "a", "explicit", 4, 3.0),
        RewardStats(1, 0, "a", "a", "re_request", 2, 0.0),
        RewardStats(1, 1, "b", "a", "upstream_error", 3, 0.0),  # "a" failed, "b" answered after a failover
        RewardStats(1, 1, "b", "a", "explicit", 1, 1.0),
    ]
    new = _fold(_snap(), _window(rewards), rewards=RewardWeights(re_request=0.25, upstream_error=2.0))
    assert new.n == ((4.5, 0.0), (6.0, 1.0)) and new.reward_sum == ((3.0, 0.0), (0.0, 1.0))
    assert (new.version, new.parent, new.watermark_ms, new.created_at_ms) == (2, 1, 1000, 5)


def test_rewards_from_an_older_clustering_are_placed_by_their_embedding():
    emb = CENTROIDS[1].astype("<f4").tobytes()
    stale = [RewardRow("d", 0, 0, "b", 1.0, "explicit", emb, "b"), RewardRow("e", 0, 0, "b", 1.0, "explicit", b"", "b")]
    new = _fold(_snap(), _window([RewardStats(0, 0, "b", "b", "explicit", 2, 2.0)], stale))
    assert new.n == ((0.0, 0.0), (0.0, 1.0))  # cluster 1 by its embedding; the one without is skipped


def test_half_lives_fade_old_evidence_in_time_and_in_feedback():
    old = _snap(n=((8.0, 4.0), (8.0, 0.0)), reward_sum=((4.0, 2.0), (8.0, 0.0)), watermark_ms=1000)
    timed = _fold(old, _window(since=1000, until=3000), half_life_ms=1000.0)
    assert timed.n == ((2.0, 1.0), (2.0, 0.0)) and timed.reward_sum == ((1.0, 0.5), (2.0, 0.0))
    fresh = [RewardStats(1, 0, "a", "a", "explicit", 10, 10.0)]
    counted = _fold(old, _window(fresh), half_life_rewards=10.0)
    assert counted.n == ((14.0, 2.0), (8.0, 0.0))  # only cluster 0 saw new feedback: it fades by half


def test_usage_and_budgets_come_from_the_decisions_of_the_window():
    stats = [DecisionStats(1, 0, "a", 10, 300.0, 2000.0, "auto", 0.04, 3.0, 1.0),
             DecisionStats(1, 1, "a", 10, 100.0, 0.0, "cheap", 0.0, 2.0, 0.5)]  # fmt: skip
    budgets = (BudgetTarget("auto", 0.002, 10.0), BudgetTarget("cheap", 0.001, 5.0))
    new = _fold(_snap(), _window(decisions=stats), budgets=budgets, usage_pseudo_count=20.0)
    assert new.decisions == ((10, 0), (10, 0))
    assert new.completion_tokens[0] == pytest.approx((20 * 10 + 400) / 40)
    auto, cheap = new.budgets
    assert auto.policy == "auto" and auto.realised_cost_usd == pytest.approx(0.004) and auto.cost_weight > 10.0
    assert cheap.decisions == 10 and cheap.cost_weight < 5.0  # spent nothing: the weight relaxes


def test_a_tenant_budget_counts_that_tenant_across_policies_and_nothing_else():
    stats = [DecisionStats(1, 0, "a", 10, 0.0, 0.0, "auto", 0.05, 0.0, 0.0, "acme"),
             DecisionStats(1, 1, "a", 10, 0.0, 0.0, "cheap", 0.01, 0.0, 0.0, "acme"),
             DecisionStats(1, 0, "a", 30, 0.0, 0.0, "auto", 0.0, 0.0, 0.0, "globex")]  # fmt: skip
    budgets = (BudgetTarget(tenant_budget_key("acme"), 0.002, 10.0), BudgetTarget("auto", 0.002, 10.0))
    acme, auto = _fold(_snap(), _window(decisions=stats), budgets=budgets).budgets
    assert (acme.policy, acme.decisions) == ("tenant:acme", 20)
    assert acme.realised_cost_usd == pytest.approx(0.003) and acme.cost_weight > 10.0  # over its budget
    assert (auto.decisions, auto.realised_cost_usd) == (40, pytest.approx(0.00125))  # both tenants, one policy
    assert auto.cost_weight < 10.0


def test_a_reward_alarm_fades_that_model_in_that_cluster_only():
    snap = _snap(n=((100.0, 100.0), (100.0, 100.0)), reward_sum=((90.0, 50.0), (90.0, 50.0)))
    params = LearnerParams(reward_reset=0.1)
    for _ in range(6):  # model a keeps its 0.9 in cluster 0 and falls to 0.1 in cluster 1
        window = _window([RewardStats(1, 0, "a", "a", "explicit", 50, 45.0), RewardStats(1, 1, "a", "a", "explicit", 50,
                          45.0 if snap.version < 5 else 5.0)])  # fmt: skip
        snap, alarms = fold(snap, window, now_ms=0, params=params)
    n = np.array(snap.n)
    assert n[1, 0] < 0.5 * n[0, 0] and n[1, 1] == 100.0


def test_recluster_snapshot_bumps_the_generation_and_carries_evidence():
    rng = np.random.default_rng(0)
    snap = _snap(n=((10.0, 0.0), (0.0, 10.0)), reward_sum=((5.0, 0.0), (0.0, 5.0)), drift=(ClusterDrift(), ClusterDrift()))
    x = normalize_rows(np.repeat(CENTROIDS, 200, axis=0) + 0.05 * rng.normal(size=(400, 4)))
    new = recluster_snapshot(snap, x, x, rng, ReclusterParams(min_size=16, min_sample=16, carry=0.5))
    validate(new)
    assert new.clustering == snap.clustering + 1 and new.reason == "drift" and len(new.drift) == len(new.n)
    assert sum(map(sum, new.n)) == pytest.approx(10.0, rel=0.05)  # half of the evidence, centres barely moved


def test_align_and_rollback():
    snap = _snap(drift=(ClusterDrift(reward_blocks=((0.9,), (0.5,)), reward_pending=((1.0, 1.0), (2.0, 1.0))),) * 2,
                 explore_share=(1.0, 0.1))  # fmt: skip
    pool = PoolPrior(("b", "c"), (0.5, 0.7), (10.0, 30.0), (0.1, 0.3))
    aligned = align(snap, pool)
    validate(aligned)
    assert aligned.drift[0].reward_blocks == ((0.5,), ()) and aligned.explore_share == (0.1, 1.0)
    later = _snap(version=9, parent=8, watermark_ms=777, clustering=3)
    back = rollback_snapshot(snap, later, now_ms=42)
    assert (back.version, back.parent, back.reason, back.watermark_ms, back.clustering) == (10, 9, "rollback", 777, 4)
    assert back.drift == () and back.centroids == snap.centroids and back.n == snap.n
