"""``ChatFirst``: the chat route served before Litestar answers as Litestar does, and leaves the rest to it."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.errors import ApiError
from service.fastpath import CHAT_PATH, ChatFirst


def _call(app, method: str = "POST", path: str = CHAT_PATH, body: bytes = b"", host: bytes = b"127.0.0.1",
          headers: tuple = ()) -> tuple[int, dict[str, str], bytes]:  # fmt: skip
    """One request through an ASGI app in-process: status, headers, body."""
    sent: list[dict] = []

    async def run() -> None:
        given = False

        async def receive() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", host), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()), *headers],
                 "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000), "state": {}}  # fmt: skip
        await app(scope, receive, send)

    asyncio.run(run())
    start = sent[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent[1:])


@pytest.mark.parametrize(
    "method, body, status",
    [
        ("GET", b"", 405),
        ("POST", b"", 400),
        ("POST", b"[]", 422),
        ("POST", b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404),
        ("POST", b'{"model": "auto", "messages": [{"role": "system", "content": "hi"}]}', 422),
    ],
)
def test_errors_before_the_answer_are_litestars_own(runtime, method, body, status):
    fast = _call(runtime.app, method, body=body)
    slow = _call(runtime.app.litestar, method, body=body)
    assert fast[0] == slow[0] == status
    assert fast[2] == slow[2] and json.loads(fast[2])["error"]["message"]
    assert fast[1] == slow[1]  # content-type, content-length and the error's own (allow on 405)


def test_an_answer_is_the_same_by_either_way(runtime):
    body = b'{"model": "auto", "messages": [{"role": "user", "content": "Plan a day in Lisbon"}]}'
    fast, slow = _call(runtime.app, body=body), _call(runtime.app.litestar, body=body)
    assert fast[0] == slow[0] == 200
    assert fast[1].keys() == slow[1].keys() and fast[1]["x-turnout-model"]
    assert json.loads(fast[2]).keys() == json.loads(slow[2]).keys()


def test_what_it_does_not_take_goes_through_litestar(runtime):
    bad_host = _call(runtime.app, body=b"{}", host=b"evil\r\nhost")
    assert bad_host == _call(runtime.app.litestar, body=b"{}", host=b"evil\r\nhost") and bad_host[0] == 400
    slash = _call(runtime.app, path=CHAT_PATH + "/", body=b"")
    assert slash[0] == 400 and slash == _call(runtime.app.litestar, path=CHAT_PATH + "/", body=b"")
    assert _call(runtime.app, "GET", "/healthz")[0] == 200


def test_an_unexpected_error_is_a_500_before_the_answer_and_raised_after_it():
    async def litestar(scope, receive, send) -> None:
        raise AssertionError("not for Litestar")

    async def fails(scope, receive, send) -> None:
        raise RuntimeError("boom")

    status, headers, body = _call(ChatFirst(litestar, fails))
    assert status == 500 and json.loads(body)["error"]["message"] == "internal error"
    assert headers["content-type"] == "application/json" and headers["content-length"] == str(len(body))
    limited = ApiError(429, "slow down", headers={"retry-after": "2"})
    status, headers, body = _call(ChatFirst(litestar, _raises(limited)))
    assert status == 429 and json.loads(body)["error"] == {"message": "slow down", "type": "rate_limit_error",
                                                           "param": None, "code": None}  # fmt: skip
    assert headers == {"content-type": "application/json", "content-length": str(len(body)), "retry-after": "2"}

    async def fails_late(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-answer")

    with pytest.raises(RuntimeError, match="mid-answer"):
        _call(ChatFirst(litestar, fails_late))


def _raises(exc: Exception):
    async def endpoint(scope, receive, send) -> None:
        raise exc

    return endpoint
