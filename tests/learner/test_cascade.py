"""The cascade as an arm of the routing core (learner.cascade): columns, cost, escalation, evidence."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from learner.cascade import Cascade, CascadeArm, break_even, cascade_arms, escalation_rates, gate_evidence, pool_names
from learner.fold import LearnerParams, PoolPrior, Window, align, fold
from learner.ports import DecisionStats, RewardStats
from learner.routing import Prices, RoutingParams, View, decide
from learner.snapshot import initial_snapshot

POOL = ("cheap", "dear")
CASCADE = Cascade("c", "cheap", "dear", gate="judge", prior_escalation=0.5)
AXIS = pool_names(POOL, (CASCADE,))
PRICES = Prices(AXIS, (1.0, 10.0, 0.0), (2.0, 30.0, 0.0))  # the cascade has no price of its own


def _snap(k: int = 2, **fields):
    snap = initial_snapshot(models=AXIS, centroids=np.eye(4, dtype=np.float32)[:k], prior_mean=(0.5, 0.8, 0.65),
                            completion_tokens=(100.0,) * 3, latency_s=(1.0,) * 3, prior_strength=2.0,
                            shrink_strength=0.0, created_at_ms=0)  # fmt: skip
    return msgspec.structs.replace(snap, **fields)


def test_the_axis_and_the_columns():
    assert AXIS == ("cheap", "dear", "c")
    assert cascade_arms(AXIS, (CASCADE,)) == (CascadeArm(2, 0, 1, 0.5),)
    with pytest.raises(ValueError, match="strong model 'gone'"):
        cascade_arms(("cheap", "c"), (Cascade("c", "cheap", "gone"),))
    with pytest.raises(ValueError):
        Cascade("x", "a", "a")
    with pytest.raises(ValueError):
        Cascade("x", "a", "b", prior_escalation=1.5)


def test_the_cost_is_cheap_plus_the_escalation_rate_times_strong():
    arms = cascade_arms(AXIS, (CASCADE,))
    # cluster 0: 10 calls, 8 escalated; cluster 1: 10 calls, 1 escalated
    calls = ((0.0, 0.0, 10.0), (0.0, 0.0, 10.0))
    esc = ((0.0, 0.0, 8.0), (0.0, 0.0, 1.0))
    view = View(_snap(calls=calls, escalations=esc, bill_sum=((0.0,) * 3,) * 2, completion_sum=((0.0,) * 3,) * 2),
                PRICES, RoutingParams(n_samples=64), arms)  # fmt: skip
    rates = view.escalation[:, 0]
    assert rates[0] > 0.6 and rates[1] < 0.2  # learned per cluster, shrunk a little toward the fit
    for c in (0, 1):
        costs = view.costs(c, 200)
        assert np.isclose(costs[2], costs[0] + rates[c] * costs[1])
    # a decision reads the same estimate
    choice = decide(view, np.eye(4, dtype=np.float32)[0], 200, 0.0, 0.0, np.array([False, False, True]), 0)
    assert choice.arm == 2 and np.isclose(choice.expected_cost_usd, view.costs(0, 200)[2])


def test_the_prior_escalation_rate_before_any_call():
    rates = escalation_rates(np.zeros((3, 3)), np.zeros((3, 3)), (CascadeArm(2, 0, 1, 0.3),))
    assert np.allclose(rates, 0.3)


def test_fold_learns_escalations_from_the_cascades_records_and_align_adds_the_column():
    snap = _snap(k=1)
    window = Window(0, 1000, rewards=(RewardStats(1, 0, "c", "c", "explicit", 4, 3.0),), stale=(),
                    decisions=(DecisionStats(1, 0, "c", 4, 400.0, 4000.0, "auto", 0.02, escalations=3.0),))  # fmt: skip
    new, _ = fold(snap, window, now_ms=1000, params=LearnerParams(drift=None))
    assert new.escalations[0] == (0.0, 0.0, 3.0) and new.calls[0] == (0.0, 0.0, 4.0)
    assert new.n[0][2] == 4.0 and new.reward_sum[0][2] == 3.0  # the final answer's feedback: the cascade's
    # a pool without the cascade, then with it: the usage tables follow the axis
    before = _snap(k=1)
    plain = msgspec.structs.replace(before, models=POOL, n=((1.0, 2.0),), reward_sum=((0.5, 1.0),), decisions=((1, 2),),
                                    prior_mean=(0.5, 0.8), completion_tokens=(100.0, 100.0), latency_s=(1.0, 1.0),
                                    calls=((1.0, 2.0),), bill_sum=((0.1, 0.2),), completion_sum=((9.0, 8.0),))  # fmt: skip
    grown = align(plain, PoolPrior(AXIS, (0.5, 0.8, 0.65), (100.0,) * 3, (1.0,) * 3))
    assert grown.models == AXIS and grown.calls == ((1.0, 2.0, 0.0),) and grown.n == ((1.0, 2.0, 0.0),)


def test_gate_evidence_and_break_even():
    assert gate_evidence(True, "structural") == 0.0 and gate_evidence(True, "judge") == 0.0
    assert gate_evidence(False, "judge") == 1.0 and gate_evidence(False, "structural") is None
    assert break_even(1.0, 4.0) == 0.75 and break_even(1.0, 0.0) == 0.0
