"""A simulated user who prefers a different model on each topic, driving a live service."""

from __future__ import annotations

import collections

import httpx
import numpy as np

from simulations.pool import DEFAULT_TOPICS, make_prompt

TOPICS = {t.name: t for t in DEFAULT_TOPICS}
# the user's taste: on code only sim-coder satisfies, on cooking only sim-chat
PREFERENCE = {"code": "sim-coder", "cooking": "sim-chat"}


def thumbs_up(topic: str, model: str, rng: np.random.Generator) -> bool:
    return bool(rng.random() < (0.9 if PREFERENCE[topic] == model else 0.15))


def drive(client: httpx.Client, rng: np.random.Generator, per_topic: int, feedback: bool = True) -> dict[str, collections.Counter]:
    """Send ``per_topic`` requests on each topic (interleaved); return the models each topic got."""
    got: dict[str, collections.Counter] = {t: collections.Counter() for t in PREFERENCE}
    for _ in range(per_topic):
        for topic in PREFERENCE:
            prompt = make_prompt(TOPICS[topic], rng)
            r = client.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": prompt}]})
            assert r.status_code == 200, r.text
            model = r.headers["x-turnout-model"]
            got[topic][model] += 1
            if feedback:
                rating = "up" if thumbs_up(topic, model, rng) else "down"
                fb = client.post("/v1/feedback", json={"decision_id": r.headers["x-turnout-decision-id"], "rating": rating})
                assert fb.status_code == 202, fb.text
    return got


def learn_preferences(base_url: str, learn, rounds: int = 6, per_topic: int = 30, seed: int = 1234) -> dict[str, float]:
    """Rounds of traffic with feedback, a learning cycle after each; then the preferred share per topic."""
    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for _ in range(rounds):
            drive(client, rng, per_topic)
            learn()
        final = drive(client, rng, 100, feedback=False)
    return {t: final[t][PREFERENCE[t]] / sum(final[t].values()) for t in PREFERENCE}
