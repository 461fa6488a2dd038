"""What the router reads from the learner's snapshot: budget weights, the exploration cap; and
the simulated world routes as the service does (``decide`` on the live view, the learned weight)."""

from __future__ import annotations

import msgspec
import numpy as np

from learner.cycle import LearnerParams, PoolPrior, Window, align, fold
from learner.embedding import normalize_rows
from learner.budget import BudgetTarget, tenant_budget_key
from learner.routing import Prices, RoutingParams, View, decide
from learner.snapshot import BudgetState, initial_snapshot
from service.routing import Router
from tests.learner.world import World

PARAMS = LearnerParams(grace_ms=0)


def test_world_routes_exactly_as_the_router(embedder):
    world = World(embedder, PARAMS, seed=1)
    world.run(3, 100)
    rng = np.random.default_rng(0)
    embs = embedder.embed(["How do I sort a list in Python?", "Plan a day in Lisbon", "Prove that 2 is prime"] * 20)
    tokens, rows = rng.integers(5, 60, size=60), rng.integers(1 << 30, size=60)
    clusters, _, arms = world.route(embs, tokens, rows)
    assert len(set(arms.tolist())) > 1  # the prompts are routed to more than one model
    for e, t, r, c, a in zip(embs, tokens, rows, clusters, arms):
        choice = decide(world.router.view, e, int(t), world.live_cost_weight(), 0.0, None, int(r))
        assert (choice.cluster, choice.arm) == (c, a)


def test_world_routes_with_the_learned_weight_of_its_tenant_budget(embedder):
    params = msgspec.structs.replace(PARAMS, budgets=(BudgetTarget(tenant_budget_key("acme"), 1e-4, 25.0),))
    world = World(embedder, params, seed=1, tenant="acme")
    world.run(3, 100)
    (budget,) = world.router.view.snapshot.budgets
    assert budget.cost_weight != world.cost_weight and world.live_cost_weight() == budget.cost_weight
def test_router_view_uses_the_learned_cost_weight_of_a_policy():
    snap = initial_snapshot(models=("a", "b"), centroids=normalize_rows(np.ones((1, 4))), prior_mean=(0.5, 0.5),
                            completion_tokens=(1.0, 1.0), latency_s=(0.0, 0.0), prior_strength=2.0,
                            shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    snap = msgspec.structs.replace(snap, budgets=(BudgetState("auto", 40.0, 0.001),))
    view = View(snap, Prices(("a", "b"), (1.0, 1.0), (1.0, 1.0)), RoutingParams(n_samples=64, seed=0))
    assert view.cost_weight("auto", 25.0) == 40.0 and view.cost_weight("other", 25.0) == 25.0


def test_a_model_added_to_the_pool_is_explored_within_the_exploration_budget():
    models = ("a", "b")
    snap = initial_snapshot(models=models, centroids=normalize_rows(np.eye(2, 4)), prior_mean=(0.5, 0.5),
                            completion_tokens=(10.0, 10.0), latency_s=(0.1, 0.1), prior_strength=2.0,
                            shrink_strength=5.0, created_at_ms=0)  # fmt: skip
    snap = msgspec.structs.replace(snap, n=((60.0, 60.0),) * 2, reward_sum=((42.0, 36.0),) * 2)
    pool = PoolPrior(("a", "b", "new"), (0.5, 0.5, 0.95), (10.0, 10.0, 10.0), (0.1, 0.1, 0.1))  # a promising tier
    prices = Prices.unknown(pool.models)
    empty = Window(0, 1, (), (), ())
    free = fold(align(snap, pool), empty, now_ms=1, params=LearnerParams())[0]
    capped = fold(align(snap, pool), empty, now_ms=1, params=LearnerParams(explore_min_evidence=20.0, explore_share=0.1))[0]
    assert capped.explore_share == (1.0, 1.0, 0.1)
    for snap_, low, high in ((free, 0.3, 1.0), (capped, 0.01, 0.1)):
        router = Router(prices, RoutingParams(n_samples=1024, seed=0))
        assert router.swap(snap_)
        for e in normalize_rows(np.eye(2, 4)):
            choice = decide(router.view, e, 10, 0.0, 0.0, None, 0)
            assert low < choice.propensities[2] <= high and np.isclose(sum(choice.propensities), 1.0)
