"""Off-policy estimators on hand-checked logs, their warnings, input errors, and interval coverage
on the simulator where the truth is known."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from service.runtime import deployment
from service.settings import Settings
from simulations.environment import scenario
from simulations.ope import Logged, LoggedRound, estimate, from_rounds, read_rounds
from simulations.ope_check import check_coverage

ROUNDS = [
    LoggedRound("a", 1.0, 0.5, {"a": 1.0}),
    LoggedRound("b", 0.0, 0.5, {"a": 1.0}),
    LoggedRound("a", 0.0, 0.5, {"a": 1.0}),
    LoggedRound("b", 1.0, 0.5, {"a": 1.0}),
]


def test_ips_and_snips_by_hand():
    rep = estimate(from_rounds(ROUNDS), min_ess=0)
    # weights 2, 0, 2, 0: IPS = (2 + 0 + 0 + 0) / 4, SNIPS = 2 / 4
    assert rep.ips.estimate == pytest.approx(0.5)
    assert rep.snips.estimate == pytest.approx(0.5)
    assert rep.ess == pytest.approx(2.0)  # (2 + 2)^2 / (4 + 4)
    assert rep.ips.ci_low < 0.5 < rep.ips.ci_high and rep.n == 4 and rep.logged_reward == 0.5


def test_dr_is_exact_when_the_target_is_the_logging_policy():
    rng = np.random.default_rng(0)
    n = 2000
    actions = rng.integers(0, 2, n)
    rewards = (rng.random(n) < np.where(actions == 0, 0.8, 0.3)).astype(float)
    half = np.full((n, 2), 0.5)
    rep = estimate(Logged(actions, rewards, np.full(n, 0.5), half, np.zeros(n, dtype=np.int64), ("a", "b")))
    # on-policy, IPS is the plain mean and DR is close to it; the truth is 0.55
    assert rep.ips.estimate == pytest.approx(rewards.mean())
    assert rep.dr.estimate == pytest.approx(0.55, abs=0.03) and rep.dr.ci_low < 0.55 < rep.dr.ci_high
    assert rep.ess == pytest.approx(n) and rep.warning is None


def test_clipping_caps_weights_and_counts_them():
    rounds = [LoggedRound("a", 1.0, 0.01, {"a": 1.0}), LoggedRound("b", 0.0, 0.99, {"a": 1.0})]
    rep = estimate(from_rounds(rounds), clip=10.0, min_ess=0)
    assert rep.clipped == 1 and rep.ips.estimate == pytest.approx(10.0 / 2)
    assert estimate(from_rounds(rounds), min_ess=0).ips.estimate == pytest.approx(100.0 / 2)


def test_warning_when_the_candidate_does_what_the_log_rarely_did():
    rounds = [LoggedRound("a", 1.0, 0.95, {"b": 1.0}) for _ in range(300)] + [LoggedRound("b", 0.0, 0.05, {"b": 1.0})]
    rep = estimate(from_rounds(rounds))
    assert rep.ess == pytest.approx(1.0) and "effective sample size" in rep.warning


def test_reading_rounds_and_their_errors(tmp_path):
    f = tmp_path / "log.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"action": "a", "reward": 1.0, "propensity": 0.25, "target": {"a": 0.7, "b": 0.3}},
        {"action": "b", "reward": 0.0, "propensity": 0.75, "target": {"a": 0.7, "b": 0.3}, "context": "3"},
    ]) + "\n")  # fmt: skip
    logged = from_rounds(read_rounds(f))
    assert logged.action_names == ("a", "b") and logged.actions.tolist() == [0, 1]
    assert logged.contexts.tolist() == [0, 1]
    with pytest.raises(ValueError, match="propensity"):
        from_rounds([LoggedRound("a", 1.0, 0.0, {"a": 1.0})])
    with pytest.raises(ValueError, match="sum to"):
        from_rounds([LoggedRound("a", 1.0, 0.5, {"a": 0.5})])
    f.write_text('{"action": "a"}\n')
    with pytest.raises(ValueError, match="log.jsonl:1"):
        read_rounds(f)


def test_a_candidate_taking_what_the_log_never_took_gets_an_interval_that_holds_any_reward_there():
    """Action b: the logging policy never takes it, the candidate half the time. Its reward is
    unseen, so the truth is anywhere in [0.5 * 0.8, 0.5 * 0.8 + 0.5]: every interval holds both ends."""
    rng = np.random.default_rng(1)
    n = 4000
    rewards = (rng.random(n) < 0.8).astype(float)
    logging = np.tile([1.0, 0.0], (n, 1))
    target = np.tile([0.5, 0.5], (n, 1))
    rep = estimate(Logged(np.zeros(n, dtype=np.int64), rewards, np.ones(n), target, np.zeros(n, dtype=np.int64),
                          ("a", "b"), logging=logging), level=0.9)  # fmt: skip
    assert rep.unsupported == pytest.approx(0.5)
    for iv in (rep.ips, rep.snips, rep.dr):
        assert iv.ci_low <= 0.4 and iv.ci_high >= 0.9, iv
    assert "never chose" in rep.warning
    # the same from a file that gives the logging policy's distribution
    rounds = [LoggedRound("a", 1.0, 1.0, {"a": 0.5, "b": 0.5}, logging={"a": 1.0}) for _ in range(50)]
    assert estimate(from_rounds(rounds), min_ess=0).unsupported == pytest.approx(0.5)
    assert estimate(from_rounds([LoggedRound("a", 1.0, 1.0, {"a": 1.0})]), min_ess=0).unsupported is None


@pytest.mark.parametrize("seed", [0, 8])
def test_intervals_cover_the_truth_at_the_stated_rate(embedder, seed):
    """The logging policy is the router after a warm-up, frozen, with plain Thompson sampling
    (satisfice 0: with satisficing the logging policy is nearly deterministic and nothing is off
    policy); the candidate is the same snapshot at cost weight 5 instead of 25.

    Where the candidate takes models the logging policy never takes there (seed 0: 2% of its
    mass), the widened intervals hold the truth. Where support is whole, SNIPS and DR cover near
    their rate and are unbiased; IPS's normal interval under-covers when a few large weights
    dominate (seed 8: ESS about 130 of 400, coverage about 0.82; over seeds 0-15 it ranged more
    widely, docs/simulations.md says so), so its bound here is looser.
    """
    default = deployment(Settings())
    dep = msgspec.structs.replace(default, routing=msgspec.structs.replace(default.routing, satisfice=0.0))
    cov = check_coverage(scenario("stationary"), embedder, dep, rounds=400, replications=300, level=0.9, seed=seed)
    # 300 replications: a 90% interval's empirical coverage has a standard error of 1.7 points
    assert cov.snips >= 0.8 and cov.dr >= 0.8 and cov.ips >= 0.75, cov
    for name, est in cov.mean_estimate.items():  # IPS and DR count the unseen choices at 0 and q
        assert cov.truth - cov.unsupported - 0.01 <= est <= cov.truth + 0.01, (name, cov)
    if cov.unsupported == 0:
        assert cov.mean_estimate["snips"] == pytest.approx(cov.truth, abs=0.005)
        assert cov.mean_estimate["dr"] == pytest.approx(cov.truth, abs=0.005)
    else:
        assert min(cov.ips, cov.snips, cov.dr) >= 0.87, cov
    assert 50 <= cov.mean_ess < 0.8 * cov.rounds  # the candidate really differs from the logging policy
