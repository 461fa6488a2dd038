"""The replay protocol (bandit feedback, seeded shuffle, task never read) and what it learns,
through the offline deployment (the service's decision, the learner's own cycle)."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from learner.routing import Prices
from service.runtime import deployment
from service.settings import Settings
from simulations.outcomes import hide_unchosen
from simulations.replay import OfflineDeployment, ReplayConfig, replay
from simulations.report import evaluate, oracle_point

DEP = deployment(Settings())  # the service's defaults (with fewer posterior draws, exploration dies out early)
CFG = ReplayConfig(cost_weight=25.0)


def _utility(run, part: slice = slice(None)) -> float:
    return float(np.mean(run.rewards[part] - 25.0 * run.costs[part]))


def test_only_the_chosen_models_outcome_is_revealed(synthetic):
    # the deployment knows no prices here (no [[models]], none in the file): a model costs what
    # its own bills said, so the unchosen models' costs are hidden as well as their scores
    # (test_no_peeking: the same on a priced config)
    o, x = synthetic
    assert not o.prices and not DEP.models
    first = replay(o, x, DEP, CFG)
    changed = hide_unchosen(o, first.rows, first.arms, np.random.default_rng(1))
    again = replay(changed, x, DEP, CFG)
    assert np.array_equal(first.arms, again.arms) and np.array_equal(first.propensities, again.propensities)
    assert changed.scores[~np.isclose(changed.scores, o.scores)].size > 1200  # the hidden scores did change
    assert changed.costs[~np.isclose(changed.costs, o.costs)].size > 1200  # and so did the hidden costs


def test_the_shuffle_is_seeded(synthetic):
    o, x = synthetic
    a, b = replay(o, x, DEP, CFG), replay(o, x, DEP, CFG)
    c = replay(o, x, DEP, msgspec.structs.replace(CFG, seed=1))
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.arms, b.arms)
    assert not np.array_equal(a.rows, c.rows)
    assert sorted(a.rows.tolist()) == list(range(len(o)))


def test_passes_stream_every_prompt_again(synthetic):
    o, x = synthetic
    run = replay(o, x, DEP, msgspec.structs.replace(CFG, passes=2))
    assert len(run.rows) == 2 * len(o)
    assert np.bincount(run.rows).tolist() == [2] * len(o)
    assert ((run.propensities > 0) & (run.propensities <= 1)).all()


def test_routes_topics_to_their_models_better_than_any_single_one(synthetic):
    o, x = synthetic
    shares = []
    for seed in range(4):
        run = replay(o, x, DEP, msgspec.structs.replace(CFG, passes=3, seed=seed))
        first = msgspec.structs.replace(run, **{k: getattr(run, k)[: len(o)] for k in ("rows", "arms", "rewards", "costs")})
        shares.append(evaluate(o, [(25.0, first)]).gap_share_at_cost[0])
    # at its own cost, in its first pass, the router closes part of the gap between the single models
    # and the oracle: on average, one pass of 600 prompts varies a lot with the shuffle (seeds 0-3:
    # -0.08 to +0.51; mean 0.15)
    assert np.mean(shares) > 0.05, shares
    run = replay(o, x, DEP, msgspec.structs.replace(CFG, passes=3))
    utility = run.rewards - 25.0 * run.costs
    best_single = max(np.nanmean(o.scores[:, j] - 25.0 * o.costs[:, j]) for j in range(len(o.models)))
    late = utility[2 * len(o) :].mean()  # once it has learned (third pass)
    assert late > best_single + 0.03
    oc, oq = oracle_point(o, 25.0)
    assert late < oq - 25.0 * oc  # bandit feedback stays below the per-prompt oracle
    assert run.n_clusters == DEP.learner.n_clusters  # the traffic was clustered (cold start, then growth)


def test_streaming_the_train_file_first_helps(synthetic):
    """Warm start is traffic served before: the train outcomes are streamed first, with bandit
    feedback, through the same deployment, and only the test outcomes are scored."""
    o, x = synthetic
    train, test = o.take(np.arange(300)), o.take(np.arange(300, 600))
    whole, early = [], []
    for seed in range(6):
        cfg = msgspec.structs.replace(CFG, seed=seed)
        cold = replay(test, x[300:], DEP, cfg)
        hot = replay(test, x[300:], DEP, cfg, warm=(train, x[:300]))
        assert len(hot.rows) == len(cold.rows) == 300 and sorted(hot.rows.tolist()) == list(range(300))
        assert hot.n_clusters == DEP.learner.n_clusters
        whole.append(_utility(hot) - _utility(cold))
        early.append(_utility(hot, slice(0, 150)) - _utility(cold, slice(0, 150)))
    # bandit feedback on 300 prompts (not the full matrix the old fit read): it helps most while
    # the cold deployment is still learning. One shuffle of 300 prompts is noisy (seeds 0-5: the
    # first half -0.03 to +0.13, mean +0.06; the whole -0.04 to +0.09, mean +0.02), so the claim is
    # on the mean
    assert np.mean(whole) > 0.0, whole
    assert np.mean(early) > 0.03, early


def test_budget_paces_the_cost_weight(synthetic):
    o, x = synthetic
    budget = 1.0e-3
    run = replay(o, x, DEP, msgspec.structs.replace(CFG, budget_usd=budget, passes=3))
    late = run.costs[len(o) :].mean()  # after the first pass
    assert late == pytest.approx(budget, rel=0.3)
    assert run.cost_weight != 25.0  # the learner moved it


def test_offline_deployment_propensities_are_a_distribution_and_only_feedback_is_evidence():
    dep = msgspec.structs.replace(DEP, learner=msgspec.structs.replace(DEP.learner, grace_ms=0))
    sim = OfflineDeployment(("a", "b", "c"), 4, dep, Prices(("a", "b", "c"), (1.0, 2.0, 10.0), (1.0, 2.0, 10.0)))
    emb = np.array([1.0, 0, 0, 0], dtype=np.float32)
    allowed = np.array([True, False, True])
    rated = 0
    for _ in range(5):
        choice = sim.route(emb, 100.0, allowed)
        props = np.array(choice.propensities)
        assert props.sum() == pytest.approx(1.0) and props[1] == 0.0 and props[choice.arm] > 0
        assert choice.propensity == props[choice.arm] and choice.arm != 1
        reward = 1.0 if choice.arm == 0 else None
        rated += reward is not None
        sim.record(choice, emb, 100, reward, 1e-4)
    sim.learn()
    snap = sim.view.snapshot
    assert snap.version == 2 and sum(map(sum, snap.decisions)) == 5
    assert sum(map(sum, snap.n)) == pytest.approx(rated)  # decisions without feedback carry no weight


def test_offline_knn_trained_on_every_label_routes_the_topics_of_unseen_prompts(synthetic):
    """The ceiling of ``bench.replay --ceiling``: where topics differ, a kNN router trained on
    every label of one half routes the other half better than any mix of single models, reads
    nothing of the test half but the chosen outcome, and never picks an unavailable model."""
    from simulations.baselines import offline_knn

    o, x = synthetic
    train, test = o.take(np.arange(300)), o.take(np.arange(300, 600))
    runs = [(w, offline_knn(train, x[:300], test, x[300:], w, 20)) for w in (0.0, 25.0, 100.0)]
    assert evaluate(test, runs).gap_share > 0.2
    for _, run in runs:
        assert test.available[run.rows, run.arms].all() and sorted(run.rows.tolist()) == list(range(300))
        hidden = hide_unchosen(test, run.rows, run.arms, np.random.default_rng(1))  # unchosen outcomes changed
        again = offline_knn(train, x[:300], hidden, x[300:], run.cost_weight, 20)
        assert (again.arms == run.arms).all()
    with pytest.raises(ValueError, match="models differ"):
        offline_knn(train, x[:300], msgspec.structs.replace(test, models=test.models[::-1]), x[300:], 0.0, 5)


def test_the_gap_share_by_quarter_is_the_learning_curve_of_one_shuffle(synthetic):
    from simulations.report import gap_share_by_part

    o, x = synthetic
    runs = [(w, replay(o, x, DEP, msgspec.structs.replace(CFG, seed=3, cost_weight=w))) for w in (0.0, 25.0)]
    assert gap_share_by_part(o, runs, parts=1) == (evaluate(o, runs).gap_share,)  # one part: the whole stream
    curve = gap_share_by_part(o, runs, parts=4)
    assert len(curve) == 4 and all(np.isfinite(curve))
    assert curve[3] > curve[0]  # it learns: the last quarter captures more of the gap (seeds 0-5: all six)
    other = replay(o, x, DEP, msgspec.structs.replace(CFG, seed=4, cost_weight=25.0))
    with pytest.raises(ValueError, match="one shuffle"):
        gap_share_by_part(o, [runs[0], (25.0, other)])
