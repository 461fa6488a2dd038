"""Tenants over HTTP: auth, isolation, rate limits, per-tenant policy, prompts kept only on opt-in,
re-requests as implicit feedback, feedback floods capped, and no key in any log line."""

from __future__ import annotations

import logging

import httpx
import pytest

from service.settings import load_settings
from service.tenants import hash_key
from tests.service.fleet import Fleet

KEYS = {"acme": "sk-acme-7f3a9c0e11d24b5e", "globex": "sk-globex-0b8d2e4f6a1c3e5d", "initech": "sk-initech-5c7e9a1b3d"}
TENANTS = [
    {"name": "acme", "api_key_sha256": [hash_key(KEYS["acme"])], "rate_limit_rps": 0.01, "rate_limit_burst": 3,
     "store_prompts": True},
    {"name": "globex", "api_key_sha256": [hash_key(KEYS["globex"])], "models": ["b", "c"]},
    {"name": "initech", "api_key_sha256": [hash_key(KEYS["initech"])], "exploration_cap": 0.0},
]  # fmt: skip


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


@pytest.fixture
def gw(fleet, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS,
                       feedback_cap={"max_per_user": 2, "window_s": 3600.0}) as g:  # fmt: skip
        yield g


def _h(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


def _chat(gw, tenant: str | None, content: str = "Write a Python function that sorts a list.", **body):
    payload = {"model": "auto", "messages": [{"role": "user", "content": content}], **body}
    headers = _h(tenant) if tenant else {}
    return httpx.post(gw.url + "/v1/chat/completions", json=payload, headers=headers, timeout=10)


def test_keys_are_required_and_checked(gw):
    for headers in ({}, {"authorization": "Bearer sk-nope"}, {"authorization": KEYS["acme"]}):
        r = httpx.post(gw.url + "/v1/chat/completions", headers=headers,
                       json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(gw.url + "/v1/models").status_code == 401
    assert httpx.get(gw.url + "/v1/router/state").status_code == 401
    assert httpx.get(gw.url + "/healthz").status_code == 200  # probes need no key
    assert httpx.get(gw.url + "/metrics").status_code == 200
    r = _chat(gw, "globex")
    assert r.status_code == 200
    assert gw.decisions()[0].tenant == "globex"


def test_feedback_only_for_decisions_of_the_same_tenant(gw):
    d = _chat(gw, "acme").headers["x-turnout-decision-id"]
    other = httpx.post(gw.url + "/v1/feedback", json={"decision_id": d, "rating": "up"}, headers=_h("globex"))
    unknown = httpx.post(gw.url + "/v1/feedback", json={"decision_id": "0190aaaa-0000-7000-8000-000000000000",
                                                        "rating": "up"}, headers=_h("globex"))  # fmt: skip
    assert other.status_code == unknown.status_code == 404  # indistinguishable: ids cannot be probed
    assert other.json()["error"]["code"] == unknown.json()["error"]["code"] == "decision_not_found"
    own = httpx.post(gw.url + "/v1/feedback", json={"decision_id": d, "rating": "up"}, headers=_h("acme"))
    assert own.status_code == 202
    assert [(f.tenant, f.kind) for f in gw.feedback()] == [("acme", "explicit")]


def test_rate_limit_per_key_with_retry_after(gw):
    statuses = [_chat(gw, "acme").status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
    r = _chat(gw, "acme")
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) >= 1
    assert _chat(gw, "globex").status_code == 200  # another tenant's key is not slowed down
    assert 'turnout_rejected_total{reason="rate_limited"} 3' in httpx.get(gw.url + "/metrics").text


def test_tenant_models_and_exploration_cap(gw):
    models = {m["id"] for m in httpx.get(gw.url + "/v1/models", headers=_h("globex")).json()["data"]}
    assert models == {"auto", "b", "c"}
    served = {_chat(gw, "globex", f"question {i}").headers["x-turnout-model"] for i in range(6)}
    assert served <= {"b", "c"}
    r = _chat(gw, "globex", model="a")
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_allowed"
    # initech may not explore: always the model of best posterior mean, logged with propensity 1
    for i in range(5):
        assert _chat(gw, "initech", f"question {i}").headers["x-turnout-model"] == "a"
    initech = [d for d in gw.decisions() if d.tenant == "initech"]
    assert len(initech) == 5 and all(d.propensity == 1.0 and d.arm == "a" for d in initech)


def test_prompts_are_stored_only_for_tenants_that_opt_in(gw):
    _chat(gw, "acme", "acme's secret plan")
    _chat(gw, "globex", "globex's secret plan")
    texts = {d.tenant: d.prompt_text for d in gw.decisions()}
    assert texts == {"acme": "acme's secret plan", "globex": ""}


def test_asking_again_in_other_words_is_negative_feedback_on_the_last_answer(gw):
    first = _chat(gw, "globex", "How do I reverse a list in Python?", user="u-17")
    second = _chat(gw, "globex", "How can I reverse a Python list?", user="u-17")
    unrelated = _chat(gw, "globex", "Best time of year to visit Lisbon?", user="u-17")
    other_user = _chat(gw, "globex", "Best time of year to visit Lisbon?", user="u-18")
    session = [_chat(gw, "globex", "Best time of year to visit Lisbon?", **{}) for _ in range(2)]
    assert all(r.status_code == 200 for r in (first, second, unrelated, other_user, *session))
    rr = [f for f in gw.feedback() if f.kind == "re_request"]
    assert [(f.decision_id, f.reward, f.tenant, f.user) for f in rr] == [
        (first.headers["x-turnout-decision-id"], 0.0, "globex", "u-17")
    ]
    # a session header identifies the asker when there is no user
    headers = {**_h("globex"), "x-session-id": "s-1"}
    a = httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=10,
                   json={"model": "auto", "messages": [{"role": "user", "content": "Translate hello to French"}]})
    httpx.post(gw.url + "/v1/chat/completions", headers=headers, timeout=10,
               json={"model": "auto", "messages": [{"role": "user", "content": "Translate 'hello' into French"}]})
    rr = [f.decision_id for f in gw.feedback() if f.kind == "re_request"]
    assert a.headers["x-turnout-decision-id"] in rr


def test_feedback_flood_from_one_user_is_capped(gw):
    ids = [_chat(gw, "globex", f"question number {i} about sorting", user="flooder").headers["x-turnout-decision-id"]
           for i in range(4)]  # fmt: skip
    replies = [httpx.post(gw.url + "/v1/feedback", json={"decision_id": d, "rating": "down"},
                          headers=_h("globex")).json() for d in ids]  # fmt: skip
    assert [r["status"] for r in replies] == ["accepted", "accepted", "capped", "capped"]
    explicit = [f for f in gw.feedback() if f.kind == "explicit"]
    assert len(explicit) == 2 and all(f.user == "flooder" for f in explicit)


def test_no_key_in_any_log_line_and_logs_are_json_with_the_decision_id(fleet, embedder, caplog):
    from service.logs import JsonFormatter

    caplog.set_level(logging.DEBUG)
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, server={"log_requests": True}) as gw:
        fleet.providers["a"].mode = "500"  # failures are logged too
        ok = _chat(gw, "acme")
        httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-wrong-key-123456"},
                   json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        for _ in range(4):
            _chat(gw, "acme")  # rate-limited after the burst
        events = repr(gw.events())
    lines = [JsonFormatter().format(r) for r in caplog.records]
    answered = [line for line in lines if '"msg":"answered"' in line]
    assert any(ok.headers["x-turnout-decision-id"] in line and '"tenant":"acme"' in line for line in answered)
    for key in (*KEYS.values(), "sk-wrong-key-123456"):
        assert key not in caplog.text and key not in events and not any(key in line for line in lines)
