"""Serving the app over HTTP (uvicorn), and stopping without losing a request or an event.

``uvicorn.run`` installs its own SIGTERM and SIGINT handlers and, after its graceful shutdown,
restores the defaults and raises the signal again: the process then dies (exit -15) before the
caller's ``finally`` flushes the events. Here uvicorn never sees a signal. The process's
``StopSignal`` (``feedback/stop.py``) sets an event, and on it the server

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

import contextlib
import errno
import socket
import threading
import time
from typing import Any, Callable, Iterator

import uvicorn

__all__ = ["ListenError", "bind", "serve"]


class ListenError(Exception):
    """The address cannot be listened on (in use, not local, no permission)."""


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening. Port 0 takes a free one.
    ``reuse_port``: SO_REUSEPORT, so that N serving processes each listen on the same port and
    the kernel spreads the connections over them (``service.workers``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal handling, stopped by ``stop`` after ``delay_s`` of draining."""

    def __init__(self, config: uvicorn.Config, stop: threading.Event, draining: threading.Event, delay_s: float,
                 on_listening: Callable[[], None] | None) -> None:  # fmt: skip
        super().__init__(config)
        self._stop = stop
        self._draining = draining
        self._delay_s = delay_s
        self._on_listening = on_listening
        self._drain_started: float | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the process's StopSignal owns SIGTERM and SIGINT; nothing is re-raised afterwards

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_listening is not None:
            self._on_listening()

    async def on_tick(self, counter: int) -> bool:
        if self._stop.is_set():  # looked at every 0.1 s by uvicorn's main loop
            if self._drain_started is None:
                self._draining.set()
                self._drain_started = time.monotonic()
            if time.monotonic() - self._drain_started >= self._delay_s:
                self.should_exit = True
        return await super().on_tick(counter)


def serve(app: Any, sock: socket.socket, *, stop: threading.Event, draining: threading.Event, delay_s: float,
          grace_s: float, on_listening: Callable[[], None] | None = None) -> None:  # fmt: skip
    """Serve ``app`` on ``sock`` until ``stop`` is set; return once drained (see the module doc)."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=grace_s)  # fmt: skip
    _Server(config, stop, draining, delay_s, on_listening).run(sockets=[sock])
