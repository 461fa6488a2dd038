"""Judge feedback notices a degraded model sooner than thumbs alone (simulations.detection), seeded."""

from __future__ import annotations

import msgspec

from service.runtime import deployment
from service.settings import load_settings
from simulations.detection import markdown, simulate_detection
from simulations.environment import scenario


def test_judge_feedback_on_a_fifth_of_answers_detects_a_degraded_model_sooner(embedder):
    # a short instance (seed 0: 645 requests with thumbs alone, 194 with the judge, 3.3x); the 3x claim
    # rests on the longer five-seed report in docs/simulations.md, this asserts a margin that holds
    dep = deployment(load_settings(None, {}))
    r = simulate_detection(scenario("detection"), embedder, dep, steps=9000, change_at=3000, seeds=(0,))
    assert r.share_before["thumbs"] == r.share_before["thumbs+judge"]  # the same router when the model degrades
    assert r.share_before["thumbs"][0] > 0.5  # it had learned sim-coder for code: detection means something
    assert r.detected["thumbs+judge"] == [True]
    assert r.ratio()[0] >= 2.0, markdown(r)
    assert msgspec.json.decode(msgspec.json.encode(r))["seeds"] == [0]
