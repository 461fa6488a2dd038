"""The whole loop over real HTTP: traffic on two topics, thumbs, learning cycles, routing follows."""

from __future__ import annotations

import httpx

from tests.service.learning import learn_preferences


def test_each_topic_goes_mostly_to_its_preferred_model(live, runtime):
    shares = learn_preferences(live, runtime.cycle.run)
    assert shares["code"] >= 0.7, shares
    assert shares["cooking"] >= 0.7, shares


def test_router_state_moves_after_feedback_and_a_cycle(live, runtime):
    before = httpx.get(live + "/v1/router/state").json()
    with httpx.Client(base_url=live) as c:
        for _ in range(20):
            r = c.post("/v1/chat/completions", json={"model": "sim-mini", "messages": [
                {"role": "user", "content": "Give me a recipe for banana bread."}]})  # fmt: skip
            c.post("/v1/feedback", json={"decision_id": r.headers["x-turnout-decision-id"], "rating": "up"})
    runtime.cycle.run()
    after = httpx.get(live + "/v1/router/state").json()
    assert after["version"] == before["version"] + 1
    cluster = int(r.headers["x-turnout-cluster"])
    m_before = before["clusters"][cluster]["models"]["sim-mini"]
    m_after = after["clusters"][cluster]["models"]["sim-mini"]
    assert m_after["mean"] > m_before["mean"]
    assert m_after["evidence"] == m_before["evidence"] + 20
    assert m_after["decisions"] == 20
    assert (m_after["ci90"][1] - m_after["ci90"][0]) < (m_before["ci90"][1] - m_before["ci90"][0])
