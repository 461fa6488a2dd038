"""Nested, huge and malformed bodies on every POST route: a 4xx that says why, never a 5xx.

Beside ``test_fuzz.py`` (schemathesis, from the OpenAPI document): these are the bodies a schema
does not generate. A table of hostile bodies (the 6 KB body nested 1,000 levels deep that once
gave a 500, invalid UTF-8, lone surrogates, numbers out of range, truncation), then hypothesis
placing arbitrary JSON (deep, wide, huge numbers, any text) in every field. Afterwards every
accepted event must still reach the store: a body that is answered but cannot be stored would
poison the event path instead of failing loudly.
"""

from __future__ import annotations

import itertools

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CHAT, FEEDBACK, OPE = "/v1/chat/completions", "/v1/feedback", "/v1/admin/ope"
POST_ROUTES = (CHAT, FEEDBACK, OPE)
BODYLESS = ("/v1/admin/learner/cycle", "/v1/admin/snapshots/{version}/rollback")  # they read no body
OK = b'{"model": "auto", "messages": [{"role": "user", "content": "Hello there"}]'


def _nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


HOSTILE: dict[str, bytes] = {
    "unknown field nested 1,000 deep (the 6 KB body of issue 15)": OK + b', "x": ' + _nested(1000) + b"}",
    "unknown field of objects nested 1,000 deep": OK + b', "x": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}",
    "content nested 1,000 deep": b'{"model": "auto", "messages": [{"role": "user", "content": '
    + _nested(1000) + b"}]}",
    "the whole body nested 100,000 deep": _nested(100_000),
    "objects nested 100,000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "unclosed nesting": b"[" * 50_000,
    "invalid UTF-8": b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe\xfa"}]}',
    "UTF-8 encoded surrogate": b'{"model": "auto", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    "lone surrogate escape": b'{"model": "auto", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "lone low surrogate escape": b'{"model": "auto", "messages": [{"role": "user", "content": "x\\udc00y"}]}',
    "overlong UTF-8": b'{"model": "auto", "messages": [{"role": "user", "content": "\xc0\xaf"}]}',
    "NUL characters": b'{"model": "auto\\u0000", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
    "NUL in user and unknown field": OK + b', "user": "u\\u0000", "y\\u0000": "\\u0000"}',
    "byte-order mark": b"\xef\xbb\xbf" + OK + b"}",
    "float out of range": OK + b', "temperature": 1e400}',
    "negative float out of range": OK + b', "presence_penalty": -1e400}',
    "integer beyond 64 bits": OK + b', "max_tokens": ' + b"9" * 40 + b"}",
    "seed beyond 64 bits": OK + b', "seed": ' + b"9" * 40 + b"}",
    "negative seed beyond 64 bits": OK + b', "seed": -' + b"9" * 40 + b"}",
    "5,000-digit integer in an unknown field": OK + b', "z": ' + b"9" * 5000 + b"}",
    "NaN literal": OK + b', "temperature": NaN}',
    "Infinity literal": OK + b', "top_p": Infinity}',
    "truncated": OK[:-10],
    "trailing garbage": OK + b"} {}",
    "empty": b"",
    "whitespace": b"   \n ",
    "null": b"null",
    "a string": b'"model"',
    "a number": b"123",
    "duplicate keys": b'{"model": "auto", "model": 5, "messages": [{"role": "user", "content": "x"}]}',
    "missing model": b'{"messages": [{"role": "user", "content": "x"}]}',
    "missing messages": b'{"model": "auto"}',
    "100,000-element array in an unknown field": OK + b', "w": [' + b"0," * 99_999 + b"0]}",
    "20,000 unknown keys": OK + b"," + b",".join(b'"k%d": %d' % (i, i) for i in range(20_000)) + b"}",
    "huge content": b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"ab " * 300_000 + b'"}]}',
    "many messages": b'{"model": "auto", "messages": [' + b",".join([b'{"role": "user", "content": "hi"}'] * 20_000)
    + b"]}",
    "max_tokens huge but valid": OK + b', "max_tokens": 18446744073709551615}',
    "stop as a huge list": OK + b', "stop": [' + b",".join([b'"x"'] * 50_000) + b"]}",
    "content parts nested": b'{"model": "auto", "messages": [{"role": "user", "content": [{"type": "text", "text": '
    + _nested(2000, b"{\"a\":", b"}") + b"}]}]}",
    "stream flag nested deep": OK + b', "stream": ' + _nested(1000) + b"}",
    "stream true and nested deep": OK + b', "stream": true, "q": ' + _nested(1000) + b"}",
    "feedback nested deep": b'{"decision_id": "x", "rating": "up", "comment": ' + _nested(1000) + b"}",
    "feedback score out of range": b'{"decision_id": "x", "score": 1e400}',
    "feedback with lone surrogate": b'{"decision_id": "\\ud800", "rating": "up"}',
}


def _check(r: httpx.Response, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        error = r.json()["error"]
        assert error["message"] and error["type"], f"{what}: {r.text[:300]}"


def _post(client: httpx.Client, route: str, raw: bytes) -> httpx.Response:
    return client.post(route, content=raw, headers={"content-type": "application/json"})


def test_the_fuzz_covers_every_post_route(live):
    doc = httpx.get(live + "/schema/openapi.json").json()
    assert {path for path, item in doc["paths"].items() if "post" in item} == set(POST_ROUTES) | set(BODYLESS)


@pytest.mark.parametrize("route", POST_ROUTES)
def test_hostile_bodies_get_a_4xx_that_says_why(live, runtime, route):
    with httpx.Client(base_url=live, timeout=30) as client:
        for name, raw in HOSTILE.items():
            assert len(raw) <= runtime.settings.server.max_body_bytes, name  # 413 is tested elsewhere
            _check(_post(client, route, raw), f"{route} {name}")
        deep = _post(client, route, HOSTILE["unknown field nested 1,000 deep (the 6 KB body of issue 15)"])
    assert deep.status_code == (400 if route == CHAT else 422), deep.text  # feedback refuses the unknown field first
    assert runtime.sink.flush(30.0) and runtime.sink.failures == 0  # nothing answered is stuck on its way to the store


def test_what_msgspec_calls_truncation_is_told_apart(live):
    for raw, says in ((HOSTILE["empty"], "the body is empty"), (HOSTILE["whitespace"], "the body is empty"),
                      (HOSTILE["lone surrogate escape"], "not part of a surrogate pair"),
                      (HOSTILE["truncated"], "ends before the JSON value does")):  # fmt: skip
        r = httpx.post(live + CHAT, content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and says in r.json()["error"]["message"], (raw[:40], r.text)
        assert "Input data was truncated" not in r.text


def test_missing_model_and_messages_are_named(live):
    for field, raw in (("model", HOSTILE["missing model"]), ("messages", HOSTILE["missing messages"])):
        r = httpx.post(live + CHAT, content=raw, headers={"content-type": "application/json"})
        error = r.json()["error"]
        assert r.status_code == 422 and error["param"] == f"$.{field}" and f"`{field}`" in error["message"], r.text
    r = httpx.post(live + CHAT, json={"model": "auto", "messages": [{"content": "x"}]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "$.messages[0].role", r.text
    for messages, param in (([{"role": "system", "content": "x"}, {"role": "user", "content": " "}], "$.messages[1].content"),
                            ([{"role": "system", "content": "x"}], "$.messages")):  # fmt: skip
        r = httpx.post(live + CHAT, json={"model": "auto", "messages": messages})
        assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text
    r = httpx.post(live + FEEDBACK, json={"rating": "up"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "$.decision_id", r.text


_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
)  # fmt: skip
_json = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                    st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                     max_leaves=30)  # fmt: skip
_KNOWN = ("model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stream",
          "stream_options", "user", "n", "stop", "seed", "presence_penalty", "decision_id", "rating", "score",
          "comment")  # fmt: skip
PLACES = ("unknown field", "known field", "message field", "content part")


@st.composite
def _bodies(draw: st.DrawFn, where: str, depth: int) -> bytes:
    """A plausible body with arbitrary JSON at ``where``, wrapped in ``depth`` arrays, sometimes cut short."""
    body = {"model": "auto", "messages": [{"role": "user", "content": "Tell me about tea."}],
            "decision_id": "x", "rating": "up"}  # fmt: skip
    value = draw(_json)
    for _ in range(depth):
        value = [value]
    if where == "unknown field":
        body[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in body and k not in _KNOWN))] = value
    elif where == "known field":
        body[draw(st.sampled_from(_KNOWN))] = value
    elif where == "message field":
        body["messages"][0][draw(st.sampled_from(["role", "content", "name", "extra"]))] = value
    else:
        body["messages"][0]["content"] = [{"type": "text", "text": value}]
    raw = _encode(body)  # msgspec's own encoder refuses the deepest values
    cut = draw(st.sampled_from([0, 0, 0, 1, 7]))
    return raw[:-cut] if cut else raw


def _encode(obj: object) -> bytes:
    """JSON of a value however deep, built without recursion."""
    out: list[bytes] = []
    stack: list[object] = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):
            out.append(item)
        elif isinstance(item, list):
            stack.append(b"]")
            for i, v in enumerate(reversed(item)):
                stack.append(v)
                if i < len(item) - 1:
                    stack.append(b",")
            out.append(b"[")
        elif isinstance(item, dict):
            stack.append(b"}")
            items = list(item.items())
            for i, (k, v) in enumerate(reversed(items)):
                stack.append(v)
                stack.append(msgspec.json.encode(k) + b":")
                if i < len(items) - 1:
                    stack.append(b",")
            out.append(b"{")
        else:
            out.append(msgspec.json.encode(item))
    return b"".join(out)


@pytest.mark.parametrize("route", POST_ROUTES)
def test_arbitrary_json_in_every_field_never_gets_a_5xx(live, runtime, route):
    with httpx.Client(base_url=live, timeout=30) as client:
        # 20,000 levels: hypothesis raises the recursion limit while it runs (for the whole process,
        # the server's thread included), so 1,000 levels would decode here and prove nothing
        for where, depth in itertools.product(PLACES, (0, 20_000)):

            @given(raw=_bodies(where, depth))
            @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def fuzz(raw: bytes) -> None:
                _check(_post(client, route, raw), f"{route} {raw[:200]!r}")

            fuzz()
    assert runtime.sink.flush(30.0) and runtime.sink.failures == 0
