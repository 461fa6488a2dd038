"""Rules before the bandit, over HTTP: pins, safety classes, context window, cost cap, escalation;
and the metrics they leave."""

from __future__ import annotations

import httpx
import pytest

from service.settings import load_settings
from tests.service.fleet import Fleet

RULES = {
    "pins": [{"model": "c", "header": "x-team", "header_value": "legal"},
             {"model": "b", "pattern": "(?i)\\bhaiku\\b"},
             {"model": "c", "requested_model": "gpt-4o-mini"}],
    "safety": [{"name": "medical", "pattern": "(?i)diagnos", "models": ["b"]}],
    "max_cost_usd": 0.5,
}  # fmt: skip


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


def _chat(url: str, content: str, headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": content}], **body}
    return httpx.post(url + "/v1/chat/completions", json=payload, headers=headers or {}, timeout=10)


def test_pins_and_safety_classes(fleet, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, rules=RULES) as gw:
        assert _chat(gw.url, "Summarise this contract", {"x-team": "legal"}).headers["x-turnout-model"] == "c"
        assert _chat(gw.url, "Write a haiku about rain").headers["x-turnout-model"] == "b"
        assert _chat(gw.url, "Hello there", model="gpt-4o-mini").headers["x-turnout-model"] == "c"
        assert _chat(gw.url, "Hello there").headers["x-turnout-model"] == "a"  # no rule: the bandit's favourite
        # a safety class beats a pin, and its models are the only candidates
        r = _chat(gw.url, "Can you diagnose this rash?", {"x-team": "legal"})
        assert r.headers["x-turnout-model"] == "b"
        r = _chat(gw.url, "Can you diagnose this rash?", model="a")
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_allowed"
        pinned = [d for d in gw.decisions() if d.policy == "pinned"]
        assert len(pinned) == 3 and all(d.propensity == 1.0 for d in pinned)


def test_language_is_detected_recorded_answered_and_ruled_on(fleet, embedder):
    rules = {"languages": [{"languages": ["zh"], "models": ["b"]}, {"languages": ["fr"], "forbid": ["a", "b"]}],
             "pins": [{"model": "c", "language": "de"}]}  # fmt: skip
    with fleet.gateway(load_settings(None, {}), embedder, rules=rules) as gw:
        zh = _chat(gw.url, "如何在Python中反转列表？请用切片举一个例子。")
        assert zh.headers["x-turnout-language"] == "zh" and zh.headers["x-turnout-model"] == "b"
        fr = _chat(gw.url, "Comment puis-je inverser une liste en Python ? Montre-moi un exemple.")
        assert fr.headers["x-turnout-language"] == "fr" and fr.headers["x-turnout-model"] == "c"
        de = _chat(gw.url, "Wie kehre ich eine Liste in Python um? Zeig mir bitte ein Beispiel.")
        assert de.headers["x-turnout-model"] == "c"
        en = _chat(gw.url, "How do I reverse a list in Python? Show me an example with slicing.")
        assert en.headers["x-turnout-language"] == "en" and en.headers["x-turnout-model"] == "a"
        refused = _chat(gw.url, "如何在Python中反转列表？请用切片举一个例子。", model="a")
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_allowed"
        langs = {d.decision_id: d.language for d in gw.decisions()}
        assert {langs[r.headers["x-turnout-decision-id"]] for r in (zh, fr, de, en)} == {"zh", "fr", "de", "en"}
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'turnout_request_languages_total{language="zh"} 1' in metrics  # the refused one was not routed
        assert 'turnout_request_languages_total{language="fr"} 1' in metrics


def test_context_window_and_cost_cap(fleet, embedder):
    rules = {"max_cost_usd": 0.002, "answer_reserve_tokens": 100}  # 300 answer tokens at 2 USD/M: 0.0006
    with fleet.gateway(load_settings(None, {}), embedder, rules=rules) as gw:
        r = _chat(gw.url, "word " * 2000)  # + ~2500 prompt tokens at 1 USD/M: above the cap for every model
        assert r.status_code == 400 and r.json()["error"]["code"] == "cost_cap_exceeded"
        assert _chat(gw.url, "short question").status_code == 200
        big = _chat(gw.url, "w " * 300_000)  # ~150k tokens: beyond every context window (128k by default)
        assert big.status_code == 400 and big.json()["error"]["code"] == "context_length_exceeded"
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'turnout_rejected_total{reason="cost_cap_exceeded"} 1' in metrics


def test_low_margin_escalates_to_strong_models(fleet, embedder):
    rules = {"escalation_margin": 10.0, "escalation_min_tier": 0.9}  # every margin is low: only a qualifies
    with fleet.gateway(load_settings(None, {}), embedder, rules=rules) as gw:
        fleet.providers["a"].mode = "400"  # a refuses; escalation means no weaker model may stand in
        r = _chat(gw.url, "What is 2 + 2?")
        assert r.status_code == 400 and fleet.providers["b"].requests == 0
        fleet.providers["a"].mode = "ok"
        assert {_chat(gw.url, f"What is {i} + {i}?").headers["x-turnout-model"] for i in range(5)} == {"a"}


def test_metrics_cover_requests_overhead_upstreams_posteriors_and_events(fleet, embedder):
    with fleet.gateway(load_settings(None, {}), embedder) as gw:
        fleet.providers["a"].mode = "500"
        for i in range(3):
            assert _chat(gw.url, f"question {i}").status_code == 200
        text = httpx.get(gw.url + "/metrics").text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    served = sum(v for k, v in samples.items() if k.startswith('turnout_requests_total{policy="auto"'))
    assert served == 3
    assert samples["turnout_routing_overhead_seconds_count"] == 3
    assert samples['turnout_upstream_errors_total{model="a"}'] == 3
    assert samples['turnout_upstream_latency_seconds_count{model="a"}'] == 3
    assert samples['turnout_feedback_total{kind="upstream_error"}'] == 3
    assert 0 < samples['turnout_posterior_mean{cluster="0",model="a"}'] < 1
    assert "turnout_event_backlog" in samples and "turnout_event_spill_bytes" in samples
    assert "# TYPE turnout_routing_overhead_seconds histogram" in text
    # series that counted nothing yet are there at 0 (an alert on rate() needs them)
    assert samples['turnout_upstream_errors_total{model="b"}'] == 0 and samples['turnout_fallbacks_total{model="a"}'] == 0
    assert samples['turnout_rejected_total{reason="rate_limited"}'] == 0
