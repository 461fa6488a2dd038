"""Simulated scenarios: what changes when, the users' feedback, the comparators of regret."""

from __future__ import annotations

import numpy as np
import pytest

from learner.embedding import HashingEmbedder
from simulations.environment import SCENARIOS, Users, feedback, scenario, stream
from service.runtime import deployment
from service.settings import Settings
from simulations.simulate import lai_robbins, late_slope, simulate


def test_every_named_scenario_exists_and_streams():
    assert set(SCENARIOS) >= {"stationary", "model-degrades", "new-topic", "price-change", "new-model-added"}
    for name in SCENARIOS:
        st = stream(scenario(name), 200, np.random.default_rng(0))
        assert len(st.prompts) == 200 and st.quality.shape == (200, len(st.models))
        assert (st.cost_usd[st.available] > 0).all()
    with pytest.raises(ValueError, match="stationary"):
        scenario("nope")


def test_changes_happen_halfway():
    rng = np.random.default_rng(1)
    st = stream(scenario("model-degrades"), 400, rng)
    coder, code = st.models.index("sim-coder"), st.topic_names.index("code")
    early, late = (st.topics == code) & (np.arange(400) < 200), (st.topics == code) & (np.arange(400) >= 200)
    assert st.quality[early, coder].min() == 0.9 and st.quality[late, coder].max() == 0.45
    st = stream(scenario("new-model-added"), 400, rng)
    new = st.models.index("sim-newcomer")
    assert not st.available[:160, new].any() and st.available[160:, new].all()
    st = stream(scenario("price-change"), 400, rng)
    frontier = st.models.index("sim-frontier")
    assert st.price_per_token[399, frontier] == pytest.approx(st.price_per_token[0, frontier] / 10)
    st = stream(scenario("new-topic"), 400, rng)
    legal = st.topic_names.index("legal")
    assert not (st.topics[:200] == legal).any() and (st.topics[200:] == legal).mean() > 0.2


def test_users_thumbs_reasks_and_silence():
    st = stream(scenario("stationary"), 2000, np.random.default_rng(2))
    users = Users(feedback_rate=0.7, noise=0.0, reask_rate=0.5)
    got = [feedback(st, users, t, 0) for t in range(2000)]
    explicit = np.array([st.feedback_u[t, 0] < 0.7 for t in range(2000)])
    happy = st.happy_u < st.quality[:, 0]
    assert all(g == float(h) for g, h, e in zip(got, happy, explicit) if e)  # no noise: thumbs = happiness
    silent = [g for g, e in zip(got, explicit) if not e]
    assert silent.count(None) > 0 and set(silent) <= {None, 0.0}  # unhappy users re-ask: reward 0


def test_lai_robbins_and_slope():
    # two models, quality 0.9 and 0.8, same cost: gap 0.1 / KL(0.8, 0.9)
    kl = 0.8 * np.log(0.8 / 0.9) + 0.2 * np.log(0.2 / 0.1)
    assert lai_robbins(np.array([0.9, 0.8]), np.array([0.9, 0.8])) == pytest.approx(0.1 / kl)
    # a model that cannot be best at any quality (its cost is known) needs no exploration
    assert lai_robbins(np.array([0.9, 0.8]), np.array([0.9, -0.5])) == 0.0
    t = np.arange(1, 1001)
    assert late_slope(3.0 * np.log(t) + 2.0) == pytest.approx(3.0)


def test_simulate_compares_on_the_same_stream():
    rep = simulate(scenario("stationary"), HashingEmbedder(64), deployment(Settings()), 25.0,
                   steps=400, seeds=2, policies=("turnout", "thompson", "uniform", "oracle", "best-single"))  # fmt: skip
    by = {p.name: p for p in rep.policies}
    assert by["oracle"].regret_oracle.mean == 0.0 and by["best-single"].regret_single.mean == 0.0
    assert by["turnout"].regret_oracle.mean < by["uniform"].regret_oracle.mean
    assert len(by["turnout"].curve) == len(rep.checkpoints) and rep.checkpoints[-1] == 400
    assert set(rep.lai_robbins) == {"code", "cooking", "travel", "math"}
