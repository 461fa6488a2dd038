"""One HTTP/1.1 exchange as the ASGI app sees it: ``receive`` and ``send`` of one request and its answer.

The connection (``service.http_server``) parses the request into the exchange's body pieces and
says when the client left; the exchange hands them to the app as ``http.request`` and
``http.disconnect`` messages, and turns the app's ``http.response.*`` messages into bytes: the
head is built once and held until the first body piece, so a whole answer is one write; the body
goes framed by the app's Content-Length, else chunked (an HTTP/1.0 client reads to the end of the
connection); a HEAD request's answer has no body. A header value holding a line break is refused
(it would forge a header or an answer).
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

import msgspec

__all__ = ["Exchange", "server_answer"]

_STATUS = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY = frozenset({204, 304})
_FRAMING = frozenset({len(b"content-length"), len(b"transfer-encoding"), len(b"connection")})
_json = msgspec.json.Encoder().encode


def server_answer(status: int, message: str, code: str | None = None) -> bytes:
    """A whole answer the server gives on its own (400, 413, 500), closing the connection: an
    OpenAI-style error body, as the app's own errors are."""
    kind = "api_error" if status >= 500 else "invalid_request_error"
    body = _json({"error": {"message": message, "type": kind, "param": None, "code": code}})
    return (_STATUS[status] + b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body))  # fmt: skip


class Exchange:
    """One request and its answer: the ASGI ``receive`` and ``send`` of one app call."""

    __slots__ = ("conn", "scope", "body", "size", "complete", "ended", "keep_alive", "chunked", "head", "started",
                 "finished", "waiter", "expect", "is_head")  # fmt: skip

    def __init__(self, conn: Any, scope: dict[str, Any], keep_alive: bool, expect: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.body: list[bytes] = []
        self.size = 0
        self.complete = False  # the whole request body arrived
        self.ended = False  # ... and the app was told so (more_body False)
        self.keep_alive = keep_alive
        self.expect = expect  # 100 Continue is owed when the app first reads the body
        self.is_head = scope["method"] == "HEAD"
        self.chunked = False
        self.head: bytes | None = None  # the response head, held for the first body piece
        self.started = self.finished = False
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if not self.body and not self.finished and not conn.lost and (self.ended or not self.complete):
            if self.expect and not self.complete:
                self.expect = False
                conn.write(_CONTINUE)
            await self._wait()  # a piece of the body, its end, or (the body read) the client leaving
        if conn.lost or self.finished:
            return {"type": "http.disconnect"}
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.ended = self.complete
        return {"type": "http.request", "body": body, "more_body": not self.complete}

    async def _wait(self) -> None:
        self.waiter = self.conn.server.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if self.head is None and not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.finished or self.conn.lost:
                return  # the client left (the app hears it from receive) or the server answered already
            more = message.get("more_body", False)
            self.conn.write(self._frame(message.get("body", b""), more))
            if not more:
                self.finished = True
                self.wake()
            elif self.conn.paused:
                await self.conn.drained()
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.head = self._head(message["status"], message.get("headers", ()))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _head(self, status: int, headers: Any) -> bytes:
        lines = [_STATUS.get(status) or b"HTTP/1.1 %d \r\n" % status, self.conn.server.date]
        framed = self.is_head or status in _NO_BODY or status < 200
        for name, value in headers:
            lines.append(b"%s: %s\r\n" % (name, value))
            if len(name) in _FRAMING:  # content-length, transfer-encoding or connection (any case)
                low = name.lower()
                if low == b"content-length" or low == b"transfer-encoding":
                    framed = True
                    self.chunked = low == b"transfer-encoding" and b"chunked" in value.lower()
                elif low == b"connection" and value.lower() == b"close":
                    self.keep_alive = False
        if not framed:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:  # an HTTP/1.0 client reads to the end of the connection
                self.keep_alive = False
        if self.conn.server.closing:
            self.keep_alive = False
        if not self.keep_alive:
            lines.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        if head.count(b"\n") != len(lines) or head.count(b"\r") != len(lines):  # one line each, or a forgery
            raise RuntimeError("a response header holds a line break")
        return head

    def _frame(self, body: bytes, more: bool) -> bytes:
        if self.is_head:
            body = b""
        elif self.chunked:
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + (b"" if more else b"0\r\n\r\n")
        if self.head is not None:
            body, self.head = self.head + body, None
        return body
