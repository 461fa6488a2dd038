"""The response cache through the real app, in front of local OpenAI-speaking providers.

Hits are answered without a provider call and recorded as decisions of model "cache"; tenants
never see each other's answers; only good models' answers enter; feedback and re-requests evict;
a hit replays as a normal SSE stream.
"""

from __future__ import annotations

import json

import httpx
import pytest

from service.settings import load_settings
from service.tenants import hash_key
from tests.service.fleet import Fleet

KEYS = {"acme": "sk-acme-cache-1111", "globex": "sk-globex-cache-2222", "initech": "sk-initech-cache-3333"}
TENANTS = [
    {"name": "acme", "api_key_sha256": [hash_key(KEYS["acme"])]},
    {"name": "globex", "api_key_sha256": [hash_key(KEYS["globex"])]},
    {"name": "initech", "api_key_sha256": [hash_key(KEYS["initech"])], "cache": False},
]  # fmt: skip
PROMPT = "Write a Python function that sorts a list."
NEAR = "Write a Python function that sorts a list please."  # cosine 0.96 with PROMPT (wordllama)


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


@pytest.fixture
def gw(fleet, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, cache={"enabled": True}) as g:
        yield g


def chat(gw, tenant: str, content: str = PROMPT, headers: dict | None = None, **body) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": content}], "temperature": 0, **body}
    h = {"authorization": f"Bearer {KEYS[tenant]}", **(headers or {})}
    return httpx.post(gw.url + "/v1/chat/completions", json=payload, headers=h, timeout=10)


def calls(fleet) -> int:
    return sum(p.requests for p in fleet.providers.values())


def metric(gw, line_start: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_a_repeated_prompt_is_answered_from_the_cache_and_recorded_as_a_decision(gw, fleet):
    first = chat(gw, "acme")
    assert first.status_code == 200 and first.headers["x-turnout-model"] == "a" and "x-turnout-cache" not in first.headers
    before = calls(fleet)
    second = chat(gw, "acme")
    assert calls(fleet) == before  # no provider called
    assert second.status_code == 200 and second.json()["choices"][0]["message"]["content"] == "answer from a"
    assert second.json()["model"] == "a"  # whose answer it is
    h = second.headers
    assert (h["x-turnout-model"], h["x-turnout-cache"], float(h["x-turnout-cost-usd"])) == ("cache", "hit-exact", 0.0)
    assert h["x-turnout-cache-source"] == first.headers["x-turnout-decision-id"]
    hit = next(d for d in gw.decisions() if d.decision_id == h["x-turnout-decision-id"])
    assert (hit.policy, hit.arm, hit.model, hit.cost_usd, hit.propensity) == ("cache", "cache", "cache", 0.0, 1.0)
    assert hit.source_decision_id == first.headers["x-turnout-decision-id"] and hit.tenant == "acme"
    near = chat(gw, "acme", NEAR)
    assert near.headers["x-turnout-cache"] == "hit-semantic" and calls(fleet) == before
    assert metric(gw, 'turnout_cache_lookups_total{result="hit_') == 2
    assert metric(gw, 'turnout_cache_lookups_total{result="miss"}') == 1
    assert metric(gw, "turnout_cache_saved_usd_total") == pytest.approx(2 * float(first.headers["x-turnout-cost-usd"]))
    assert metric(gw, "turnout_cache_entries") == 1


def test_another_tenant_is_never_served_the_answer(gw, fleet):
    acme = chat(gw, "acme").headers["x-turnout-decision-id"]
    cache = gw.runtime.chat.cache.cache
    for content in (PROMPT, NEAR):  # the very prompt, and a near-identical one
        before = calls(fleet)
        r = chat(gw, "globex", content)
        assert r.status_code == 200 and "x-turnout-cache" not in r.headers and r.headers["x-turnout-model"] != "cache"
        assert calls(fleet) == before + 1
        assert not cache.verdict("globex", acme, "feedback")  # nor can globex evict acme's answer
        assert cache.verdict("globex", r.headers["x-turnout-decision-id"], "feedback")  # its own: next prompt fresh
    chat(gw, "globex")
    again = chat(gw, "globex")
    assert again.headers["x-turnout-cache"] == "hit-exact" and again.headers["x-turnout-cache-source"] != acme
    assert chat(gw, "acme").headers["x-turnout-cache-source"] == acme


def test_a_tenant_that_opted_out_is_never_cached(gw, fleet):
    for _ in range(2):
        before = calls(fleet)
        assert "x-turnout-cache" not in chat(gw, "initech").headers
        assert calls(fleet) == before + 1


def test_only_deterministic_requests_or_an_opt_in_use_the_cache(gw, fleet):
    for _ in range(2):  # temperature 0.7: sampling, not cached
        assert "x-turnout-cache" not in chat(gw, "acme", temperature=0.7).headers
    on = {"x-turnout-cache": "on"}
    chat(gw, "acme", headers=on, temperature=0.7)
    assert chat(gw, "acme", headers=on, temperature=0.7).headers["x-turnout-cache"] == "hit-exact"
    chat(gw, "acme")
    before = calls(fleet)
    assert "x-turnout-cache" not in chat(gw, "acme", headers={"x-turnout-cache": "off"}).headers
    assert calls(fleet) == before + 1
    assert "x-turnout-cache" not in chat(gw, "acme", content=PROMPT + " ", max_tokens=50).headers  # other params


def test_an_answer_from_a_model_below_the_threshold_is_never_cached(gw, fleet):
    for _ in range(3):  # model b asked for by name: posterior mean 0.4 < min_quality 0.7
        before = fleet.providers["b"].requests
        r = chat(gw, "acme", model="b")
        assert r.headers["x-turnout-model"] == "b" and "x-turnout-cache" not in r.headers
        assert fleet.providers["b"].requests == before + 1
    assert metric(gw, 'turnout_cache_admissions_total{outcome="below_quality"}') == 3
    assert metric(gw, "turnout_cache_entries") == 0


def test_a_thumbs_down_on_a_hit_evicts_the_answer(gw, fleet):
    chat(gw, "acme")
    hit = chat(gw, "acme").headers["x-turnout-decision-id"]
    r = httpx.post(gw.url + "/v1/feedback", json={"decision_id": hit, "rating": "down"},
                   headers={"authorization": f"Bearer {KEYS['acme']}"})  # fmt: skip
    assert r.status_code == 202
    before = calls(fleet)
    assert "x-turnout-cache" not in chat(gw, "acme").headers and calls(fleet) == before + 1
    assert metric(gw, 'turnout_cache_evictions_total{reason="feedback"}') == 1


def test_a_thumbs_down_on_the_source_evicts_and_a_thumbs_up_keeps(gw):
    src = chat(gw, "acme").headers["x-turnout-decision-id"]
    auth = {"authorization": f"Bearer {KEYS['acme']}"}
    httpx.post(gw.url + "/v1/feedback", json={"decision_id": src, "rating": "up"}, headers=auth)
    assert chat(gw, "acme").headers["x-turnout-cache"] == "hit-exact"
    httpx.post(gw.url + "/v1/feedback", json={"decision_id": src, "score": 0.2}, headers=auth)
    assert "x-turnout-cache" not in chat(gw, "acme").headers


def test_a_re_request_evicts_the_answer_re_asked(gw, fleet):
    chat(gw, "acme", user="ann")  # stored
    assert chat(gw, "acme", user="bob").headers["x-turnout-cache"] == "hit-exact"
    before = calls(fleet)
    again = chat(gw, "acme", NEAR, user="bob")  # bob asks again in other words: the hit did not do
    assert "x-turnout-cache" not in again.headers and calls(fleet) == before + 1
    assert metric(gw, 'turnout_cache_evictions_total{reason="re_request"}') == 1
    assert any(f.kind == "re_request" for f in gw.feedback())


def _sse(r: httpx.Response) -> tuple[str, list[dict]]:
    frames = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]), chunks


def test_a_streamed_answer_is_stored_and_a_hit_replays_as_a_normal_stream(gw, fleet):
    first = chat(gw, "acme", stream=True)
    text, _ = _sse(first)
    assert first.headers["x-turnout-model"] == "a"
    before = calls(fleet)
    hit = chat(gw, "acme", stream=True, stream_options={"include_usage": True})
    assert calls(fleet) == before and hit.headers["content-type"].startswith("text/event-stream")
    assert hit.headers["x-turnout-cache"] == "hit-exact"
    replayed, chunks = _sse(hit)
    assert replayed == text and text
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["choices"] == []
    assert chat(gw, "acme").json()["choices"][0]["message"]["content"] == text  # and as JSON


def test_the_openai_sdk_reads_a_hit(gw):
    from openai import OpenAI

    client = OpenAI(base_url=gw.url + "/v1", api_key=KEYS["acme"])
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="auto", temperature=0, messages=[{"role": "user", "content": PROMPT}])  # fmt: skip
    assert raw.headers["x-turnout-cache"] == "hit-exact" and raw.parse().choices[0].message.content == "answer from a"
    chunks = list(client.chat.completions.create(model="auto", temperature=0, stream=True,
                                                 messages=[{"role": "user", "content": PROMPT}]))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "answer from a"
