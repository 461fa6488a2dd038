"""The one routing core (learner.routing): posteriors, cost estimates, caps, exact propensities."""

from __future__ import annotations

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.costs import estimate_tokens, request_tokens
from learner.hierarchy import hierarchical_posterior
from learner.routing import Prices, RoutingParams, View, credible_interval, decide, fit_cells
from learner.snapshot import initial_snapshot

MODELS = ("cheap", "mid", "dear")


def _snap(k: int = 2, dim: int = 4, **fields):
    cents = np.eye(dim, dtype=np.float32)[:k]
    snap = initial_snapshot(models=MODELS, centroids=cents, prior_mean=(0.6, 0.6, 0.6), completion_tokens=(100.0,) * 3,
                            latency_s=(1.0,) * 3, prior_strength=2.0, shrink_strength=0.0, created_at_ms=0)  # fmt: skip
    return msgspec.structs.replace(snap, **fields)


PRICES = Prices(MODELS, (0.1, 1.0, 10.0), (0.4, 4.0, 30.0))


def test_estimate_tokens_and_request_tokens():
    assert estimate_tokens("") == 1 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert request_tokens([]) == 0
    assert request_tokens(["abcd"]) == 5
    assert request_tokens(["abcde", ""]) == (2 + 4) + (1 + 4)


def test_propensities_are_the_exact_share_of_rows_won():
    view = View(_snap(), PRICES, RoutingParams(n_samples=64, seed=3, satisfice=0.0))
    e = np.eye(4, dtype=np.float32)[0]
    wins = np.zeros(3)
    for row in range(64):
        choice = decide(view, e, 100, 0.0, 0.0, None, row)
        wins[choice.arm] += 1
        assert np.isclose(sum(choice.propensities), 1.0)
    assert np.allclose(wins / 64, choice.propensities)


def test_views_of_one_version_draw_alike_and_lazily_as_eagerly():
    a = View(_snap(), PRICES, RoutingParams(n_samples=32, seed=5))
    b = View(_snap(), PRICES, RoutingParams(n_samples=32, seed=5))
    b.draw_all()
    assert np.array_equal(a.draws(1), b.draws(1)) and not np.array_equal(a.draws(0), a.draws(1))


def test_disallowed_models_are_never_chosen():
    view = View(_snap(), PRICES, RoutingParams(n_samples=64))
    only = np.array([False, True, False])
    for row in range(64):
        choice = decide(view, np.eye(4, dtype=np.float32)[1], 10, 5.0, 0.0, only, row)
        assert choice.arm == 1 and choice.propensities[1] == 1.0 and choice.fallback_order == ()


def test_the_exploration_cap_cannot_be_escaped_by_a_large_cost_weight():
    # issue 10 item 5: capped rows used to get a finite utility of -1e3, so a cost penalty above
    # ~1000 made a capped model win every row. Here the capped model is the cheapest by far.
    snap = _snap(explore_share=(0.1, 1.0, 1.0))
    view = View(snap, PRICES, RoutingParams(n_samples=200, satisfice=0.0))
    e = np.eye(4, dtype=np.float32)[0]
    for weight in (0.0, 25.0, 1e3, 1e6, 1e9):
        choice = decide(view, e, 1000, weight, 0.0, None, 0)
        assert choice.propensities[0] <= 0.1 + 1e-9, (weight, choice.propensities)
    # a request that allows only the capped model still gets it
    assert decide(view, e, 1000, 1e6, 0.0, np.array([True, False, False]), 150).arm == 0


def test_satisficing_takes_the_better_mean_among_near_ties():
    # two models with the same posterior: plain Thompson splits, satisficing picks the better
    # mean utility (here the cheaper one) in every row where both are within the tolerance
    snap = _snap(n=((200.0, 200.0, 0.0), (0.0, 0.0, 0.0)), reward_sum=((140.0, 140.0, 0.0), (0.0, 0.0, 0.0)))
    e = np.eye(4, dtype=np.float32)[0]
    plain = decide(View(snap, PRICES, RoutingParams(satisfice=0.0)), e, 10, 1.0, 0.0, np.array([True, True, False]), 0)
    near = decide(View(snap, PRICES, RoutingParams(satisfice=0.05)), e, 10, 1.0, 0.0, np.array([True, True, False]), 0)
    assert 0.3 < plain.propensities[0] < 0.7
    assert near.propensities[0] > plain.propensities[0] + 0.25


def test_costs_come_from_prices_and_the_clusters_learned_completion_length():
    # "cheap" answers 1000 tokens in cluster 0, 100 in cluster 1; "mid" was called in cluster 1
    # only (200 tokens); "dear" never. Cluster 0 is long for every model.
    snap = _snap(calls=((10.0, 0.0, 0.0), (10.0, 10.0, 0.0)), bill_sum=((0.0,) * 3, (0.0,) * 3),
                 completion_sum=((10_000.0, 0.0, 0.0), (1_000.0, 2_000.0, 0.0)))  # fmt: skip
    view = View(snap, PRICES, RoutingParams())
    c0, c1 = view.costs(0, 50), view.costs(1, 50)
    tokens0 = (c0 * 1e6 - 50 * np.array(PRICES.price_in_per_mtok)) / np.array(PRICES.price_out_per_mtok)
    tokens1 = (c1 * 1e6 - 50 * np.array(PRICES.price_in_per_mtok)) / np.array(PRICES.price_out_per_mtok)
    assert np.isclose(tokens0[0], 1000) and np.isclose(tokens1[0], 100)  # its own calls (the fit agrees)
    assert tokens0[1] > 5 * tokens1[1]  # "mid" in cluster 0: long, though never called there
    assert tokens0[2] > 2 * tokens1[2]  # "dear": its configured 100 tokens, times each cluster's effect
    assert np.isclose(c0[0] - view.costs(0, 0)[0], 50 * 0.1 / 1e6)  # the prompt part: tokens x price


def test_without_prices_a_model_costs_what_its_own_bills_said():
    snap = _snap(calls=((4.0, 2.0, 0.0), (0.0, 0.0, 0.0)), bill_sum=((0.004, 0.02, 0.0), (0.0, 0.0, 0.0)),
                 completion_sum=((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)))  # fmt: skip
    view = View(snap, Prices.unknown(MODELS), RoutingParams())
    c = view.costs(0, 10_000)  # the prompt's length does not matter without prices
    assert np.isclose(c[0], 0.001) and np.isclose(c[1], 0.01) and c[2] == 0.0  # never billed: 0
    assert np.allclose(view.costs(1, 1)[:2], [0.001, 0.01])  # a cluster without bills: the model's own level


def test_fit_cells_fills_cells_from_cluster_and_model_effects():
    total = np.array([[10.0, 40.0], [20.0, 0.0]])
    count = np.array([[1.0, 1.0], [1.0, 0.0]])
    fit = fit_cells(total, count, None)
    assert fit[1, 1] > fit[0, 1]  # cluster 1 is twice as long: so is model 1 there
    assert np.isclose(fit[1, 1], 80.0, rtol=0.05)


def test_empirical_bayes_shrinks_alike_clusters_and_keeps_different_ones():
    alike_n = np.full((4, 1), 100.0)
    alike_s = np.array([[60.0], [62.0], [58.0], [61.0]])
    a, b = hierarchical_posterior(np.vstack([alike_n, [[2.0]]]), np.vstack([alike_s, [[0.0]]]), (), np.array([0.5]), 2.0, 0.0)
    assert (a / (a + b))[4, 0] > 0.5  # two failures in a new cluster barely move it off the pool's 0.6
    apart_s = np.array([[95.0], [5.0], [90.0], [10.0]])
    a, b = hierarchical_posterior(np.vstack([alike_n, [[2.0]]]), np.vstack([apart_s, [[0.0]]]), (), np.array([0.5]), 2.0, 0.0)
    assert (a / (a + b))[4, 0] < 0.3  # clusters differ: its own two failures count


def test_a_model_seen_a_few_times_is_not_pinned_to_its_pool_mean():
    """A cheap model tried 11 times over 4 clusters (badly in two): its between-cluster spread
    cannot be told from noise, and that is not evidence that the clusters agree. Its posterior
    in an untried cluster stays wide (it was about Beta(477, 524) there, never explored)."""
    n = np.array([[1.0], [5.0], [4.0], [1.0]])
    s = np.array([[0.0], [1.0], [2.0], [1.0]])
    a, b = hierarchical_posterior(n, s, (), np.array([0.6]), 2.0, 0.0)
    assert (a + b)[0, 0] < 1 + 11 / 4 + 2.0  # its own call plus at most a typical cluster's evidence
    # with a lot of evidence, clusters that agree still lean hard on the pool
    a, b = hierarchical_posterior(n * 100, n * 60, (), np.array([0.6]), 2.0, 0.0)
    assert (a + b)[0, 0] > 100 + 200


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), weight=st.floats(0, 1e6), row=st.integers(0, 10_000),
       cap=st.floats(0.01, 1.0), satisfice=st.floats(0, 0.2))  # fmt: skip
def test_propensities_sum_to_one_and_the_chosen_is_positive(seed, weight, row, cap, satisfice):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 30, size=(2, 3)).astype(float)
    snap = _snap(n=tuple(map(tuple, n)), reward_sum=tuple(map(tuple, n * rng.random((2, 3)))),
                 explore_share=(1.0, cap, 1.0))  # fmt: skip
    view = View(snap, PRICES, RoutingParams(n_samples=64, seed=seed % 1000, satisfice=satisfice))
    e = rng.standard_normal(4).astype(np.float32)
    choice = decide(view, e / np.linalg.norm(e), 100, weight, 0.0, None, row)
    assert np.isclose(sum(choice.propensities), 1.0) and choice.propensity > 0
    assert choice.propensities[1] <= max(cap, 0) + 1 / 64 + 1e-9


def test_credible_interval_holds_the_mean():
    lo, hi = credible_interval(np.array([3.0]), np.array([7.0]))
    assert lo[0] < 0.3 < hi[0]


def _reference(view, cluster, prompt_tokens, cost_weight, latency_weight, allowed, row):
    """The decision written plainly over the whole (m, S) matrix: what ``decide`` must equal exactly."""
    costs = view.fixed_cost[cluster] + prompt_tokens * view.per_prompt_token
    penalty = cost_weight * costs + latency_weight * view.latency_s
    mean_utility = view.mean[cluster] - penalty
    utility = view.columns(cluster) - penalty[:, None]
    s = utility.shape[1]
    eligible = np.broadcast_to(True if allowed is None else allowed[:, None], utility.shape)
    capped = eligible & (np.array(view.open_rows)[:, None] > np.arange(s)[None, :])
    eligible = np.where(capped.any(axis=0)[None, :], capped, eligible)  # all capped out: the allowed
    utility = np.where(eligible, utility, -np.inf)
    best = utility.max(axis=0)
    sat = view.params.satisfice
    near = utility >= best - sat if sat > 0 else utility >= best
    by_mean = np.argsort(-mean_utility, kind="stable")
    winners = np.full(s, -1)
    for j in by_mean if sat > 0 else range(len(view.models)):
        winners[(winners < 0) & near[j]] = j
    props = np.bincount(winners, minlength=len(view.models)) / s
    arm = int(winners[row % s])
    order = tuple(int(j) for j in by_mean if j != arm and (allowed is None or allowed[j]))
    return arm, float(props[arm]), tuple(float(p) for p in props), order, float(costs[arm])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), weight=st.sampled_from([0.0, 1.0, 30.0, 1e6]), row=st.integers(0, 10_000),
       satisfice=st.sampled_from([0.0, 0.01, 0.06, 0.3]), n_samples=st.sampled_from([1, 7, 64, 1000]))  # fmt: skip
def test_decide_is_exactly_the_plain_decision_over_the_sample_matrix(seed, weight, row, satisfice, n_samples):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 30, size=(2, 3)).astype(float)
    share = tuple(float(x) for x in np.where(rng.random(3) < 0.5, rng.uniform(0.01, 1.0, 3), 1.0))
    snap = _snap(n=tuple(map(tuple, n)), reward_sum=tuple(map(tuple, n * rng.random((2, 3)))), explore_share=share)
    view = View(snap, PRICES, RoutingParams(n_samples=n_samples, seed=seed % 1000, satisfice=satisfice))
    masks = (None, rng.random(3) < 0.5, np.array([False, True, False]))
    for i in range(24):  # keys met again come from the view's memo
        allowed, tokens, r = masks[i % 3], (120, 120, 4000, 0)[i % 4], row + i // 2
        if allowed is not None and not allowed.any():
            continue
        choice = decide(view, np.eye(4, dtype=np.float32)[i // 12], tokens, weight, 0.5, allowed, r)  # cluster i // 12
        got = (choice.arm, choice.propensity, choice.propensities, choice.fallback_order, choice.expected_cost_usd)
        assert got == _reference(view, choice.cluster, tokens, weight, 0.5, allowed, r)
