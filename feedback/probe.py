"""Health probes for the processes that serve no HTTP of their own (``turnout sink``, ``turnout learn``).

A small HTTP server on its own thread answers ``GET`` on a few paths, each backed by a check that
returns ``(ok, details)``: 200 with the details as JSON when ok, 503 when not, 404 for any other
path. Kubernetes (liveness and readiness probes) and compose health checks call it; it never
touches the work the process does, so a slow batch or cycle cannot make it time out.

    probe = ProbeServer("0.0.0.0", 9090, {"/healthz": sink.liveness, "/readyz": sink.readiness})
    probe.start(); ...; probe.close()
"""

from __future__ import annotations

import errno
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

import msgspec

__all__ = ["Check", "ProbeListenError", "ProbeServer"]

log = logging.getLogger("turnout.probe")

Check = Callable[[], "tuple[bool, dict[str, Any]]"]


class ProbeListenError(Exception):
    """The probe port cannot be listened on (in use, no permission): a user's mistake, one line."""


class ProbeServer:
    """``GET path`` -> 200/503 with the check's details as JSON. Port 0 takes a free one (``.port``)."""

    def __init__(self, host: str, port: int, checks: Mapping[str, Check]) -> None:
        routes = dict(checks)

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                check = routes.get(self.path.split("?", 1)[0])
                if check is None:
                    status, body = 404, {"error": f"no probe at {self.path}; try {', '.join(sorted(routes))}"}
                else:
                    try:
                        ok, details = check()
                        status, body = (200 if ok else 503), {"status": "ok" if ok else "failing", **details}
                    except Exception as exc:  # a check that raises is a failing check, never a crash
                        status, body = 503, {"status": "failing", "error": f"{type(exc).__name__}: {exc}"}
                data = msgspec.json.encode(body)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no log line each
                pass

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            reason = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
            raise ProbeListenError(f"cannot serve health probes on {host}:{port}: {reason}") from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="turnout-probe", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> "ProbeServer":
        self._thread.start()
        log.info("health probes on port %d", self.port)
        return self

    def close(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve loop: never started, none to wait for
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
