"""Budgets: the dual step on the cost weight; which models the exploration cap covers."""

from __future__ import annotations

import numpy as np

from learner.budget import BudgetParams, BudgetTarget, dual_update, explore_share, start

P = BudgetParams()


def test_overspending_raises_the_weight_underspending_lowers_it():
    s = start(BudgetTarget("auto", 0.001, 25.0), P)
    over = dual_update(s, 100, 0.2, P)  # twice the target
    under = dual_update(s, 100, 0.05, P)  # half
    assert over.cost_weight > 25.0 > under.cost_weight
    assert over.realised_cost_usd == 0.002 and over.decisions == 100
    assert dual_update(s, 0, 0.0, P) == s  # no traffic, no step
    huge = dual_update(s, 1, 1000.0, P)
    assert huge.cost_weight == 25.0 * np.exp(P.max_log_change)  # bounded per cycle


def test_steps_telescope_so_the_average_tracks_the_target():
    s = start(BudgetTarget("auto", 1.0, 1.0), P)
    ratios = [1.5, 0.6, 1.2, 0.9, 0.8]
    for r in ratios:
        s = dual_update(s, 10, 10 * r, P)
    assert np.isclose(np.log(s.cost_weight), P.step * sum(r - 1 for r in ratios))


def test_no_cap_until_most_of_the_pool_is_established():
    assert explore_share(np.array([0.0, 3.0]), 20.0, 0.1) == ()
    assert explore_share(np.array([50.0, 3.0, 20.0]), 20.0, 0.1) == (1.0, 0.1, 1.0)  # a newcomer
    # a new pool: the first model to reach the threshold does not throttle the other ten
    assert explore_share(np.array([25.0] + [3.0] * 10), 20.0, 0.1) == ()
    assert explore_share(np.array([25.0] * 6 + [3.0] * 5), 20.0, 0.1) == (1.0,) * 6 + (0.1,) * 5
