"""A small HTTP/1.1 client for provider calls: pooled keep-alive connections, httptools parsing.

Why not a general client: a provider call is most of what the gateway spends per request. On
this machine an aiohttp call cost about 0.2 ms of CPU and an httpx call about 1.4 ms; this one
costs about 0.05 ms (``bench/`` and docs/gateway.md). It does what OpenAI-compatible providers
need and nothing else: POST a body, read an answer framed by Content-Length or chunked encoding
(whole, or piece by piece for server-sent events), keep connections alive, TLS, and two timeouts:
``connect_timeout_s`` (opening a connection, or waiting for one from a full pool) and
``read_timeout_s`` (the longest silence while an answer is due). No redirects, proxies, cookies
or compression (``accept-encoding: identity`` is sent).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectError", "Disconnected", "Http1Pool", "HttpError", "ReadTimeout", "Response"]


class HttpError(Exception):
    """The exchange failed below HTTP (no status to speak of)."""


class ConnectError(HttpError):
    pass


class ReadTimeout(HttpError):
    pass


class Disconnected(HttpError):
    pass


class _Conn(asyncio.Protocol):
    """One connection; one exchange at a time. Body pieces go to ``chunks``; ``wake`` is the
    future the reader waits on (headers, then each piece, then the end)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: collections.deque[bytes] = collections.deque()
        self.headers_done = self.complete = self.closed = False
        self.reused = False
        self.error: HttpError | None = None
        self.wake: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_data = 0.0  # loop time the exchange last heard from the server (or was sent)

    # -- protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # bytes nobody asked for: the connection cannot be trusted
            self._fail(Disconnected("unexpected bytes on an idle connection"))
            return
        if self.complete:  # bytes after the answer: as before, a timer of its own
            self._arm()
        else:  # the armed timer looks at this when it fires (cheaper than a new timer a piece)
            self.last_data = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Disconnected(f"malformed HTTP answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.complete or self.parser is None:
            return
        unframed = "content-length" not in self.headers and "chunked" not in self.headers.get("transfer-encoding", "")
        if self.headers_done and unframed and exc is None:  # a body that ends when the server hangs up
            self.complete = True
            if self.timer is not None:
                self.timer.cancel()
            self._wake()
            return
        self._fail(Disconnected("connection closed before the answer was complete"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if self.timer is not None:
            self.timer.cancel()
        if not self.parser.should_keep_alive():
            self.closed = True
            self.transport.close()  # type: ignore[union-attr]
        self._wake()

    # -- exchange ----------------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status, self.headers, self.error = 0, {}, None
        self.chunks.clear()
        self.headers_done = self.complete = False
        self.transport.write(request)  # type: ignore[union-attr]
        self._arm()

    async def wait(self) -> None:
        """Until something new arrived (headers, a piece, the end) or the exchange failed."""
        if self.error is not None:
            raise self.error
        self.wake = self.loop.create_future()
        try:
            await self.wake
        finally:
            self.wake = None
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None:
            self.transport.abort()

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.last_data = self.loop.time()
        self.timer = self.loop.call_at(self.last_data + self.read_timeout_s, self._timeout)

    def _timeout(self) -> None:
        due = self.last_data + self.read_timeout_s
        if self.loop.time() < due:  # data came since the timer was set: the silence counts from then
            self.timer = self.loop.call_at(due, self._timeout)
            return
        self._fail(ReadTimeout(f"no data for {self.read_timeout_s:g} s"))

    def _fail(self, error: HttpError) -> None:
        if self.error is None:
            self.error = error
        self.abort()
        self._wake()

    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class Response:
    """An answer whose headers have arrived; the body is read with ``read`` or ``readline``."""

    def __init__(self, pool: "Http1Pool", conn: _Conn) -> None:
        self._pool = pool
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._buf = b""
        self._released = False

    async def read(self) -> bytes:
        """The rest of the body."""
        conn = self._conn
        while not conn.complete:
            await self._wait()
        body = self._buf + b"".join(conn.chunks)
        self._buf = b""
        conn.chunks.clear()
        self.release()
        return body

    async def readline(self) -> bytes:
        """The next line (with its newline), or the rest at the end of the body (b"" when done)."""
        conn = self._conn
        while True:
            at = self._buf.find(b"\n")
            if at >= 0:
                line, self._buf = self._buf[: at + 1], self._buf[at + 1 :]
                return line
            if conn.chunks:
                self._buf += b"".join(conn.chunks)
                conn.chunks.clear()
                continue
            if conn.complete:
                line, self._buf = self._buf, b""
                self.release()
                return line
            await self._wait()

    async def _wait(self) -> None:
        try:
            await self._conn.wait()
        except BaseException:  # failed or cancelled: the connection is of no further use
            self.release()
            raise

    def release(self) -> None:
        """Give the connection back: kept if the answer was read to its end, closed otherwise.
        Call it in a ``finally``; calling it again does nothing."""
        if not self._released:
            self._released = True
            self._pool._release(self._conn)


class Http1Pool:
    def __init__(self, base_url: str, headers: dict[str, str], max_connections: int = 256,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 60.0) -> None:  # fmt: skip
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        self.max_connections = max_connections
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        default_port = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        host = self.host if default_port else f"{self.host}:{self.port}"
        fixed = {"host": host, "accept-encoding": "identity", **headers}
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._ssl = ssl.create_default_context() if self.tls else None
        self._idle: list[_Conn] = []
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, path: str, body: bytes) -> Response:
        """Send ``body``; return once the answer's status and headers arrived."""
        request = (b"POST " + (self.prefix + path).encode() + b" HTTP/1.1\r\n" + self._head
                   + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        for attempt in range(2):
            conn = await self._acquire()
            try:
                conn.send(request)
                while not conn.headers_done:
                    await conn.wait()
                return Response(self, conn)
            except Disconnected:
                reused = conn.reused
                self._release(conn)
                if reused and attempt == 0:  # a kept-alive connection the server had closed: once more, fresh
                    continue
                raise
            except BaseException:
                conn.abort()
                self._release(conn)
                raise
        raise AssertionError("unreachable")

    async def _acquire(self) -> _Conn:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that opened them
            self._idle, self._open, self._waiters, self._loop = [], 0, collections.deque(), loop
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
            self._open -= 1
        if self._open >= self.max_connections:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, self.connect_timeout_s)
            except asyncio.TimeoutError:
                raise ConnectError(f"no free connection within {self.connect_timeout_s:g} s") from None
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            return await self._acquire()
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Conn(loop, self.read_timeout_s), self.host, self.port,
                                       ssl=self._ssl, server_hostname=self.host if self.tls else None),  # fmt: skip
                self.connect_timeout_s,
            )
        except asyncio.TimeoutError:
            self._open -= 1
            self._wake_waiter()
            raise ConnectError(f"connect timed out after {self.connect_timeout_s:g} s") from None
        except OSError as exc:
            self._open -= 1
            self._wake_waiter()
            raise ConnectError(f"connect failed: {type(exc).__name__}") from None
        except BaseException:
            self._open -= 1
            self._wake_waiter()
            raise
        return conn

    def _release(self, conn: _Conn) -> None:
        if conn.complete and not conn.closed and conn.error is None:
            conn.parser = None
            self._idle.append(conn)
        else:
            if not conn.closed:
                conn.abort()
            self._open -= 1
        self._wake_waiter()

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._open -= len(self._idle)
        self._idle.clear()
