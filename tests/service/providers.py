"""Local upstream providers that speak the OpenAI wire format and can be told to misbehave.

``FakeProvider`` is a raw ASGI app served over HTTP by tests.servers.serve. Its ``mode`` is read
per request, so a test can break and heal a provider while the gateway runs:

    ok        answer (JSON, or SSE when the body asks for a stream)
    500       HTTP 500 with an OpenAI error body
    429       HTTP 429 with ``Retry-After: retry_after_s``
    timeout   wait ``delay_s`` before answering (longer than the gateway's read timeout)
    stall     stream: send the first chunk, then stall for ``delay_s`` (mid-stream failure)
    slow_first  stream: wait ``delay_s`` before the first chunk (time-to-first-token)
    400       HTTP 400 (the request's fault: not to be failed over)

``remaining = n`` makes the mode last n more requests, then the provider heals.

A refused connection is simply a port nobody listens on (``tests.servers.free_port()``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

__all__ = ["FakeProvider"]


class FakeProvider:
    def __init__(self, name: str, answer: str | Callable[[dict], str] | None = None) -> None:
        self.name = name
        self.answer = answer or f"answer from {name}"  # or a function of the request's JSON body
        self.mode = "ok"
        self.remaining: int | None = None  # misbehave for this many more requests, then heal
        self.retry_after_s = 1
        self.delay_s = 5.0
        self.requests = 0
        self.bodies: list[dict] = []
        self.auth: list[str] = []
        self.logprobs: list[float] | None = None  # per token in a JSON answer's choice, when set

    def _text(self, req: dict) -> str:
        return self.answer(req) if callable(self.answer) else self.answer

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.requests += 1
        req = json.loads(body or b"{}")
        self.bodies.append(req)
        self.auth.append(dict(scope["headers"]).get(b"authorization", b"").decode())
        mode = self.mode
        if self.remaining is not None:
            self.remaining -= 1
            if self.remaining <= 0:
                self.mode, self.remaining = "ok", None
        if mode == "500":
            return await self._json(send, 500, {"error": {"message": "boom", "type": "server_error", "code": None}})
        if mode == "400":
            return await self._json(send, 400, {"error": {"message": "bad", "type": "invalid_request_error"}})
        if mode == "429":
            return await self._json(send, 429, {"error": {"message": "slow down", "type": "rate_limit_error"}},
                                    [(b"retry-after", str(self.retry_after_s).encode())])  # fmt: skip
        if mode == "timeout" and await self._gone(receive):
            return
        if req.get("stream"):
            return await self._stream(send, receive, req, mode)
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        await self._json(send, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": req.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": self._text(req)},
                         "finish_reason": "stop",
                         **({"logprobs": {"content": [{"token": "t", "logprob": x} for x in self.logprobs]}}
                            if self.logprobs is not None else {})}], "usage": usage,
        })  # fmt: skip

    async def _json(self, send: Any, status: int, obj: dict, headers: list | None = None) -> None:
        payload = json.dumps(obj).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *(headers or [])]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})

    async def _gone(self, receive: Any) -> bool:
        """Wait ``delay_s``, or until the client hangs up (True): a stalled provider that a
        server shutdown need not wait for."""
        try:
            msg = await asyncio.wait_for(receive(), self.delay_s)
        except asyncio.TimeoutError:
            return False
        return msg["type"] == "http.disconnect"

    async def _stream(self, send: Any, receive: Any, req: dict, mode: str) -> None:
        def event(obj: dict) -> dict:
            return {"type": "http.response.body", "body": b"data: " + json.dumps(obj).encode() + b"\n\n",
                    "more_body": True}  # fmt: skip

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": req.get("model"),
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip

        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        if mode == "slow_first" and await self._gone(receive):
            return
        await send(event(chunk({"role": "assistant", "content": ""})))
        words = self._text(req).split(" ")
        for i, word in enumerate(words):
            await send(event(chunk({"content": word if i == 0 else " " + word})))
            if mode == "stall" and i == 0 and await self._gone(receive):
                return
        await send(event(chunk({}, "stop")))
        await send(event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "choices": [],
                          "usage": {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11}}))  # fmt: skip
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
