"""The cascade offline (simulations.replay, simulations.cascade_replay): the gate sees only the cheap
model's outcome, an escalation pays both bills, every attempt is recorded, and no peeking."""

from __future__ import annotations

import msgspec
import numpy as np

from learner.cascade import Cascade
from service.runtime import deployment
from service.settings import load_settings
from simulations.cascade_replay import cascade_replay, markdown
from simulations.outcomes import hide_unchosen
from simulations.replay import ReplayConfig, replay

CASCADE = Cascade("cascade", "sim-chat", "sim-frontier", gate="judge", threshold=0.5)


def _dep():
    return msgspec.structs.replace(deployment(load_settings(None, {})), cascades=(CASCADE,))


def test_escalation_pays_both_bills_and_serves_the_strong_answer(synthetic):
    o, x = synthetic
    cfg = ReplayConfig(seed=1, cost_weight=50.0, learn_every=5, judge_noise=0.0)
    run = replay(o, x, _dep(), cfg)
    cheap, strong = o.models.index("sim-chat"), o.models.index("sim-frontier")
    sent = run.cheap >= 0
    assert 20 < sent.sum() < len(run.rows)  # the router chose the cascade on some prompts, not all
    rows = run.rows[sent]
    assert (run.cheap[sent] == cheap).all()
    esc = run.escalated[sent]
    # a noiseless judge: the gate rejects exactly the cheap answers that scored 0
    assert np.array_equal(esc, o.scores[rows, cheap] < 0.5)
    assert np.allclose(run.costs[sent], o.costs[rows, cheap] + esc * o.costs[rows, strong])
    assert np.array_equal(run.arms[sent], np.where(esc, strong, cheap))
    assert np.array_equal(run.rewards[sent], np.where(esc, o.scores[rows, strong], o.scores[rows, cheap]))
    assert not run.escalated[~sent].any()


def test_the_cascade_keeps_the_no_peeking_property(synthetic):
    o, x = synthetic
    cfg = ReplayConfig(seed=2, cost_weight=300.0, learn_every=5, judge_noise=0.3)
    first = replay(o, x, _dep(), cfg)
    rows, cols = first.revealed()
    changed = hide_unchosen(o, rows, cols, np.random.default_rng(1))
    assert (changed.scores != o.scores).sum() > 1000
    again = replay(changed, x, _dep(), cfg)
    assert np.array_equal(first.arms, again.arms) and np.array_equal(first.propensities, again.propensities)
    assert np.array_equal(first.escalated, again.escalated) and (first.cheap >= 0).any()
    # the control: the cheap model's outcome on the prompts sent to the cascade is read by the gate
    sent = first.rows[first.cheap >= 0]
    cheap = o.models.index("sim-chat")
    scores = o.scores.copy()
    scores[sent, cheap] = 1.0 - scores[sent, cheap]
    flipped = replay(msgspec.structs.replace(o, scores=scores), x, _dep(), cfg)
    assert not np.array_equal(first.escalated, flipped.escalated)


def test_every_attempt_is_recorded_with_the_verdict_and_the_gate_is_evidence_on_the_cheap_model(synthetic):
    from simulations.replay import OfflineDeployment, prices_for

    o, x = synthetic
    dep = _dep()
    sim = OfflineDeployment(o.models, x.shape[1], dep, prices_for(o.models, dep, {}))
    assert sim.models[-1] == "cascade" and sim.cascade_of(len(o.models)) == 0
    choice = sim.route(x[0], 50, np.array([True] * len(o.models)))
    choice = msgspec.structs.replace(choice, arm=len(o.models))
    ch, st = sim.cascades[0].cheap, sim.cascades[0].strong
    sim.record_cascade(choice, x[0], 50, 1.0, ((ch, 0.001), (st, 0.01)), "judge", "judge")
    decisions = sorted(sim.rows._decisions.values(), key=lambda v: v[1].decision_id)  # (ingested, event)
    parent, cheap, strong = (d for _, d in decisions)
    assert parent.model == "cascade" and parent.escalated and np.isclose(parent.cost_usd, 0.011) and parent.gate == "judge"
    assert cheap.policy == strong.policy == "cascade" and cheap.parent_decision_id == parent.decision_id
    assert (cheap.model, strong.model) == ("sim-chat", "sim-frontier") and cheap.cost_usd == 0.001
    stats = {(s.model, s.policy): s for s in sim.rows.decision_stats(0, 10**9)}
    assert stats[("cascade", "auto")].escalations == 1.0
    kinds = {(r.model, r.kind): r.reward_sum for r in sim.rows.reward_stats(0, 10**9)}
    assert kinds == {("cascade", "explicit"): 1.0, ("sim-chat", "judge"): 0.0}


def test_the_report_says_where_the_cascade_wins_or_loses(synthetic):
    o, x = synthetic
    cfg = ReplayConfig(seed=0, cost_weight=50.0, learn_every=10, judge_noise=0.3)
    report, plain, arm = cascade_replay(o, x, deployment(load_settings(None, {})), cfg, CASCADE)
    assert (plain.cheap < 0).all() and (arm.cheap >= 0).any()
    rows = {r.task: r for r in report.rows}
    assert set(rows) == set(o.tasks) | {"all"} and rows["all"].prompts == len(o)
    for r in report.rows:
        assert 0 <= r.to_cascade <= 1 and 0 <= r.escalated <= 1 and 0 < r.break_even < 1
    # sim-chat is weak at code and math, good at cooking and travel: the always-cascade escalates accordingly
    assert rows["code"].always_cascade[2] > rows["cooking"].always_cascade[2] + 0.3
    assert "| all |" in markdown(report)
