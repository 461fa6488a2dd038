"""The simulated judge (simulations.judge): seeded, noise and bias as documented."""

from __future__ import annotations

import numpy as np
import pytest

from simulations.judge import SimulatedJudge, error_rates


def test_a_noiseless_judge_returns_the_score_and_a_seed_repeats():
    scores = np.array([0.0, 1.0, 0.3])
    assert np.array_equal(SimulatedJudge(0.0).grade(scores, np.random.default_rng(0)), scores)
    a = SimulatedJudge(0.5, 0.1).grade(scores, np.random.default_rng(4))
    assert np.array_equal(a, SimulatedJudge(0.5, 0.1).grade(scores, np.random.default_rng(4)))
    assert ((a >= 0) & (a <= 1)).all()


@pytest.mark.parametrize("noise, bias", [(0.3, 0.0), (0.6, 0.0), (0.6, 0.2), (1.0, -0.2)])
def test_the_gate_errors_match_the_formula(noise, bias):
    judge = SimulatedJudge(noise, bias)
    rng = np.random.default_rng(1)
    n = 40_000
    good = judge.grade(np.ones(n), rng) < 0.5  # a good answer rejected
    bad = judge.grade(np.zeros(n), rng) >= 0.5  # a bad answer accepted
    fr, fa = error_rates(judge)
    assert abs(good.mean() - fr) < 0.015 and abs(bad.mean() - fa) < 0.015  # 40k draws: sd < 0.0025
    assert error_rates(SimulatedJudge(0.0)) == (0.0, 0.0)


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError):
        SimulatedJudge(-0.1)
    with pytest.raises(ValueError):
        SimulatedJudge(0.1, float("nan"))
