"""The HTTP API through a real server: OpenAI schema, headers, feedback, state, bad input."""

from __future__ import annotations

import httpx
import pytest


def _chat(url: str, **body) -> httpx.Response:
    payload = {"model": "auto", "messages": [{"role": "user", "content": "Write a Python function that sorts a list."}]}
    payload.update(body)
    return httpx.post(url + "/v1/chat/completions", json=payload, timeout=10)


def test_chat_answers_in_openai_schema_with_turnout_headers(live, runtime):
    r = _chat(live)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] in runtime.prior.models
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    for h in ("x-turnout-decision-id", "x-turnout-model", "x-turnout-cluster", "x-turnout-cost-usd"):
        assert h in r.headers
    assert r.headers["x-turnout-model"] == body["model"]
    assert float(r.headers["x-turnout-cost-usd"]) > 0


def test_passthrough_model_is_served_and_logged_with_propensity_one(live, runtime):
    r = _chat(live, model="sim-mini")
    assert r.status_code == 200
    assert r.headers["x-turnout-model"] == "sim-mini"
    runtime.sink.flush()
    rows = runtime.client.query(
        "SELECT propensity, policy FROM decisions WHERE decision_id = {d:String}",
        parameters={"d": r.headers["x-turnout-decision-id"]},
    ).result_rows
    assert rows == [(1.0, "passthrough")]


def test_feedback_accepted_stored_as_own_events(live, runtime):
    d = _chat(live).headers["x-turnout-decision-id"]
    a = httpx.post(live + "/v1/feedback", json={"decision_id": d, "rating": "up"})
    b = httpx.post(live + "/v1/feedback", json={"decision_id": d, "score": 0.25, "comment": "meh"})
    assert a.status_code == 202 and b.status_code == 202
    assert a.json()["reward"] == 1.0 and b.json()["reward"] == 0.25
    runtime.sink.flush()
    rewards = runtime.client.query(
        "SELECT reward FROM feedback WHERE decision_id = {d:String} ORDER BY reward",
        parameters={"d": d},
    ).result_rows
    assert rewards == [(0.25,), (1.0,)]


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"decision_id": "00000000-0000-7000-8000-000000000000", "rating": "up"}, 404, "decision_id"),
        ({"decision_id": "x", "rating": "sideways"}, 422, "$.rating"),
        ({"decision_id": "x", "score": 1.5}, 422, "$.score"),
        ({"decision_id": "x"}, 422, "rating"),
        ({"decision_id": "x", "rating": "up", "score": 1.0}, 422, "rating"),
        ({"rating": "up"}, 422, "decision_id"),
        ({"decision_id": 5, "rating": "up"}, 422, "$.decision_id"),
        ({"decision_id": "x", "rating": "up", "bogus": 1}, 422, "bogus"),
    ],
)
def test_feedback_bad_input_is_a_clear_4xx(live, body, status, needle):
    r = httpx.post(live + "/v1/feedback", json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"] or needle == r.json()["error"].get("param")


@pytest.mark.parametrize(
    "raw,status,needle",
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"model": "auto", "messages": "hi"}', 422, "$.messages"),
        (b'{"model": "auto", "messages": []}', 422, "$.messages"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "  "}]}', 422, "user message"),
        (b'{"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}', 422, "$.messages[0].role"),
        (b'{"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}', 404, "unknown model"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 422,
         "$.temperature"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 422, "$.stream"),
        (b'[]', 422, "Expected `object`"),
        (b'', 400, "not valid JSON"),
    ],
)
def test_chat_bad_input_is_a_clear_4xx(live, raw, status, needle):
    r = httpx.post(live + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_oversized_body_gets_413(live, runtime):
    big = "x" * (runtime.settings.server.max_body_bytes + 10)
    r = _chat(live, messages=[{"role": "user", "content": big}])
    assert r.status_code == 413
    assert "too large" in r.json()["error"]["message"]


def test_models_health_and_state(live, runtime):
    models = httpx.get(live + "/v1/models").json()
    ids = {m["id"] for m in models["data"]}
    assert {"auto", *runtime.prior.models} <= ids
    assert httpx.get(live + "/healthz").json()["status"] == "ok"
    state = httpx.get(live + "/v1/router/state").json()
    assert state["version"] >= 1 and state["models"] == list(runtime.prior.models)
    cell = state["clusters"][0]["models"][runtime.prior.models[0]]
    assert cell["ci90"][0] <= cell["mean"] <= cell["ci90"][1]


def test_every_get_route_names_its_charset_at_most_once(live):
    paths = ["/metrics", "/dashboard", "/healthz", "/v1/models", "/v1/router/state", "/schema/openapi.json",
             "/dashboard/dashboard.js", "/dashboard/dashboard.css"]  # fmt: skip
    for path in paths:
        r = httpx.get(live + path)
        assert r.status_code == 200, (path, r.status_code)
        ctype = r.headers["content-type"]
        assert ctype.count("charset") <= 1, (path, ctype)
        if ctype.startswith("text/"):
            assert ctype.endswith("charset=utf-8"), (path, ctype)
