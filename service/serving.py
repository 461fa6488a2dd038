"""Serving the app over HTTP (``service.http_server``), and stopping without losing a request or an event.

The server handles no signal: the process's ``StopSignal`` (``feedback/stop.py``) owns SIGTERM and
SIGINT and sets an event (uvicorn, which served before, raised the signal again after its own
graceful shutdown, and the process died before the caller's ``finally`` flushed the events).
The server runs the app's lifespan startup before it accepts a connection, and on the event it

1. turns draining (``GET /readyz`` answers 503) and keeps serving for ``delay_s``, so a load
   balancer takes the replica out of rotation before it stops answering;
2. closes the listening socket and the idle keep-alive connections;
3. lets the requests in flight finish (streams included) for up to ``grace_s``, then cancels
   what is left (those clients get no answer, and no event is recorded for them);
4. runs the app's shutdown hooks and returns, so the caller can close the runtime: the event
   sink flushes, or journals what the broker did not take.

The socket is bound before the app is built (``bind``): a port in use is one line and exit
code 2, not a traceback after the embedder has loaded, and "listening" is said only once the
server accepts connections.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
import threading
from typing import Any, Callable

from service.http_server import HttpServer

__all__ = ["ListenError", "bind", "serve"]

log = logging.getLogger("turnout.http")


class ListenError(Exception):
    """The address cannot be listened on (in use, not local, no permission)."""


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening. Port 0 takes a free one.
    ``reuse_port``: SO_REUSEPORT, so that N serving processes each listen on the same port and
    the kernel spreads the connections over them (``service.workers``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


def serve(app: Any, sock: socket.socket, *, stop: threading.Event, draining: threading.Event, delay_s: float,
          grace_s: float, on_listening: Callable[[], None] | None = None,
          max_body_bytes: int = 64 * 1024 * 1024, settle_heap: bool = False) -> None:  # fmt: skip
    """Serve ``app`` on ``sock`` until ``stop`` is set; return once drained (see the module doc).
    A request body above ``max_body_bytes`` is refused with 413 by the server itself.
    ``settle_heap``: the process serves nothing else (``turnout up``, ``serve``, a worker), see
    ``_settle_heap``; not for a server run beside other work in one process (tests)."""
    _run(_serve(app, sock, stop, draining, delay_s, grace_s, on_listening, max_body_bytes, settle_heap))


def _settle_heap() -> None:
    """Set aside from garbage collection what the process built before serving.

    CPython's collector pauses the whole interpreter while it reads a generation; the oldest one
    holds everything built at start (the app, the routes, the pool, the modules' objects: about
    120,000 tracked objects), and a collection of it took 95-155 ms on a 2-core machine: every
    request in flight waits, a second of the per-second p99 above 20 ms. Once the app has
    started, one collection clears what the start left, and ``gc.freeze`` moves the survivors
    to a generation that is never collected (they live as long as the process anyway); a full
    collection after it reads only what was made since (0.0 ms right after the start)."""
    gc.collect()
    gc.freeze()


async def _serve(app: Any, sock: socket.socket, stop: threading.Event, draining: threading.Event, delay_s: float,
                 grace_s: float, on_listening: Callable[[], None] | None, max_body_bytes: int,
                 settle_heap: bool) -> None:  # fmt: skip
    loop = asyncio.get_running_loop()
    lifespan = _Lifespan(app)
    await lifespan.step("startup")
    if settle_heap:
        _settle_heap()
    server = HttpServer(app, max_body_bytes)
    listener = await loop.create_server(server.connection, sock=sock, backlog=2048)
    if on_listening is not None:
        on_listening()
    await _ticking(server, stop.is_set)
    draining.set()
    await _ticking(server, lambda: False, delay_s)  # still serving: the balancer takes us out meanwhile
    listener.close()
    server.close()
    await _ticking(server, lambda: not server.in_flight(), grace_s)
    if server.in_flight():
        log.warning("%d request(s) still in flight after %g s: cancelled", server.in_flight(), grace_s)
        tasks = list(server.tasks)
        server.cancel()
        await asyncio.wait(tasks, timeout=5.0)
    await lifespan.step("shutdown")


async def _ticking(server: HttpServer, done: Callable[[], bool], timeout_s: float = float("inf")) -> None:
    """Until ``done()`` (looked at every 0.1 s) or ``timeout_s``, with the server's tick every second."""
    loop = asyncio.get_running_loop()
    deadline, next_tick = loop.time() + timeout_s, loop.time() + 1.0
    while not done() and loop.time() < deadline:
        await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
        if loop.time() >= next_tick:
            server.tick()
            next_tick += 1.0


class _Lifespan:
    """The ASGI lifespan protocol: the app's startup before the first connection, its shutdown
    after the last. An app that returns (or raises) at once on the lifespan scope has none."""

    def __init__(self, app: Any) -> None:
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(app))

    async def _run(self, app: Any) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await app(scope, self._inbox.get, self._replies.put)
        except Exception as exc:
            await self._replies.put({"type": "raised", "message": f"{type(exc).__name__}: {exc}"})
        else:
            await self._replies.put({"type": "returned"})

    async def step(self, kind: str) -> None:
        """Run ``startup`` or ``shutdown``. A failed startup raises; a failed shutdown is logged."""
        if self._task.done():
            return  # no lifespan
        await self._inbox.put({"type": f"lifespan.{kind}"})
        reply = await self._replies.get()
        if reply["type"] == f"lifespan.{kind}.complete":
            if kind == "shutdown":
                await asyncio.wait([self._task], timeout=1.0)
            return
        message = reply.get("message", "")
        if reply["type"] == f"lifespan.{kind}.failed" or (kind == "shutdown" and reply["type"] == "raised"):
            if kind == "startup":
                raise RuntimeError(f"the application's startup failed: {message}")
            log.error("the application's shutdown failed: %s", message)
        elif reply["type"] == "raised":
            log.info("the application has no lifespan (%s)", message)


def _run(main: Any) -> None:
    """Run ``main`` to the end on a new event loop (uvloop's when installed), installing no signal
    handler (``asyncio.run`` would, for SIGINT, in the main thread)."""
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(main)
    finally:
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
