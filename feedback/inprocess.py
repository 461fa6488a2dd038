"""The embedded event path: an in-process queue drained into a row store by one thread.

``publish`` only appends to a deque (the request path pays a few hundred nanoseconds). The
writer inserts in batches; when the store fails it keeps the batch and retries with backoff,
so an accepted event is never dropped. ``backlog`` is exposed for state and metrics.

``BatchQueue`` is that queue and its batching, shared with ``feedback.link.LinkSink`` (which
sends its batches to the storage process instead of inserting them here).
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from feedback.events import Event
from learner.ports import RowStore

__all__ = ["BatchQueue", "InProcessBus"]

log = logging.getLogger("turnout.bus")


class BatchQueue:
    """Events published on the request path, taken by one background thread in batches of at
    most ``max_batch``, one batch every ``flush_interval_s`` unless a full one waits (each insert
    is a ClickHouse part: a busy service must write few large batches, not a tiny one each time
    the previous insert returns). A subclass sets its own state, then calls ``_start`` with its
    thread's body."""

    _closed = "event bus is closed"

    def __init__(self, max_batch: int, flush_interval_s: float) -> None:
        self._queue: collections.deque[Event] = collections.deque()
        self._max_batch = max_batch
        self._interval = flush_interval_s
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._stop = False
        self._inflight = 0
        self.failures = 0

    def _start(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    @property
    def backlog(self) -> int:
        return len(self._queue) + self._inflight

    def publish(self, event: Event) -> None:
        if self._stop:
            raise RuntimeError(self._closed)
        if self._idle.is_set():  # clear() takes the event's lock even when clear: most publishes skip it
            self._idle.clear()
        self._queue.append(event)
        if len(self._queue) >= self._max_batch:
            self._wake.set()

    def _next_batch(self) -> list[Event]:
        """Wait out the interval (unless a full batch, a flush or the stop is waiting), then take
        a batch; it counts in ``backlog`` until the subclass sets ``_inflight`` back to 0."""
        if len(self._queue) < self._max_batch and not self._stop:
            self._wake.wait(self._interval)
        self._wake.clear()
        batch = []
        while self._queue and len(batch) < self._max_batch:
            batch.append(self._queue.popleft())
        self._inflight = len(batch)
        return batch


class InProcessBus(BatchQueue):
    def __init__(self, store: RowStore, max_batch: int = 2000, flush_interval_s: float = 0.2) -> None:
        super().__init__(max_batch, flush_interval_s)
        self._store = store
        self._idle.set()
        self._start("turnout-bus")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Block until every event published so far is stored; False on timeout."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self.backlog:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            self._idle.wait(0.01)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Store what was published (waiting up to ``timeout_s`` while the store fails), then stop.
        Events still not stored then (the store stayed down) are counted in a loud log line."""
        self.flush(timeout_s=timeout_s)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=5.0)
        lost = self.backlog
        if lost:
            log.error("event bus closed with %d events not stored: the store failed for %g s", lost, timeout_s)

    def _run(self) -> None:
        backoff = 0.05
        batch: list[Event] = []
        while True:
            if not batch:
                batch = self._next_batch()
            if not batch:
                self._idle.set()
                if self._stop:
                    return
                continue
            try:
                self._store.insert(batch)
            except Exception as exc:  # the store is down: keep the batch, retry
                self.failures += 1
                log.warning("event store insert failed (%d events kept, retrying): %s", len(batch), exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            batch = []
            self._inflight = 0
            if not self._queue:
                self._idle.set()
