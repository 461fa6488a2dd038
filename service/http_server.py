"""HTTP/1.1 for the ASGI app: an asyncio protocol on httptools, with as little as it can per request.

Why not uvicorn: on uvicorn a bare ASGI answer (``bench.floor_app``) cost its process 0.17-0.26 ms
of CPU a request on this machine, on this server 0.12-0.21 ms, about 0.7 of it (``bench.floors``;
in-process, the Python of a request 20 us against 33). Here a request costs one scope (a copy of
the connection's template), one exchange object and the app's Task; the answer's head goes out
in the same write as its first body piece, and idle keep-alive connections and the Date header
are looked after by a tick a second, not by timers set per request.

What it does: keep-alive (HTTP/1.1, and HTTP/1.0 that asks for it); request bodies framed by
Content-Length or chunked, up to ``max_body_bytes`` (beyond: 413 and the connection closed; a
declared length beyond it is refused before the app runs); ``Expect: 100-continue``; responses
framed by the app's Content-Length, else chunked (server-sent events as they come); pipelined
requests answered in order, one at a time (reading pauses while one waits); a malformed request
gets 400 and the connection is closed; a client that leaves is ``http.disconnect`` to the app.
What it does not: TLS (a proxy terminates it), HTTP/2, WebSockets and other upgrades, trailers,
request timeouts other than the idle keep-alive one.

The ASGI side of one request (``receive``, ``send``, the answer's framing) is ``service.http_exchange``.
Stopping (``service.serving`` drives it): ``close`` closes the idle connections and makes the
busy ones close after the answer in hand; ``in_flight`` says how many apps still run; ``cancel``
cancels them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import httptools

from service.http_exchange import Exchange, server_answer

__all__ = ["HttpServer"]

log = logging.getLogger("turnout.http")

_ASGI = {"version": "3.0", "spec_version": "2.3"}


class HttpServer:
    """What the connections share: the app, the limits, the Date header, the running apps."""

    def __init__(self, app: Any, max_body_bytes: int, keep_alive_s: float = 5.0) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.max_body_bytes = max_body_bytes
        self.keep_alive_s = keep_alive_s
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closing = False
        self.date = b""
        self.tick()

    def connection(self) -> _Connection:
        """The protocol factory for ``loop.create_server``."""
        return _Connection(self)

    def tick(self) -> None:
        """Once a second: the Date header, and idle keep-alive connections closed."""
        self.date = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
        now = self.loop.time()
        for conn in [c for c in self.connections if c.idle_since and now - c.idle_since > self.keep_alive_s]:
            conn.transport.close()  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop taking requests: idle connections close now, busy ones after the answer in hand."""
        self.closing = True
        for conn in list(self.connections):
            conn.shut()

    def in_flight(self) -> int:
        return len(self.tasks)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.transport.close()  # type: ignore[union-attr]


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs the app for each in turn, writes the answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.template: dict[str, Any] = {}
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.length: bytes | None = None  # the request's Content-Length and Expect headers
        self.expect: bytes | None = None
        self.incoming: Exchange | None = None  # the request being parsed
        self.current: Exchange | None = None  # the request the app is answering
        self.waiting: collections.deque[Exchange] = collections.deque()  # pipelined, in order
        self.idle_since = 0.0
        self.lost = self.paused = self.reading_paused = self.broken = False
        self.refusal = b""  # the server's own answer, owed after the answers before it
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio --------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.template = {"type": "http", "asgi": _ASGI, "http_version": "1.1", "scheme": "http", "root_path": "",
                         "server": transport.get_extra_info("sockname"),
                         "client": transport.get_extra_info("peername")}  # fmt: skip
        self.server.connections.add(self)
        self.idle_since = self.server.loop.time()
        if self.server.closing:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.broken:
            return
        self.idle_since = 0.0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # no upgrades: the request is answered over HTTP/1.1, then we close
            if self.incoming is not None:
                self.refuse(400, "upgrades are not supported", self.incoming)
            self.broken = True
            if self.current is None:
                self.transport.close()  # type: ignore[union-attr]
        except httptools.HttpParserError:
            self.refuse(400, "malformed HTTP request", self.incoming)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server.connections.discard(self)
        self.waiting.clear()
        if self.current is not None:
            self.current.wake()
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    async def drained(self) -> None:
        self.drain_waiter = self.server.loop.create_future()
        await self.drain_waiter

    # -- httptools ------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.length = self.expect = None

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"content-length":
            self.length = value
        elif name == b"expect":
            self.expect = value

    def on_headers_complete(self) -> None:
        if self.broken:
            return
        scope = self.template.copy()
        url = self.url
        if url[:1] == b"/" and b"?" not in url and b"%" not in url:
            path, query = url.decode("latin-1"), b""
        else:
            parsed = httptools.parse_url(url)
            raw = parsed.path or b"/"
            path, query = raw.decode("latin-1"), parsed.query or b""
            if "%" in path:
                path = unquote(path)
            url = raw
        scope["method"] = self.parser.get_method().decode("ascii")
        scope["path"], scope["raw_path"], scope["query_string"] = path, url, query
        scope["headers"] = self.headers
        version = self.parser.get_http_version()
        if version != "1.1":
            scope["http_version"] = version
        keep_alive = self.parser.should_keep_alive() and not self.server.closing
        expect, length = self.expect, self.length
        continues = expect is not None and expect.lower() == b"100-continue"
        self.incoming = ex = Exchange(self, scope, keep_alive, continues)
        if length is not None and length.isdigit() and int(length) > self.server.max_body_bytes:
            self.too_large(ex)
        elif self.current is None:
            self.start(ex)
        else:  # pipelined: answered after the one in hand; read no further meanwhile
            self.waiting.append(ex)
            self.pause()

    def on_body(self, body: bytes) -> None:
        ex = self.incoming
        if ex is None or self.broken:
            return
        ex.size += len(body)
        if ex.size > self.server.max_body_bytes:
            self.too_large(ex)
            return
        ex.body.append(body)
        if ex is self.current:
            ex.wake()

    def on_message_complete(self) -> None:
        ex = self.incoming
        if ex is None or self.broken:
            return
        ex.complete = True
        self.incoming = None
        if ex is self.current:
            ex.wake()

    # -- exchanges ------------------------------------------------------------------------------

    def start(self, ex: Exchange) -> None:
        self.current = ex
        task = self.server.loop.create_task(self.run(ex))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def run(self, ex: Exchange) -> None:
        try:
            await self.server.app(ex.scope, ex.receive, ex.send)
        except asyncio.CancelledError:  # the grace after a stop ran out: no answer, the connection closes
            ex.keep_alive = False
            raise
        except Exception as exc:
            log.error("the application failed answering %s %s", ex.scope["method"], ex.scope["path"], exc_info=exc)
            self.unanswered(ex)
        else:
            if not ex.finished and not ex.started and not self.lost:
                log.error("the application returned without answering %s %s", ex.scope["method"], ex.scope["path"])
            self.unanswered(ex)
        finally:
            self.done(ex)

    def unanswered(self, ex: Exchange) -> None:
        """The app is done: an answer it did not start is a 500, one it did not finish is cut short."""
        if ex.finished:
            return
        ex.keep_alive = False  # an answer cut short: only closing the connection tells the client
        if not ex.started:
            self.write(server_answer(500, "internal server error"))

    def done(self, ex: Exchange) -> None:
        """The app returned: the next pipelined request, or an idle connection, or a closed one."""
        ex.finished = True
        self.current = None
        if self.lost:
            return
        if not ex.keep_alive or not ex.complete or self.server.closing:
            self.transport.close()  # type: ignore[union-attr]
        elif self.waiting:
            self.start(self.waiting.popleft())
            if not self.waiting:
                self.resume()
        elif self.broken:  # what the server owes after the answers in turn: a refusal, then the close
            self.write(self.refusal)
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.resume()
            if self.incoming is None:
                self.idle_since = self.server.loop.time()

    def refuse(self, status: int, why: str, culprit: Exchange | None = None, code: str | None = None) -> None:
        """A request the server answers itself (400, 413), in turn; then the connection closes."""
        self.broken = True
        self.incoming = None
        if self.waiting and self.waiting[-1] is culprit:
            self.waiting.pop()  # the refusal is its answer
        answer, current = server_answer(status, why, code), self.current
        if current is None:
            self.write(answer)
            self.transport.close()  # type: ignore[union-attr]
        elif culprit is current or not current.complete:  # the request in hand is the bad one
            self.waiting.clear()
            if not current.started:  # the server answers it; the app hears the client leave
                current.finished = True
                current.wake()
                self.write(answer)
            self.transport.close()  # type: ignore[union-attr]
        else:  # a later request is: the answers before it go out whole first (``done``)
            self.refusal = answer

    def too_large(self, ex: Exchange) -> None:
        limit = self.server.max_body_bytes
        self.refuse(413, f"request body too large: more than {limit} bytes", ex, "request_too_large")

    def shut(self) -> None:
        """The server stops: close now if no request is in hand."""
        if self.current is None:
            self.transport.close()  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        if data and not self.lost:
            self.transport.write(data)  # type: ignore[union-attr]

    def pause(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume(self) -> None:
        if self.reading_paused and not self.waiting:
            self.reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
