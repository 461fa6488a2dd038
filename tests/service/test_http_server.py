"""Turnout's HTTP/1.1 server (``service.http_server`` run by ``service.serving.serve``) over real sockets.

Each test serves a small ASGI app on a loopback port in a thread and speaks raw HTTP/1.1 to it,
so what is asserted is the bytes on the wire: keep-alive, chunked bodies both ways, the body
limit, malformed requests, pipelining, a client that leaves mid-stream, and a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from service.serving import bind, serve

LIMIT = 1000


class Served:
    """The server in a thread: its port, its stop and draining events, what the app saw."""

    def __init__(self, app: Any, delay_s: float = 0.0, grace_s: float = 5.0,
                 draining: threading.Event | None = None) -> None:  # fmt: skip
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.stop, self.listening = threading.Event(), threading.Event()
        self.draining = draining or threading.Event()
        self.thread = threading.Thread(target=serve, args=(app, self.sock), daemon=True,
                                       kwargs={"stop": self.stop, "draining": self.draining, "delay_s": delay_s,
                                               "grace_s": grace_s, "on_listening": self.listening.set,
                                               "max_body_bytes": LIMIT})  # fmt: skip
        self.thread.start()
        assert self.listening.wait(10)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive()
        self.sock.close()


@contextlib.contextmanager
def served(app: Any, **kw: Any) -> Iterator[Served]:
    s = Served(app, **kw)
    try:
        yield s
    finally:
        if not s.stop.is_set():
            s.finish()


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the request body back, with the path and the number of body messages read."""
    if scope["type"] != "http":
        return
    chunks, more = [], True
    while more:
        msg = await receive()
        chunks.append(msg.get("body", b""))
        more = msg.get("more_body", False)
    body = b"%s %d %s" % (scope["path"].encode(), len(chunks), b"".join(chunks))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def read_response(conn: socket.socket, buf: bytearray) -> tuple[bytes, dict[str, str], bytes]:
    """One response from ``conn`` (bytes already read are in ``buf``): status line, headers, body."""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        assert data, f"connection closed before a response; got {bytes(buf)!r}"
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[: end + 4]
    headers = {k.decode().lower(): v.decode().strip() for k, v in (line.split(b":", 1) for line in lines[1:])}
    if "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            buf += conn.recv(65536)
        body = bytes(buf[:n])
        del buf[:n]
    else:
        assert headers.get("transfer-encoding") == "chunked"
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += conn.recv(65536)
            size_end = buf.index(b"\r\n")
            size = int(buf[:size_end], 16)
            while len(buf) < size_end + 2 + size + 2:
                buf += conn.recv(65536)
            body += bytes(buf[size_end + 2 : size_end + 2 + size])
            del buf[: size_end + 2 + size + 2]
            if size == 0:
                break
    return lines[0], headers, body


def closed(conn: socket.socket) -> bool:
    conn.settimeout(5)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_several_requests_share_one_kept_alive_connection():
    with served(echo) as s, s.connect() as conn:
        buf = bytearray()
        for i in range(3):
            conn.sendall(b"POST /n%d HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" % i)
            status, headers, body = read_response(conn, buf)
            assert status == b"HTTP/1.1 200 OK"
            assert body == b"/n%d 1 hello" % i
            assert "connection" not in headers and "date" in headers


def test_pipelined_requests_are_answered_in_order():
    with served(echo) as s, s.connect() as conn:
        requests = [b"POST /p%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d" % (i, i) for i in range(4)]
        conn.sendall(b"".join(requests))  # in one segment: the server reads them all at once
        buf = bytearray()
        assert [read_response(conn, buf)[2] for _ in range(4)] == [b"/p%d 1 %d" % (i, i) for i in range(4)]


def test_a_malformed_request_after_pipelined_ones_is_refused_after_their_answers():
    with served(echo) as s, s.connect() as conn:
        good = [b"POST /g%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n%d" % (i, i) for i in range(2)]
        conn.sendall(b"".join(good) + b"NOT HTTP AT ALL\r\n\r\n")
        buf = bytearray()
        answers = [read_response(conn, buf) for _ in range(3)]
        assert [a[2] for a in answers[:2]] == [b"/g0 1 0", b"/g1 1 1"]
        assert answers[2][0] == b"HTTP/1.1 400 Bad Request" and answers[2][1]["connection"] == "close"
        assert closed(conn)


def test_a_chunked_request_body_is_read_whole():
    with served(echo) as s, s.connect() as conn:
        conn.sendall(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.05)  # a second piece, apart
        conn.sendall(b"6\r\n world\r\n0\r\n\r\n")
        status, _, body = read_response(conn, bytearray())
        assert status == b"HTTP/1.1 200 OK"
        assert body.startswith(b"/c ") and body.endswith(b" hello world")


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_above_the_limit_gets_413_and_the_connection_closes(framing):
    big = b"x" * (LIMIT + 1)
    if framing == "content-length":
        request = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    else:
        request = b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
            len(big), big)  # fmt: skip
    with served(echo) as s, s.connect() as conn:
        conn.sendall(request)
        status, headers, body = read_response(conn, bytearray())
        assert status == b"HTTP/1.1 413 Request Entity Too Large"
        assert headers["connection"] == "close" and b"request_too_large" in body
        assert closed(conn)


def test_a_malformed_request_gets_400_and_the_connection_closes():
    with served(echo) as s, s.connect() as conn:
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, headers, body = read_response(conn, bytearray())
        assert status == b"HTTP/1.1 400 Bad Request" and headers["connection"] == "close"
        assert closed(conn)


class Streamer:
    """Sends one SSE frame, waits for the test's go, then sends frames until the client leaves."""

    def __init__(self) -> None:
        self.go, self.left, self.finished = threading.Event(), threading.Event(), threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        left = asyncio.ensure_future(self._until_disconnect(receive))
        sse = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": sse})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        while not self.go.is_set():
            await asyncio.sleep(0.01)
        n = 2
        while not left.done() and n < 500:
            await send({"type": "http.response.body", "body": b"data: %d\n\n" % n, "more_body": True})
            await asyncio.sleep(0.01)
            n += 1
        if scope["path"] == "/short":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        self.finished.set()

    async def _until_disconnect(self, receive: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.left.set()


def test_a_streamed_answer_arrives_piece_by_piece_and_a_client_that_leaves_is_heard():
    app = Streamer()
    with served(app) as s, s.connect() as conn:
        conn.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = bytearray()
        while b"data: 1\n\n\r\n" not in buf:  # the first frame, before the app was told to go on
            data = conn.recv(65536)
            assert data
            buf += data
        head = bytes(buf[: buf.index(b"\r\n\r\n")]).lower()
        assert b"transfer-encoding: chunked" in head and b"content-length" not in head
        app.go.set()
        while b"data: 3" not in buf:
            buf += conn.recv(65536)
        conn.close()
        assert app.left.wait(10), "the app never heard the client leave"
        assert app.finished.wait(10)


def test_a_stopped_server_drains_then_lets_the_request_in_hand_finish():
    events: list[str] = []
    draining = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                events.append(kind)
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        await receive()
        if scope["path"] == "/readyz":
            status, body = (503, b"draining") if draining.is_set() else (200, b"ready")
        else:
            await asyncio.sleep(1.5)
            status, body = 200, b"slow done"
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    s = Served(app, delay_s=1.0, grace_s=10.0, draining=draining)
    try:
        assert events == ["lifespan.startup"]
        with s.connect() as slow, s.connect() as idle:
            buf = bytearray()
            idle.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(idle, buf)[2] == b"ready"  # now an idle keep-alive connection
            slow.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)
            s.stop.set()
            assert draining.wait(5)
            idle.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")  # still served while draining
            assert read_response(idle, buf)[:3:2] == (b"HTTP/1.1 503 Service Unavailable", b"draining")
            status, headers, body = read_response(slow, bytearray())  # the request in hand finishes
            assert (status, body) == (b"HTTP/1.1 200 OK", b"slow done") and headers["connection"] == "close"
            assert closed(idle) and closed(slow)
        s.thread.join(20)
        assert not s.thread.is_alive()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", s.port), timeout=2).close()
        assert events == ["lifespan.startup", "lifespan.shutdown"]
    finally:
        s.stop.set()
        s.thread.join(20)
        s.sock.close()


def test_a_request_still_in_flight_after_the_grace_is_cancelled():
    cancelled = threading.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    s = Served(app, grace_s=0.5)
    with s.connect() as conn:
        conn.sendall(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        started = time.monotonic()
        s.finish()
        assert cancelled.is_set() and time.monotonic() - started < 10
        assert closed(conn)
