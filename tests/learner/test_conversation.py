"""Conversations in the core (learner.conversation): the decayed context, and the economics of staying."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from learner.conversation import context_sum, kept_choice, normalised, routed_on, switch_gain
from learner.routing import Prices, RoutingParams, View
from learner.snapshot import initial_snapshot

MODELS = ("cheap", "mid", "dear")
PRICES = Prices(MODELS, (0.1, 1.0, 10.0), (0.4, 4.0, 30.0))


def _view(prior_mean=(0.5, 0.6, 0.9)) -> View:
    snap = initial_snapshot(models=MODELS, centroids=np.eye(4, dtype=np.float32)[:2], prior_mean=prior_mean,
                            completion_tokens=(100.0,) * 3, latency_s=(1.0,) * 3, prior_strength=2.0,
                            shrink_strength=0.0, created_at_ms=0)  # fmt: skip
    return View(snap, PRICES, RoutingParams(n_samples=64))


def test_context_is_a_decayed_sum_of_the_turns_routed_at_unit_norm():
    e = np.eye(4, dtype=np.float32)
    s1 = context_sum(None, e[0], 0.5)
    s2 = context_sum(s1, e[1], 0.5)
    s3 = context_sum(s2, e[2], 0.5)
    assert np.allclose(s3, [0.25, 0.5, 1.0, 0.0])
    assert np.isclose(np.linalg.norm(normalised(s3)), 1.0)
    assert np.array_equal(context_sum(s3, e[3], 0.0), e[3])  # decay 0: the last message alone
    assert np.array_equal(context_sum(np.ones(8, dtype=np.float32), e[3], 0.5), e[3])  # another dimension: restart
    assert np.array_equal(normalised(np.zeros(4, dtype=np.float32)), np.zeros(4))


def test_switch_gain_is_the_best_other_utility_minus_the_kept_one_with_its_discount():
    view = _view()
    costs = view.costs(0, 1000)
    w = 25.0
    utility = view.mean[0] - w * costs
    gain = switch_gain(view, 0, costs, w, 0.0, None, previous=1, cache_discount_usd=0.0)
    assert gain == pytest.approx(max(utility[0], utility[2]) - utility[1])
    with_discount = switch_gain(view, 0, costs, w, 0.0, None, previous=1, cache_discount_usd=1e-3)
    assert with_discount == pytest.approx(gain - w * 1e-3)  # the lost discount counts against switching
    only_prev = np.array([False, True, False])
    assert switch_gain(view, 0, costs, w, 0.0, only_prev, 1, 0.0) == -np.inf
    # a rule that forbids the best other model: the gain is measured against the allowed ones
    no_dear = np.array([True, True, False])
    assert switch_gain(view, 0, costs, 0.0, 0.0, no_dear, 1, 0.0) == pytest.approx(view.mean[0, 0] - view.mean[0, 1])


def test_kept_choice_is_certain_and_fails_over_by_utility():
    view = _view()
    costs = view.costs(1, 500)
    kept = kept_choice(view, 1, 0.3, costs, 0.0, 0.0, None, previous=0, cache_discount_usd=1e-5)
    assert kept.arm == 0 and kept.propensity == 1.0 and kept.propensities == (1.0, 0.0, 0.0)
    assert kept.fallback_order == (2, 1)  # by posterior mean (cost weight 0): dear, then mid
    assert kept.expected_cost_usd == pytest.approx(costs[0] - 1e-5)
    assert kept.cluster == 1 and kept.margin == 0.3
    allowed = np.array([True, True, False])
    assert kept_choice(view, 1, 0.3, costs, 0.0, 0.0, allowed, 0, 0.0).fallback_order == (1,)


@given(st.floats(0.0, 1e-2), st.floats(0.0, 100.0))
def test_a_larger_cache_discount_never_makes_a_switch_more_attractive(discount, weight):
    view = _view()
    costs = view.costs(0, 2000)
    base = switch_gain(view, 0, costs, weight, 0.0, None, 0, 0.0)
    assert switch_gain(view, 0, costs, weight, 0.0, None, 0, discount) <= base + 1e-12


def test_a_turn_with_nothing_mixed_in_is_routed_on_its_embedding_bit_for_bit():
    e = np.array([0.6, 0.8, 0.0, 0.0], dtype=np.float32)
    assert routed_on(None, e, 0.5)[1] is e
    assert routed_on(np.ones(4, dtype=np.float32), e, 0.0)[1] is e
    summed, at = routed_on(np.array([1, 0, 0, 0], dtype=np.float32), e, 0.5)
    assert np.allclose(summed, [1.1, 0.8, 0, 0]) and np.isclose(at @ at, 1.0)
