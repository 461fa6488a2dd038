"""The provider HTTP client against a scripted local server: framing, keep-alive, timeouts, pool."""

from __future__ import annotations

import asyncio

import pytest

from service.http1 import ConnectError, Disconnected, Http1Pool, ReadTimeout
from tests.servers import free_port


class Script:
    """A raw HTTP server whose answer to request ``n`` (0-based, over all connections) is
    ``answers[n]``: bytes to send, or None to stay silent. ``close_after`` closes each connection
    after that many answers."""

    def __init__(self, answers: list[bytes | None], close_after: int = 0) -> None:
        self.answers = answers
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                n = len(self.requests)
                self.requests.append(head + body)
                answer = self.answers[n] if n < len(self.answers) else None
                if answer is None:
                    await asyncio.sleep(3600)
                writer.write(answer)
                await writer.drain()
                served += 1
                if self.close_after and served >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b'{"ok":1}') -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


def chunked(*pieces: bytes) -> bytes:
    out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return out + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def run(script: Script, test) -> None:
    async def main() -> None:
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await test(port)
        finally:
            server.close()

    asyncio.run(main())


def test_keep_alive_reuses_one_connection_and_sends_headers_and_path():
    script = Script([ok(b"1"), ok(b"2"), ok(b"3")])

    async def test(port: int) -> None:
        pool = Http1Pool(f"http://127.0.0.1:{port}/v1", {"authorization": "Bearer k"})
        bodies = [await (await pool.post("/chat/completions", b'{"a":%d}' % i)).read() for i in range(3)]
        assert bodies == [b"1", b"2", b"3"]
        await pool.aclose()

    run(script, test)
    assert script.connections == 1
    first = script.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"authorization: Bearer k\r\n" in first and first.endswith(b'{"a":0}')


def test_chunked_body_read_by_lines():
    script = Script([chunked(b"data: one\n\nda", b"ta: two\n\n", b"data: [DONE]\n\n")])

    async def test(port: int) -> None:
        pool = Http1Pool(f"http://127.0.0.1:{port}", {})
        resp = await pool.post("/x", b"{}")
        assert resp.status == 200 and resp.headers["content-type"] == "text/event-stream"
        lines = []
        while line := await resp.readline():
            lines.append(line)
        assert lines == [b"data: one\n", b"\n", b"data: two\n", b"\n", b"data: [DONE]\n", b"\n"]
        assert pool._idle  # read to the end: the connection is kept

    run(script, test)


def test_a_kept_connection_the_server_closed_is_replaced_once():
    script = Script([ok(b"1"), ok(b"2")], close_after=1)

    async def test(port: int) -> None:
        pool = Http1Pool(f"http://127.0.0.1:{port}", {})
        assert await (await pool.post("/x", b"{}")).read() == b"1"
        await asyncio.sleep(0.05)  # the server hangs up the idle connection
        assert await (await pool.post("/x", b"{}")).read() == b"2"

    run(script, test)
    assert script.connections == 2


def test_read_timeout_and_connection_not_reused_after_it():
    script = Script([None, ok(b"late")])

    async def test(port: int) -> None:
        pool = Http1Pool(f"http://127.0.0.1:{port}", {}, read_timeout_s=0.1)
        with pytest.raises(ReadTimeout):
            await pool.post("/x", b"{}")
        assert pool._open == 0 and not pool._idle
        assert await (await pool.post("/x", b"{}")).read() == b"late"

    run(script, test)
    assert script.connections == 2


def test_the_read_timeout_is_the_longest_silence_not_the_whole_answer():
    """Pieces every 0.05 s for 2 s under a 1 s read timeout: read whole. Then a piece and silence:
    a timeout (counted from the last piece, not from the request)."""
    pieces = [b"data: %d\n" % i for i in range(40)]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                if not head.startswith(b"POST /drip "):
                    writer.write(b"%x\r\n%s\r\n" % (len(pieces[0]), pieces[0]))
                    await writer.drain()
                    await asyncio.sleep(3600)
                for p in pieces:
                    await asyncio.sleep(0.05)
                    writer.write(b"%x\r\n%s\r\n" % (len(p), p))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = Http1Pool(f"http://127.0.0.1:{port}", {}, read_timeout_s=1.0)
        try:
            assert await (await pool.post("/drip", b"{}")).read() == b"".join(pieces)
            resp = await pool.post("/stall", b"{}")
            with pytest.raises(ReadTimeout):
                await resp.read()
        finally:
            await pool.aclose()
            server.close()

    asyncio.run(main())


def test_refused_connection_and_full_pool_are_connect_errors():
    async def test(port: int) -> None:
        refused = Http1Pool(f"http://127.0.0.1:{free_port()}", {})
        with pytest.raises(ConnectError, match="connect failed"):
            await refused.post("/x", b"{}")
        pool = Http1Pool(f"http://127.0.0.1:{port}", {}, max_connections=1, connect_timeout_s=0.1, read_timeout_s=5)
        held = await pool.post("/x", b"{}")  # the only connection, answer not read yet
        with pytest.raises(ConnectError, match="no free connection"):
            await pool.post("/x", b"{}")
        await held.read()  # released: the next request gets it
        assert await (await pool.post("/x", b"{}")).read() == b"2"

    run(Script([ok(b"1"), ok(b"2")]), test)


def test_cancelled_request_frees_its_connection_and_early_close_is_disconnected():
    script = Script([None, b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort"])

    async def test(port: int) -> None:
        pool = Http1Pool(f"http://127.0.0.1:{port}", {}, max_connections=1)
        task = asyncio.ensure_future(pool.post("/x", b"{}"))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool._open == 0
        resp = await pool.post("/x", b"{}")  # 5 of the 100 bytes announced, then the server hangs up
        script.writers[-1].close()
        with pytest.raises(Disconnected):
            await resp.read()
        assert pool._open == 0 and not pool._idle

    run(script, test)


def test_a_body_without_framing_ends_when_the_server_hangs_up():
    script = Script([b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: x\n\n"],
                    close_after=1)

    async def test(port: int) -> None:
        pool = Http1Pool(f"http://127.0.0.1:{port}", {})
        resp = await pool.post("/x", b"{}")
        assert await resp.read() == b"data: x\n\n"
        assert pool._open == 0  # not kept: the server closed it

    run(script, test)
