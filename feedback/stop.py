"""How a long-running process stops: SIGTERM and SIGINT alike set one event, and nothing else.

Docker and Kubernetes stop a container with SIGTERM, a terminal with SIGINT (Ctrl-C). Both mean
"stop soon, losing nothing", so every long-running command (``turnout up``, ``serve``, ``sink``,
``learn``) installs a ``StopSignal`` before it starts work and then does its own orderly stop
when the event is set: readiness turns false first, then it stops taking work, finishes what it
has, stores, publishes or journals every event it accepted, and returns exit code 0.

No exception is raised into whatever the main thread was doing (a ``KeyboardInterrupt`` in the
middle of a flush is how events get lost), and the default handler is never restored and
re-raised (which is what made ``uvicorn.run`` exit with -15 before the events were flushed).
The handler itself only writes the signal number to a pipe: a thread of its own sets the event,
because ``Event.set`` takes a lock that the interrupted main thread may be holding. A second
signal while stopping is logged and otherwise ignored: the orchestrator's grace period, then
SIGKILL, bounds the stop.

    stop = StopSignal().install()
    probe = ProbeServer(host, port, {"/readyz": stop.gate(sink.readiness)})
    sink.run(stop.event)
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable

__all__ = ["StopSignal"]

log = logging.getLogger("turnout.stop")

Check = Callable[[], "tuple[bool, dict[str, Any]]"]
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignal:
    """One event set by SIGTERM or SIGINT. ``install`` from the main thread; ``uninstall`` restores."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal: int | None = None  # the first signal received
        self._write_fd: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopSignal":
        read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        threading.Thread(target=self._watch, args=(read_fd,), name="turnout-stop", daemon=True).start()
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        return self

    def uninstall(self) -> None:
        """Put the previous handlers back (tests; a process that stops just exits)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        if self._write_fd is not None:
            os.close(self._write_fd)  # the watcher reads the end of the pipe and returns
            self._write_fd = None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        try:
            os.write(self._write_fd, bytes([signum]))  # type: ignore[arg-type]
        except OSError:  # the pipe is full of signals already: a stop is under way
            pass

    def _watch(self, read_fd: int) -> None:
        try:
            while data := os.read(read_fd, 64):
                for signum in data:
                    name = signal.Signals(signum).name
                    if self.signal is not None:
                        log.warning("%s while stopping: the stop is under way, finishing what was accepted", name)
                        continue
                    self.signal = signum
                    log.info("%s: stopping (readiness off, then finishing what was accepted)", name)
                    self.event.set()
        finally:
            os.close(read_fd)

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def gate(self, readiness: Check) -> Check:
        """``readiness``, but not ready once stopping, so a load balancer or the orchestrator stops
        sending work here before the process stops taking it."""

        def check() -> tuple[bool, dict[str, Any]]:
            ok, details = readiness()
            if self.event.is_set():
                return False, {**details, "stopping": True}
            return ok, {**details, "stopping": False}

        return check
