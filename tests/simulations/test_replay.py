"""The replay protocol (bandit feedback, seeded shuffle, task never read) and what it learns."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from simulations.online import OnlineRouter, PolicyConfig
from simulations.outcomes import Outcomes
from simulations.replay import ReplayConfig, fit_warm_start, replay
from simulations.report import evaluate, oracle_point

FAST = ReplayConfig(thompson_samples=64, cost_weight=25.0)


def _hide_unchosen(o: Outcomes, rows: np.ndarray, arms: np.ndarray, rng: np.random.Generator) -> Outcomes:
    """The same outcomes with every score and cost the router was not shown replaced at random."""
    shown = np.zeros_like(o.available)
    shown[rows, arms] = True
    scores = np.where(shown | ~o.available, o.scores, rng.integers(0, 2, o.scores.shape).astype(float))
    costs = np.where(shown | ~o.available, o.costs, o.costs * rng.uniform(0.5, 2.0, o.costs.shape))
    return msgspec.structs.replace(o, scores=scores, costs=costs, tasks=tuple("x" for _ in o.tasks))


def test_only_the_chosen_models_outcome_is_revealed(synthetic):
    # costs="exact" reads each model's true cost before the call, so only the scores can be hidden there;
    # the default per-token estimate needs only the price sheet (the bills' low quantile, kept here)
    o, x = synthetic
    cfg = msgspec.structs.replace(FAST, prior="flat")
    first = replay(o, x, cfg)
    changed = _hide_unchosen(o, first.rows, first.arms, np.random.default_rng(1))
    changed = msgspec.structs.replace(changed, costs=o.costs)  # the price sheet is public
    again = replay(changed, x, cfg)
    assert np.array_equal(first.arms, again.arms) and np.array_equal(first.propensities, again.propensities)
    assert changed.scores[~np.isclose(changed.scores, o.scores)].size > 600  # the hidden scores did change


def test_the_shuffle_is_seeded(synthetic):
    o, x = synthetic
    a, b = replay(o, x, FAST), replay(o, x, FAST)
    c = replay(o, x, msgspec.structs.replace(FAST, seed=1))
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.arms, b.arms)
    assert not np.array_equal(a.rows, c.rows)
    assert sorted(a.rows.tolist()) == list(range(len(o)))


def test_passes_stream_every_prompt_again(synthetic):
    o, x = synthetic
    run = replay(o, x, msgspec.structs.replace(FAST, passes=2))
    assert len(run.rows) == 2 * len(o)
    assert np.bincount(run.rows).tolist() == [2] * len(o)
    assert ((run.propensities > 0) & (run.propensities <= 1)).all()


def test_routes_topics_to_their_models_better_than_any_single_one(synthetic):
    o, x = synthetic
    run = replay(o, x, msgspec.structs.replace(FAST, n_clusters=0, recluster_growth=4.0, passes=3))
    first = msgspec.structs.replace(run, **{k: getattr(run, k)[: len(o)] for k in ("rows", "arms", "rewards", "costs")})
    # at its own cost, the router closes a good part of the gap between the single models and the oracle
    assert evaluate(o, [(25.0, first)]).gap_share_at_cost[0] > 0.2
    utility = run.rewards - 25.0 * run.costs
    best_single = max(np.nanmean(o.scores[:, j] - 25.0 * o.costs[:, j]) for j in range(len(o.models)))
    assert utility[2 * len(o) :].mean() > best_single + 0.03  # once it has learned (third pass)


def test_warm_start_from_full_information_helps(synthetic):
    o, x = synthetic
    train, test = o.take(np.arange(300)), o.take(np.arange(300, 600))
    warm = fit_warm_start(train, x[:300], 4, np.random.default_rng(0))
    cold = replay(test, x[300:], FAST)
    hot = replay(test, x[300:], FAST, warm=warm)
    u = (lambda r: float(np.mean(r.rewards - 25.0 * r.costs)))
    assert u(hot) > u(cold) + 0.03
    assert hot.n_clusters == 4


def test_full_feedback_bounds_bandit_feedback(synthetic):
    o, x = synthetic
    bandit = replay(o, x, FAST)
    full = replay(o, x, msgspec.structs.replace(FAST, feedback="full"))
    u = (lambda r: float(np.mean(r.rewards - 25.0 * r.costs)))
    assert u(full) > u(bandit)
    oc, oq = oracle_point(o, 25.0)
    assert u(full) < oq - 25.0 * oc


def test_budget_paces_the_cost_weight(synthetic):
    o, x = synthetic
    budget = 1.0e-3
    run = replay(o, x, msgspec.structs.replace(FAST, budget_usd=budget, passes=3))
    late = run.costs[len(o):].mean()  # after the first pass
    assert late == pytest.approx(budget, rel=0.3)


def test_online_router_propensities_are_a_distribution():
    cfg = PolicyConfig(thompson_samples=32, n_clusters=1)
    router = OnlineRouter(cfg, ("a", "b", "c"), 4, np.array([1e-6, 2e-6, 1e-5]))
    emb = np.array([1.0, 0, 0, 0], dtype=np.float32)
    allowed = np.array([True, False, True])
    for row in range(5):
        arm, props, c = router.decide(emb, 100.0, allowed, row)
        assert props.sum() == pytest.approx(1.0) and props[1] == 0.0 and props[arm] > 0
        router.record(emb, arm, c, 1.0 if arm == 0 else None, 1e-4, 100.0)
    assert router.n.sum() <= 5  # no-feedback records carry no weight
