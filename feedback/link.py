"""The link between a serving process and the storage process that holds the embedded store.

chDB runs queries and inserts inside the calling interpreter and holds its GIL for milliseconds
at a time; a serving process that opened it would stall its requests on every insert. So in
``turnout up`` one process of its own holds the store (``service.storage_process``) and the
serving processes reach it over a Unix socket (``multiprocessing.connection``: length-framed
pickles, an authentication key, one connection per calling thread):

- ``StoreLink.call(op, ...)``: one request, one answer; a broken link raises ``LinkError``.
- ``RemoteClickHouse``: what the ClickHouse adapters ask of a clickhouse-connect client
  (``query``, ``command``, ``insert``, ``insert_arrow``), run there.
- ``LinkSink``: the event sink. ``publish`` appends to a deque (the request path pays a few
  hundred nanoseconds); one thread sends batches and forgets a batch only when the storage
  process answered that it is stored. A batch whose answer did not come (the storage process
  died, or is being restarted) is sent again: the row store's exactly-once insert
  (``feedback.clickhouse_dedup``) drops what the lost attempt had stored. At a stop, what the
  store did not take within the time allowed goes to a spill journal (``feedback.spill``), which
  the next start sends before anything new.
"""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from feedback.events import Event, decode_event, encode_event
from feedback.inprocess import BatchQueue

__all__ = ["LinkError", "LinkSink", "RemoteClickHouse", "StoreLink", "dispatch"]

log = logging.getLogger("turnout.link")

_SEND_TIMEOUT_S = 60.0  # a batch of events unanswered this long is sent again

_ERRORS: dict[str, type[Exception]] = {"ValueError": ValueError, "LookupError": LookupError, "KeyError": KeyError}


class LinkError(RuntimeError):
    """The storage process did not answer (down, restarting, or the call timed out)."""


class StoreLink:
    """Calls to the storage process at ``address`` (a Unix socket path). Thread-safe: each
    thread has its own connection, opened on first use and again after a failure."""

    def __init__(self, address: str, authkey: bytes, timeout_s: float = 120.0) -> None:
        self.address = address
        self._authkey = authkey
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = Client(self.address, family="AF_UNIX", authkey=self._authkey)
            except (OSError, EOFError) as exc:
                raise LinkError(f"storage process at {self.address} unreachable: {exc}") from None
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def call(self, op: str, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """Run ``op`` there and return its value; raise what it raised (``ValueError``,
        ``LookupError``, ``KeyError`` as such, anything else as ``RuntimeError``)."""
        conn = self._conn()
        try:
            conn.send((op, args, kwargs))
            if not conn.poll(self._timeout_s if timeout_s is None else timeout_s):
                raise LinkError(f"storage process did not answer {op!r} in time")
            status, value = conn.recv()
        except LinkError:
            self._drop()  # a late answer must not be read as the next call's
            raise
        except (OSError, EOFError) as exc:
            self._drop()
            raise LinkError(f"storage process link broken during {op!r}: {exc}") from None
        if status == "ok":
            return value
        kind, message = value
        raise _ERRORS.get(kind, RuntimeError)(f"storage process: {message}" if kind not in _ERRORS else message)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


def dispatch(handlers: dict[str, Any], request: tuple[str, tuple, dict]) -> tuple[str, Any]:
    """The storage process's side of a call: run the handler, answer ("ok", value) or
    ("err", (kind, message))."""
    op, args, kwargs = request
    try:
        return "ok", handlers[op](*args, **kwargs)
    except Exception as exc:  # the caller raises it
        if not isinstance(exc, (ValueError, LookupError)):
            log.warning("storage call %s failed: %s", op, exc)
        return "err", (type(exc).__name__, str(exc))


class _Result:
    __slots__ = ("result_rows",)

    def __init__(self, rows: list[tuple]) -> None:
        self.result_rows = rows


class RemoteClickHouse:
    """The part of a clickhouse-connect client the adapters use, run in the storage process."""

    def __init__(self, link: StoreLink) -> None:
        self._link = link

    def query(self, sql: str, parameters: dict[str, Any] | None = None, **kwargs: Any) -> _Result:
        return _Result(self._link.call("query", sql, parameters, **kwargs))

    def command(self, sql: str, parameters: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        return self._link.call("command", sql, parameters, **kwargs)

    def insert(self, table: str, data: Any, **kwargs: Any) -> None:
        self._link.call("insert", table, data, **kwargs)

    def insert_arrow(self, table: str, arrow_table: Any, **kwargs: Any) -> None:
        self._link.call("insert_arrow", table, arrow_table, **kwargs)


class LinkSink(BatchQueue):
    """The event sink of a serving process whose store is in the storage process (module doc).

    ``journal``: a ``feedback.spill.SpillJournal`` of this process alone; ``max_batch`` events a
    call at most, one every ``flush_interval_s`` unless a full batch waits.
    """

    _closed = "event sink is closed"

    def __init__(self, link: StoreLink, journal: Any, max_batch: int = 2000, flush_interval_s: float = 1.0,
                 retry_max_s: float = 5.0) -> None:  # fmt: skip
        super().__init__(max_batch, flush_interval_s)
        self._link = link
        self._journal = journal
        self._retry_max_s = retry_max_s
        self._batch: list[Event] = []
        self.stored = 0  # events the storage process acknowledged
        self.journaled = 0
        self._start("turnout-link-sink")

    def stats(self) -> dict[str, int]:
        return {"stored": self.stored, "backlog": self.backlog, "failures": self.failures,
                "journaled": self.journaled, "spill_events": self._journal.pending}  # fmt: skip

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Block until every event published so far is stored; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.backlog or self._journal.pending:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            self._idle.wait(0.01)
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what was published (for up to ``timeout_s`` while the storage process does not
        answer), then journal what is left for the next start."""
        self.flush(timeout_s)
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=_SEND_TIMEOUT_S + 5.0)
        left = list(self._queue)
        if self._thread.is_alive():  # stuck on an answer that may never come: its batch too (dedup)
            left = self._batch + left
        self._queue.clear()
        if left:
            taken = self._journal.append([encode_event(e) for e in left], sync=True)
            self.journaled += taken
            log.warning("storage process did not take %d events in %g s: %d journaled in %s for the next start",
                        len(left), timeout_s, taken, self._journal.directory)  # fmt: skip
        self._journal.close()

    def _send(self, payloads: list[bytes]) -> None:
        self._link.call("events", payloads, timeout_s=_SEND_TIMEOUT_S)

    def _replay(self) -> bool:
        """Send what an earlier run journaled; True when nothing is left."""
        while self._journal.pending:
            records = self._journal.read(self._max_batch)
            if not records:
                return True
            self._send([r for r, _ in records])
            self._journal.commit(records[-1][1], len(records))
            self.stored += len(records)
        return True

    def _run(self) -> None:
        backoff = 0.05
        batch: list[Event] = []
        while True:
            self._batch = batch
            if not batch and not self._journal.pending:
                batch = self._next_batch()
            if not batch and not self._journal.pending:
                self._idle.set()
                if self._stop:
                    return
                continue
            try:
                self._replay()
                if batch:
                    self._send([encode_event(e) for e in batch])
            except Exception as exc:  # unanswered: send again (the store drops what it already has)
                self.failures += 1
                if self._stop:  # closing: what is left goes to the journal
                    self._queue.extendleft(reversed(batch))
                    self._inflight = 0
                    return
                log.warning("storage process did not store %d events (kept, sending again): %s", len(batch), exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
                continue
            backoff = 0.05
            self.stored += len(batch)
            batch = []
            self._inflight = 0


def journal_dir(spill_path: str, worker: int) -> str:
    """Each serving process's own spill journal for the link (a journal has one writer)."""
    return str(Path(spill_path) / f"link-{worker}")


def decode_events(payloads: list[bytes]) -> list[Event]:
    return [decode_event(p) for p in payloads]
