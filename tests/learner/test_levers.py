"""Pure levers of the policy measured by the replay: per-token costs, priors from prices,
tempering, dominated models, the number of clusters. Seeded and exact."""

from __future__ import annotations

import numpy as np
import pytest

from learner.cluster_count import choose_k, silhouette
from learner.costs import completion_cost, estimate_costs, estimate_tokens, price_per_token, request_tokens
from learner.dominance import dominated
from learner.priors import temper, tier_from_prices


def test_estimate_tokens_four_characters_a_token():
    assert estimate_tokens("") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_request_tokens_add_four_per_message():
    assert request_tokens([]) == 0
    assert request_tokens(["abcd"]) == 5
    assert request_tokens(["abcde", ""]) == (2 + 4) + (1 + 4)


def test_price_per_token_is_read_off_bills_with_short_answers():
    rng = np.random.default_rng(0)
    tokens = rng.integers(20, 600, 400).astype(float)
    price = np.array([1e-6, 1e-5])
    completion = rng.exponential(1.0, (400, 2)) * np.array([5e-6, 3e-4])  # non-negative answer costs
    costs = tokens[:, None] * price + completion
    costs[::3, 1] = np.nan  # model 1 not called on every prompt
    got = price_per_token(tokens, costs, quantile=0.01)
    assert np.allclose(got, price, rtol=0.15)
    assert price_per_token(tokens, np.full((400, 1), np.nan))[0] == 0.0  # never billed


def test_completion_cost_prices_an_unseen_model_from_the_cluster_length():
    per_token = np.array([1e-6, 1e-5])
    # cluster 0: model 0 billed 4 times, each answer 300 prompt-token-equivalents (3e-4 USD)
    resid = np.array([[4 * 3e-4, 0.0], [0.0, 0.0]])
    count = np.array([[4.0, 0.0], [0.0, 0.0]])
    got = completion_cost(per_token, resid, count, pseudo_count=2.0)
    assert got[0, 0] == pytest.approx(3e-4)  # its own bills: (2 * prior + 4 * 3e-4) / 6 with prior 3e-4
    assert got[0, 1] == pytest.approx(300 * 1e-5)  # same length at model 1's price, before any call
    assert np.all(got[1] == 0.0)  # an unseen cluster: the prompt part only
    assert estimate_costs(100, per_token, got[0]) == pytest.approx([1e-4 + 3e-4, 1e-3 + 3e-3])


def test_tier_from_prices_is_monotone_in_price_and_bounded():
    tiers = tier_from_prices(np.array([1e-7, 1e-6, 1e-5, 0.0]), low=0.5, high=0.8)
    assert tiers[0] == pytest.approx(0.5) and tiers[2] == pytest.approx(0.8)
    assert tiers[1] == pytest.approx(0.65)  # linear in log price
    assert tiers[3] == pytest.approx(0.65)  # no price: the middle
    assert np.allclose(tier_from_prices(np.array([2.0, 2.0])), 0.675)


def test_temper_keeps_means_and_scales_concentration():
    a, b = np.array([[2.0, 9.0]]), np.array([[3.0, 1.0]])
    ta, tb = temper(a, b, 4.0)
    assert np.allclose(ta / (ta + tb), a / (a + b))
    assert np.allclose(ta + tb, 4 * (a + b))
    with pytest.raises(ValueError):
        temper(a, b, 0.0)


def test_dominated_models_and_the_survivor():
    lower = np.array([0.80, 0.50, 0.70, 0.10])
    upper = np.array([0.90, 0.75, 0.95, 0.99])
    penalty = np.array([0.0, 0.0, 0.0, 0.5])
    allowed = np.array([True, True, True, True])
    got = dominated(lower, upper, penalty, allowed)
    # model 1's best (0.75) is below model 0's worst (0.80); model 3's best after cost is 0.49
    assert got.tolist() == [False, True, False, True]
    only = np.array([False, True, False, False])
    assert not dominated(lower, upper, penalty, only).any()  # the last allowed model survives


def _blobs(rng: np.random.Generator, k: int, per: int, dim: int = 32, spread: float = 0.15) -> np.ndarray:
    centers = rng.standard_normal((k, dim))
    x = np.repeat(centers, per, axis=0) + spread * rng.standard_normal((k * per, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_choose_k_finds_the_number_of_topics():
    rng = np.random.default_rng(1)
    k, cents, scores = choose_k(_blobs(rng, 3, 60), 8, np.random.default_rng(2))
    assert k == 3 and cents.shape == (3, 32)
    assert scores[3] == max(scores.values())


def test_choose_k_keeps_one_cluster_for_one_topic():
    rng = np.random.default_rng(3)
    k, cents, _ = choose_k(_blobs(rng, 1, 120, spread=1.0), 6, np.random.default_rng(4), min_silhouette=0.2)
    assert k == 1 and cents.shape == (1, 32)


def test_silhouette_matches_the_definition():
    x = np.array([[1, 0], [0.96, 0.28], [0, 1], [0.28, 0.96]], dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 1])
    d = 1 - x @ x.T
    want = []
    for i in range(4):
        same = [j for j in range(4) if labels[j] == labels[i] and j != i]
        other = [j for j in range(4) if labels[j] != labels[i]]
        a, b = d[i, same].mean(), d[i, other].mean()
        want.append((b - a) / max(a, b))
    assert silhouette(x, labels) == pytest.approx(np.mean(want))


def test_bounds_are_the_policys_credible_interval():
    from learner.dominance import bounds
    from learner.policy import credible_interval

    a, b = np.array([[1.0, 2.5, 40.0]]), np.array([[1.0, 7.0, 3.0]])
    lo, hi = bounds(a, b, 0.9)
    want_lo, want_hi = credible_interval(a, b, 0.9)
    assert np.allclose(lo, want_lo) and np.allclose(hi, want_hi)


def test_shrink_from_data_leans_on_the_global_posterior_when_clusters_agree():
    from learner.priors import shrink_from_data

    rng = np.random.default_rng(0)
    n = np.full((4, 2), 400.0)
    same = rng.binomial(400, 0.7, 4)  # model 0: 0.7 everywhere
    apart = rng.binomial(400, [0.2, 0.9, 0.5, 0.8])  # model 1: differs by cluster
    s = np.column_stack([same, apart]).astype(float)
    k = shrink_from_data(n, s, default=5.0, low=2.0, high=50.0)
    assert k[0] > 30 and k[1] == 2.0
    assert shrink_from_data(np.array([[3.0], [0.0]]), np.array([[1.0], [0.0]]), default=5.0)[0] == 5.0
