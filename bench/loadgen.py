"""An open-loop HTTP/1.1 load generator: requests leave on schedule, whatever came back.

Request ``i`` is due at ``t0 + i / rate``; its latency is counted from when it was due, not from
when it was sent, so a server that falls behind is charged for the queue it builds (no
coordinated omission). Connections are kept alive and pooled; when none is idle a new one is
opened. It is a raw asyncio protocol (uvloop when installed), so the generator itself costs a
few tens of microseconds a request and stays out of the figures it reports.

    res = open_loop("http://127.0.0.1:8080", "/v1/chat/completions", lambda i: body, rate=100, duration_s=10)
    res.pct_ms(99), res.errors
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Sequence
from urllib.parse import urlsplit

import msgspec
import numpy as np

__all__ = ["LoadResult", "open_loop", "percentiles"]


class LoadResult(msgspec.Struct, frozen=True):
    """What one open-loop run saw: latencies (s) of the measured requests, by due time."""

    rate: float
    sent: int
    latencies_s: tuple[float, ...]
    statuses: dict[int, int]
    errors: int
    error_kinds: dict[str, int]
    due_s: tuple[float, ...] = ()  # when each measured request was due, s after the measured part began

    def per_second_ms(self, p: float) -> list[float]:
        """The ``p``-th percentile latency (ms) of each whole second of the measured part, by due
        time (nan for a second where nothing came back): a stall shows as one bad second."""
        if not self.due_s:
            return []
        lat, due = np.asarray(self.latencies_s), np.asarray(self.due_s)
        out = []
        for k in range(int(due.max()) + 1):
            sel = lat[(due >= k) & (due < k + 1)]
            out.append(float(np.percentile(sel, p) * 1000.0) if len(sel) else float("nan"))
        return out

    def pct_ms(self, p: float) -> float:
        """The ``p``-th percentile latency in milliseconds (nan when nothing came back)."""
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s), p) * 1000.0)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if 200 <= s < 300)


def percentiles(times_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max of durations in seconds, as milliseconds."""
    arr = np.asarray(times_s, dtype=np.float64) * 1000.0
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}  # fmt: skip


class _Conn(asyncio.Protocol):
    """One keep-alive connection; ``send`` returns a future of the HTTP status."""

    def __init__(self, on_lost: Callable[["_Conn"], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.fut: asyncio.Future[int] | None = None
        self.on_lost = on_lost
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection lost"))
        self.on_lost(self)

    def send(self, request: bytes) -> asyncio.Future[int]:
        self.fut = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.transport.write(request)  # type: ignore[union-attr]
        return self.fut

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.fut is None or self.fut.done():
            return
        head = self.buf[:end].lower()
        body = self.buf[end + 4 :]
        at = head.find(b"content-length:")
        if at >= 0:
            eol = head.find(b"\r\n", at)
            if len(body) < int(head[at + 15 : eol if eol >= 0 else len(head)]):
                return
        elif b"chunked" in head and not body.endswith(b"0\r\n\r\n"):
            return
        self.fut.set_result(int(self.buf[9:12]))


async def _run(url: str, path: str, body: Callable[[int], bytes], rate: float, duration_s: float,
               warmup_s: float, headers: dict[str, str], timeout_s: float, max_conns: int) -> LoadResult:  # fmt: skip
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())).encode()  # fmt: skip
    loop = asyncio.get_running_loop()
    idle: list[_Conn] = []
    waiters: list[asyncio.Future[None]] = []
    n_conns = 0

    def lost(conn: _Conn) -> None:
        nonlocal n_conns
        n_conns -= 1
        if conn in idle:
            idle.remove(conn)

    async def get_conn() -> _Conn:
        nonlocal n_conns
        while True:
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn
            if n_conns < max_conns:
                n_conns += 1
                try:
                    _, conn = await loop.create_connection(lambda: _Conn(lost), host, port)
                except OSError:
                    n_conns -= 1
                    raise
                return conn
            w = loop.create_future()
            waiters.append(w)
            await w

    latencies: list[float] = []
    dues: list[float] = []
    statuses: dict[int, int] = {}
    kinds: dict[str, int] = {}

    async def one(due: float, request: bytes, measured: bool) -> None:
        try:
            conn = await get_conn()
            status = await asyncio.wait_for(conn.send(request), timeout_s)
            idle.append(conn)
            if waiters:
                waiters.pop(0).set_result(None)
        except Exception as exc:  # a failed request is counted, never retried
            if measured:
                kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1
            return
        if measured:
            latencies.append(time.perf_counter() - due)
            dues.append(due - t_measured)
            statuses[status] = statuses.get(status, 0) + 1

    total = int(rate * (warmup_s + duration_s))
    n_warm = int(rate * warmup_s)
    tasks: set[asyncio.Task] = set()
    t0 = time.perf_counter() + 0.05  # uvloop's loop.time() ticks in whole milliseconds
    t_measured = t0 + n_warm / rate
    for i in range(total):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = body(i)
        request = head + f"content-length: {len(payload)}\r\n\r\n".encode() + payload
        task = loop.create_task(one(due, request, i >= n_warm))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 5)
    return LoadResult(rate, total - n_warm, tuple(latencies), statuses,
                      sum(kinds.values()) + sum(n for s, n in statuses.items() if s >= 400), kinds, tuple(dues))  # fmt: skip


def open_loop(url: str, path: str, body: Callable[[int], bytes], rate: float, duration_s: float,
              warmup_s: float = 0.0, headers: dict[str, str] | None = None, timeout_s: float = 30.0,
              max_conns: int = 1024) -> LoadResult:  # fmt: skip
    """Send ``rate`` POSTs a second to ``url + path`` for ``warmup_s + duration_s``; measure the last
    ``duration_s``. ``body(i)`` is the JSON body of request ``i``. Blocks; runs its own event loop."""
    coro = _run(url, path, body, rate, duration_s, warmup_s, headers or {}, timeout_s, max_conns)
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)
