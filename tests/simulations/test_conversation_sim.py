"""``turnout simulate --scenario conversations``: chats, and sticky routing against every turn afresh."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learner.embedding import HashingEmbedder
from service.cli import main
from service.runtime import deployment
from service.settings import load_settings
from simulations.conversation_sim import FOLLOW_UPS, chats, simulate_conversations
from simulations.environment import scenario


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("TURNOUT_ROUTER__EMBEDDER", "hashing")
    monkeypatch.setenv("TURNOUT_ROUTER__THOMPSON_SAMPLES", "32")


def test_chats_interleave_follow_ups_and_topic_changes():
    ch = chats(scenario("conversations"), 200, np.random.default_rng(0))
    sizes = np.bincount(ch.chat, minlength=200)
    assert sizes.min() >= 2 and sizes.max() <= 8 and len(ch.texts) == sizes.sum()
    assert (np.diff(ch.chat) != 0).mean() > 0.5  # turns of different chats interleave
    follow = np.array([t in FOLLOW_UPS for t in ch.texts])
    assert 0.15 < follow.mean() < 0.45
    first = {c: i for i, c in reversed(list(enumerate(ch.chat)))}
    assert not follow[list(first.values())].any()  # a chat starts with a question
    changed = sum(len(set(ch.topic[ch.chat == c])) > 1 for c in range(200))
    assert 5 < changed < 60  # some chats change topic halfway


def test_sticky_routing_keeps_chats_on_their_model_and_saves_with_a_cache_discount():
    dep = deployment(load_settings(None, {"TURNOUT_ROUTER__THOMPSON_SAMPLES": "32"}))
    sc = scenario("conversations")
    r = simulate_conversations(sc, HashingEmbedder(256), dep, n_chats=60, seeds=1, learn_every=30)
    arms = {(a.name, a.discount): a for a in r.arms}
    assert set(arms) == {(a, d) for a in ("afresh", "context", "sticky") for d in (0.9, 0.0)}
    sticky, fresh = arms["sticky", 0.9], arms["afresh", 0.9]
    assert sticky.kept.mean > 0.5 and fresh.kept.mean == 0.0
    # a chat changes model only on a turn routed afresh: never on a kept one
    later_per_chat = len(chats(sc, 60, np.random.default_rng([0, 0, 12])).texts) / 60 - 1
    assert sticky.switches.mean <= (1 - sticky.kept.mean) * later_per_chat + 1e-9
    # routing afresh does not depend on the discount (same decisions), only its bills do
    assert arms["afresh", 0.0].quality.mean == fresh.quality.mean and arms["afresh", 0.0].cost_usd.mean > fresh.cost_usd.mean
    assert r.cost_saved.mean == pytest.approx(1 - sticky.cost_usd.mean / fresh.cost_usd.mean, abs=0.05)
    # frozen: every arm on one learned snapshot, nothing learned, the same draw per turn
    frozen = {(a.name, a.discount): a for a in r.frozen}
    assert set(frozen) == set(arms)
    assert frozen["afresh", 0.0].quality.mean == frozen["afresh", 0.9].quality.mean
    assert frozen["context", 0.0].quality.mean == frozen["context", 0.9].quality.mean
    assert frozen["sticky", 0.9].kept.mean > 0.5 and frozen["context", 0.9].kept.mean == 0.0
    assert r.frozen_cost_saved is not None and r.cost_weight == dep.cost_weight
    a = frozen["sticky", 0.9]
    assert a.utility is not None and a.utility.mean == pytest.approx(a.quality.mean - r.cost_weight * a.cost_usd.mean)
    assert r.frozen_cost_saved.mean == pytest.approx(
        1 - frozen["sticky", 0.9].cost_usd.mean / frozen["afresh", 0.9].cost_usd.mean, abs=0.05)


def test_simulate_conversations_json(capsys):
    args = ["simulate", "--scenario", "conversations", "--steps", "100", "--seeds", "2", "--embedder", "hashing", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chats"] == 20 and report["cache_discount"] == 0.9 and len(report["arms"]) == 6
    assert main(["simulate", "--scenario", "conversations", "--cache-discount", "1.5"]) == 2
    assert "--cache-discount" in capsys.readouterr().err
