"""How N serving processes answer ``/metrics`` for all of them: each shares its counts in a file.

Every worker writes its counters and histograms (``Registry.state``) to ``<dir>/worker-<i>.msgpack``
once a second (and at its stop), replacing the file whole; a scrape of any worker adds the other
workers' latest files to its own live counts (``Registry.peers``). So a scrape behind a load
balancer that lands on any worker sees the sum, at most a second old for the other workers. A
worker that stopped leaves its last counts behind, so the sums do not go back while others serve.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import msgspec

from service.metrics import Registry

__all__ = ["MetricsExchange"]

log = logging.getLogger("turnout.metrics")

_decoder = msgspec.msgpack.Decoder(dict[str, list])


class MetricsExchange:
    def __init__(self, directory: str | Path, worker: int, registry: Registry, interval_s: float = 1.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._mine = self.directory / f"worker-{worker}.msgpack"
        self._registry = registry
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="turnout-metrics", daemon=True)
        registry.peers = self.peers

    def start(self) -> "MetricsExchange":
        self._thread.start()
        return self

    def write(self) -> None:
        tmp = self._mine.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(msgspec.msgpack.encode(self._registry.state()))
        tmp.replace(self._mine)

    def peers(self) -> list[dict[str, list]]:
        out = []
        for path in self.directory.glob("worker-*.msgpack"):
            if path == self._mine:
                continue
            try:
                out.append(_decoder.decode(path.read_bytes()))
            except (OSError, msgspec.DecodeError):
                continue  # being replaced, or gone
        return out

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.write()
            except OSError as exc:
                log.warning("cannot share this worker's metrics in %s: %s", self.directory, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self.write()
        except OSError:
            pass
