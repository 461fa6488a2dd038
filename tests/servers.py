"""Test helpers that run real servers in-process: Turnout's own HTTP server on a free loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any, Iterator

__all__ = ["free_port", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app (lifespan included) with ``service.serving`` in a thread; yields its base
    URL; stops it on exit (requests in flight get 2 s)."""
    from service.serving import bind, serve as run

    sock = bind("127.0.0.1", port or 0)
    stop, listening = threading.Event(), threading.Event()
    thread = threading.Thread(target=run, args=(app, sock), daemon=True,
                              kwargs={"stop": stop, "draining": threading.Event(), "delay_s": 0.0, "grace_s": 2.0,
                                      "on_listening": listening.set})  # fmt: skip
    thread.start()
    try:
        if not listening.wait(20):
            raise RuntimeError("test server did not start")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=10)
        sock.close()
