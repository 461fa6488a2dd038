"""The Thompson policy core: posteriors, shrinkage, propensities. Seeded and exact."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.policy import choose, credible_interval, draw_samples, expected_cost_usd, posterior, update_stats

PRIOR = np.array([0.5, 0.5, 0.5])


def test_posterior_without_evidence_is_the_prior():
    a, b = posterior(np.zeros((2, 3)), np.zeros((2, 3)), np.array([0.8, 0.5, 0.2]), 2.0, 5.0)
    assert np.allclose(a / (a + b), [[0.8, 0.5, 0.2]] * 2)
    assert np.allclose(a + b, 5.0)


def test_posterior_moves_with_evidence_and_only_with_evidence():
    n = np.zeros((2, 3))
    s = np.zeros((2, 3))
    n2, s2 = update_stats(n, s, np.array([0, 0, 0]), np.array([1, 1, 1]), np.array([1.0, 1.0, 1.0]))
    assert n2[0, 1] == 3 and s2[0, 1] == 3 and n2.sum() == 3
    a0, b0 = posterior(n, s, PRIOR, 2.0, 5.0)
    a1, b1 = posterior(n2, s2, PRIOR, 2.0, 5.0)
    m0, m1 = a0 / (a0 + b0), a1 / (a1 + b1)
    assert m1[0, 1] > m0[0, 1]
    assert np.allclose(m1[:, [0, 2]], m0[:, [0, 2]])  # other models untouched


def test_shrinkage_new_cluster_inherits_the_global_posterior():
    # model 0 is great in cluster 0, model 1 bad there; cluster 1 has seen nothing
    n = np.array([[50.0, 50.0], [0.0, 0.0]])
    s = np.array([[45.0, 5.0], [0.0, 0.0]])
    a, b = posterior(n, s, np.array([0.5, 0.5]), 2.0, 5.0)
    mean = a / (a + b)
    assert mean[1, 0] > 0.8 and mean[1, 1] < 0.2  # informed start, not 0.5/0.5
    assert np.allclose(a[1] + b[1], 5.0)  # but only shrink_strength pseudo-observations


def test_discount_fades_old_evidence():
    n, s = np.array([[10.0]]), np.array([[10.0]])
    n2, s2 = update_stats(n, s, np.array([0]), np.array([0]), np.array([0.0]), discount=0.5)
    assert n2[0, 0] == 6.0 and s2[0, 0] == 5.0


def test_choose_is_exact_share_of_rows_won():
    samples = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.2]], dtype=np.float32)
    arm, props = choose(samples, np.zeros(2), np.ones(2, dtype=bool), row=1)
    assert arm == 1
    assert props.tolist() == [0.5, 0.5]
    # a cost penalty flips row 2
    arm, props = choose(samples, np.array([0.2, 0.0]), np.ones(2, dtype=bool), row=2)
    assert arm == 1 and props.tolist() == [0.25, 0.75]


def test_disallowed_models_are_never_chosen():
    rng = np.random.default_rng(0)
    samples = rng.random((64, 3)).astype(np.float32)
    allowed = np.array([False, True, False])
    for row in range(64):
        arm, props = choose(samples, np.zeros(3), allowed, row)
        assert arm == 1 and props[1] == 1.0


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 4),
    m=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    cost_weight=st.floats(0, 100),
    row=st.integers(0, 10_000),
)
def test_propensities_sum_to_one_and_chosen_is_positive(k, m, seed, cost_weight, row):
    rng = np.random.default_rng(seed)
    n = rng.integers(0, 30, size=(k, m)).astype(float)
    s = n * rng.random((k, m))
    a, b = posterior(n, s, rng.uniform(0.1, 0.9, m), 2.0, 5.0)
    samples = draw_samples(a, b, 128, rng)
    costs = expected_cost_usd(100, rng.uniform(10, 500, m), rng.uniform(0, 10, m), rng.uniform(0, 30, m))
    allowed = rng.random(m) < 0.7
    allowed[rng.integers(m)] = True
    arm, props = choose(samples[rng.integers(k)], cost_weight * costs, allowed, row % 128)
    assert abs(props.sum() - 1.0) < 1e-9
    assert props[arm] > 0 and allowed[arm]
    assert (props[~allowed] == 0).all()


@settings(max_examples=60, deadline=None)
@given(n=st.floats(0, 1000), frac=st.floats(0, 1), reward=st.sampled_from([0.0, 1.0]), k=st.integers(1, 3))
def test_thumbs_up_never_lowers_and_thumbs_down_never_raises_the_mean(n, frac, reward, k):
    # Binary rewards only: a fractional reward lying between a cluster's mean and the model's
    # global mean can move the cluster mean slightly *away* from it, because the same
    # observation also pulls the global mean (the shrinkage target) the other way.
    # Hypothesis found that case; it is a property of the hierarchical model, not a bug.
    nn = np.full((k, 1), n)
    ss = nn * frac
    a0, b0 = posterior(nn, ss, np.array([0.5]), 2.0, 5.0)
    n2, s2 = update_stats(nn, ss, np.array([0]), np.array([0]), np.array([reward]))
    a1, b1 = posterior(n2, s2, np.array([0.5]), 2.0, 5.0)
    before, after = a0 / (a0 + b0), a1 / (a1 + b1)
    if reward == 1.0:
        assert (after >= before - 1e-12).all()
    else:
        assert (after <= before + 1e-12).all()


def test_thompson_sampling_learns_the_better_arm_seeded():
    rng = np.random.default_rng(42)
    truth = np.array([0.3, 0.7, 0.5])
    n, s = np.zeros((1, 3)), np.zeros((1, 3))
    picks = []
    for _ in range(60):  # 60 batches of 10 decisions against a fixed snapshot
        a, b = posterior(n, s, np.full(3, 0.5), 2.0, 5.0)
        samples = draw_samples(a, b, 256, rng)
        arms = np.array([choose(samples[0], np.zeros(3), np.ones(3, bool), int(rng.integers(256)))[0] for _ in range(10)])
        rewards = (rng.random(10) < truth[arms]).astype(float)
        n, s = update_stats(n, s, np.zeros(10, dtype=int), arms, rewards)
        picks.extend(arms.tolist())
    late = np.array(picks[-200:])
    assert (late == 1).mean() > 0.8


def test_credible_interval_contains_the_mean():
    a, b = np.array([[3.0, 30.0]]), np.array([[7.0, 70.0]])
    lo, hi = credible_interval(a, b, 0.9)
    mean = a / (a + b)
    assert (lo < mean).all() and (mean < hi).all()
    assert hi[0, 1] - lo[0, 1] < hi[0, 0] - lo[0, 0]  # more evidence, narrower
