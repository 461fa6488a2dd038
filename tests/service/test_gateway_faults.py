"""Fault injection: local providers that fail, rate-limit, time out, stall or refuse connections."""

from __future__ import annotations

import json

import httpx
import pytest

from service.settings import load_settings
from tests.service.fleet import Fleet

PROMPTS = ["Write a Python function that sorts a list.", "Plan three days in Lisbon.",
           "How long should I boil an egg?", "What is the integral of x squared?"]  # fmt: skip


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


@pytest.fixture
def base():
    return load_settings(None, {})


def _chat(url: str, i: int = 0, **body) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], **body}
    return httpx.post(url + "/v1/chat/completions", json=payload, timeout=10)


def _stream(url: str, i: int = 0, **body) -> tuple[int, list[str]]:
    payload = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
               **body}  # fmt: skip
    with httpx.stream("POST", url + "/v1/chat/completions", json=payload, timeout=10) as r:
        return r.status_code, [line for line in r.iter_lines() if line]


def _text(lines: list[str]) -> str:
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


@pytest.mark.parametrize("fault", ["500", "429", "timeout", "refused"])
def test_one_provider_failing_every_request_costs_clients_nothing(fleet, base, embedder, fault):
    refused = ("a",) if fault == "refused" else ()
    with fleet.gateway(base, embedder, refused=refused, breaker={"open_s": 60.0}) as gw:
        a = fleet.providers["a"]
        a.mode = "ok" if fault == "refused" else fault
        a.retry_after_s = 0  # a 429 without a long wait: it still fails every time
        for i in range(12):
            if i % 3 == 2:
                status, lines = _stream(gw.url, i)
                assert status == 200 and lines[-1] == "data: [DONE]" and "error" not in "".join(lines)
            else:
                r = _chat(gw.url, i)
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"].startswith("answer from ")
                assert r.headers["x-turnout-model"] in ("b", "c")
        breaker = gw.breaker("a")
        assert breaker.opened >= 1
        assert a.requests == (0 if refused else 3)  # once open (3 failures), nothing more goes to a
        state = httpx.get(gw.url + "/v1/router/state").json()
        assert state["circuits"]["a"]["state"] in ("open", "half_open")

        # every failed attempt is negative evidence for a, on a record of its own
        decisions = gw.decisions()
        attempts = [d for d in decisions if d.policy == "failover"]
        mains = {d.decision_id: d for d in decisions if d.policy != "failover"}
        assert len(mains) == 12 and all(d.status == "ok" for d in mains.values())
        assert len(attempts) == 3 and all(d.model == "a" and d.status == "error" for d in attempts)
        assert all(d.parent_decision_id in mains for d in attempts)
        negative = {f.decision_id for f in gw.feedback() if f.kind == "upstream_error" and f.reward == 0.0}
        assert negative == {d.decision_id for d in attempts}
        # the policy's choice and its propensity stay on the request's own decision
        failed_over = [mains[d.parent_decision_id] for d in attempts]
        assert all(m.arm == "a" and m.model in ("b", "c") and 0 < m.propensity <= 1 for m in failed_over)


def test_breaker_opens_probes_and_closes_when_the_provider_recovers(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        clock = gw.freeze_breakers()
        a = fleet.providers["a"]
        a.mode = "500"
        for i in range(6):
            assert _chat(gw.url, i).status_code == 200
        assert gw.breaker("a").state == "open" and a.requests == 3
        a.mode = "ok"  # the provider recovers
        clock.advance(0.31)  # past open_s: the next request may probe
        assert httpx.get(gw.url + "/v1/router/state").json()["circuits"]["a"]["state"] == "half_open"
        served = [_chat(gw.url, i).headers["x-turnout-model"] for i in range(6)]
        assert gw.breaker("a").state == "closed"
        assert "a" in served and a.requests >= 4
        metrics = httpx.get(gw.url + "/metrics").text
        assert 'turnout_circuit_state{model="a"} 0' in metrics
        assert 'turnout_circuit_opened{model="a"} 1' in metrics


def test_a_failed_probe_opens_the_circuit_again(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        clock = gw.freeze_breakers()
        a = fleet.providers["a"]
        a.mode = "500"
        for i in range(4):
            _chat(gw.url, i)
        clock.advance(0.31)
        assert _chat(gw.url).status_code == 200  # probe to a fails, b answers
        assert gw.breaker("a").state == "open" and gw.breaker("a").opened == 2


def test_retry_after_is_honoured_then_the_same_provider_answers(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        a = fleet.providers["a"]
        a.mode, a.remaining, a.retry_after_s = "429", 1, 0.2
        r = _chat(gw.url, model="a")  # asked by name: only a may answer
        assert r.status_code == 200 and r.headers["x-turnout-model"] == "a"
        assert r.headers["x-turnout-fallbacks"] == "1" and a.requests == 2


def test_a_long_retry_after_is_a_503_with_retry_after_not_a_wait(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        a = fleet.providers["a"]
        a.mode, a.retry_after_s = "429", 7
        r = _chat(gw.url, model="a")
        assert r.status_code == 503 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["code"] == "upstream_unavailable"
        assert r.headers["x-turnout-decision-id"]


def test_every_provider_down_is_a_502_naming_each_failure(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        for p in fleet.providers.values():
            p.mode = "500"
        r = _chat(gw.url)
        assert r.status_code == 502
        msg = r.json()["error"]["message"]
        assert all(f"{m}: HTTP 500" in msg for m in "abc")
        failed = [d for d in gw.decisions() if d.policy != "failover"]
        assert len(failed) == 1 and failed[0].status == "error" and failed[0].model == ""


def test_a_request_the_provider_rejects_is_not_failed_over(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        fleet.providers["a"].mode = "400"
        r = _chat(gw.url, model="a")
        assert r.status_code == 400 and r.json()["error"]["code"] == "upstream_rejected"
        assert fleet.providers["b"].requests == 0 and gw.breaker("a").state == "closed"


def test_streaming_fails_over_before_the_first_byte_when_the_first_token_is_late(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        a = fleet.providers["a"]
        a.mode = "slow_first"  # 5 s; ttft_timeout_s is 1
        status, lines = _stream(gw.url)
        assert status == 200 and lines[-1] == "data: [DONE]"
        assert '"model":"b"' in lines[0] or '"model":"c"' in lines[0]
        assert _text(lines) in ("answer from b", "answer from c") and "error" not in "".join(lines)


def test_a_stream_stalling_after_the_first_byte_ends_with_an_error_chunk_and_done(fleet, base, embedder):
    with fleet.gateway(base, embedder) as gw:
        a = fleet.providers["a"]
        a.mode = "stall"  # 5 s; the read timeout is 1
        status, lines = _stream(gw.url, model="a")
        assert status == 200
        assert '"content":"answer"' in "".join(lines)  # the first word got through
        assert '"error"' in lines[-2] and "upstream_error" in lines[-2]
        assert lines[-1] == "data: [DONE]"
        main = [d for d in gw.decisions() if d.policy != "failover"]
        assert main[0].status == "error" and main[0].model == "a"
        assert [f.kind for f in gw.feedback()] == ["upstream_error"]


def test_provider_key_is_sent_upstream_and_appears_nowhere_else(fleet, base, embedder, monkeypatch, caplog):
    secret = "sk-provider-SECRET-0123456789"
    monkeypatch.setenv("FLEET_PROVIDER_KEY", secret)
    caplog.set_level("DEBUG")
    with fleet.gateway(base, embedder) as gw:
        fleet.providers["a"].mode = "500"
        bodies = [_chat(gw.url, i).text for i in range(4)]
        fleet.providers["b"].mode = fleet.providers["c"].mode = "500"
        bodies.append(_chat(gw.url).text)
        bodies.append(httpx.get(gw.url + "/metrics").text)
        bodies.append(httpx.get(gw.url + "/v1/router/state").text)
        events = repr(gw.events())
    assert f"Bearer {secret}" in fleet.providers["b"].auth
    assert fleet.providers["b"].bodies[0]["model"] == "up-b"
    assert "HTTP 500" in bodies[4]
    for text in (*bodies, events, caplog.text, repr(gw.runtime.upstreams)):
        assert secret not in text
