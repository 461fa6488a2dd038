"""The Kafka event sink of the service: a bounded buffer, a sender thread, a spill journal.

The request path only appends the event to an in-memory deque (a fraction of a microsecond).
One background thread encodes events and sends them with kafka-python (``acks=all``,
compressed, keyed by decision id so a decision and its feedback share a partition), and waits
for the broker's acknowledgement batch by batch.

When the broker does not acknowledge (down, unreachable, topic gone), the events of the batch
that were not acknowledged go to the on-disk ``SpillJournal``; from then on new events queue
behind them in the journal, and the journal is replayed in order, with backoff, until it is
empty; then events go straight to Kafka again. When the buffer is full, ``publish`` writes the
event to the journal itself (no fsync on the request path; the sender fsyncs within
``idle_s``). On ``close`` what is still buffered is written to the journal, to be replayed by
the next run. An event is lost only when the journal is full (counted, logged loudly).

Delivery is at least once: a batch whose acknowledgement was lost is sent again, so the sink
deduplicates by id.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import zlib
from typing import Any, Sequence

import msgspec

from feedback.events import DecisionMade, Event, encode_event
from feedback.kafka_client import build_client, close_producer
from feedback.spill import SpillJournal

__all__ = ["KafkaEventSink", "Producer", "ensure_topics"]

log = logging.getLogger("turnout.kafka")

Record = tuple[str, bytes, bytes]  # (topic, key, value)


class _Route(msgspec.Struct):
    """The two fields of an encoded event that say where it goes (the rest is skipped)."""

    type: str
    decision_id: str


_route_decoder = msgspec.msgpack.Decoder(_Route)


class Producer:
    """A kafka-python producer that is rebuilt after a failure.

    After a broker restart an idempotent producer's id is unknown to the new broker, so the
    old producer is dropped and a new one is made on the next attempt.
    """

    def __init__(self, bootstrap_servers: str, *, compression: str | None = "lz4", send_timeout_s: float = 10.0,
                 client_id: str = "turnout") -> None:  # fmt: skip
        self._config: dict[str, Any] = dict(
            bootstrap_servers=bootstrap_servers.split(","), client_id=client_id, acks="all",
            compression_type=None if compression in (None, "none") else compression, linger_ms=5,
            batch_size=1 << 20, max_block_ms=2000, request_timeout_ms=max(1000, int(send_timeout_s * 500)),
            delivery_timeout_ms=int(send_timeout_s * 1000), retry_backoff_ms=100, reconnect_backoff_max_ms=1000,
            bootstrap_timeout_ms=2000, max_request_size=8 << 20,
        )  # fmt: skip
        self._timeout_s = send_timeout_s
        self._producer: Any = None
        self._down = False  # said once per outage, not per attempt

    def send_all(self, records: Sequence[Record], headers: Sequence[list] | None = None) -> list[bool]:
        """Send records and wait for the broker; which ones it acknowledged, in order."""
        from kafka import KafkaProducer

        if self._producer is None:
            try:
                self._producer = build_client(KafkaProducer, **self._config)
            except Exception as exc:  # NoBrokersAvailable and friends: try again later
                (log.debug if self._down else log.warning)(
                    "Kafka producer cannot connect (%s): %s", self._config["bootstrap_servers"], exc)
                self._down = True
                return [False] * len(records)
            self._down = False
        futures = []
        partitions: dict[str, int] = {}
        try:
            for i, (topic, key, value) in enumerate(records):
                n = partitions.get(topic) or partitions.setdefault(topic, len(self._producer.partitions_for(topic)))
                # The partition is chosen here (crc32 of the key) rather than by kafka-python's pure
                # Python murmur2: half the CPU per record. Same key, same partition, all the same.
                futures.append(self._producer.send(topic, value=value, key=key, partition=zlib.crc32(key) % n,
                                                   headers=headers[i] if headers else None))  # fmt: skip
        except Exception as exc:
            log.warning("Kafka send failed after %d of %d records: %s", len(futures), len(records), exc)
        try:
            self._producer.flush(timeout=self._timeout_s)
        except Exception as exc:
            log.warning("Kafka flush failed: %s", exc)
        acked = [f.is_done and f.succeeded() for f in futures] + [False] * (len(records) - len(futures))
        if not all(acked):
            self.close()
        return acked

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the kafka-python producer with its thread and sockets; the next send makes a new one.

        What it still holds is dropped: ``send_all`` has already reported it as not acknowledged.
        """
        if self._producer is not None:
            producer, self._producer = self._producer, None
            close_producer(producer, timeout_s)


def ensure_topics(bootstrap_servers: str, topics: Sequence[str], partitions: int = 4) -> None:
    """Create the topics that do not exist yet (a broker may also create them on first use)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = build_client(KafkaAdminClient, bootstrap_servers=bootstrap_servers.split(","), client_id="turnout-admin",
                         request_timeout_ms=5000, bootstrap_timeout_ms=2000)  # fmt: skip
    try:
        missing = [t for t in topics if t not in set(admin.list_topics())]
        if missing:
            try:
                admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class KafkaEventSink:
    """``EventSink`` onto Kafka with a spill journal. ``backlog`` and ``stats()`` for operators."""

    def __init__(self, bootstrap_servers: str, journal: SpillJournal, *, decisions_topic: str = "turnout.decisions",
                 feedback_topic: str = "turnout.feedback", buffer_events: int = 100_000, batch_events: int = 2000,
                 compression: str | None = "lz4", send_timeout_s: float = 10.0, retry_max_s: float = 5.0,
                 idle_s: float = 0.01, close_timeout_s: float = 10.0) -> None:  # fmt: skip
        self._journal = journal
        self._topics = {"decision": decisions_topic, "feedback": feedback_topic}
        self._producer = Producer(bootstrap_servers, compression=compression, send_timeout_s=send_timeout_s,
                                  client_id="turnout-service")  # fmt: skip
        self._buffer: collections.deque[Event] = collections.deque()
        self._max_buffer = buffer_events
        self._batch = batch_events
        self._retry_max_s = retry_max_s
        self._idle_s = idle_s
        self._close_timeout_s = close_timeout_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._count_lock = threading.Lock()
        self._closed = False
        self._inflight = 0
        self._backoff_s = 0.0
        self._next_try = 0.0
        self.connected = False
        self.taken = 0  # events the sender took from the buffer
        self.overflowed = 0  # events publish wrote to the journal because the buffer was full
        self.sent = 0  # events the broker acknowledged
        self.spilled = 0  # events written to the journal
        self.replayed = 0  # journal events the broker acknowledged
        self._thread = threading.Thread(target=self._run, name="turnout-kafka-sender", daemon=True)
        self._thread.start()

    # -- the request path ---------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        if self._closed:
            raise RuntimeError("event sink is closed")
        buffer = self._buffer
        if len(buffer) < self._max_buffer:
            buffer.append(event)
            if len(buffer) == self._batch:
                self._wake.set()
            return
        self._overflow(event)

    def _overflow(self, event: Event) -> None:
        # The sender is behind (broker slow or down): keep the event on disk, not in memory.
        with self._count_lock:
            if self._journal.append([encode_event(event)], sync=False):
                self.overflowed += 1
                self.spilled += 1

    # -- state --------------------------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Events accepted and not yet acknowledged by Kafka (in memory, in flight, on disk)."""
        return len(self._buffer) + self._inflight + self._journal.pending

    @property
    def accepted(self) -> int:
        """Events ``publish`` accepted so far (buffered, sent, or spilled)."""
        return self.taken + len(self._buffer) + self.overflowed

    def stats(self) -> dict[str, Any]:
        return {
            "backend": "kafka",
            "connected": self.connected,
            "buffered": len(self._buffer),
            "buffer_max": self._max_buffer,
            "in_flight": self._inflight,
            "sent": self.sent,
            "spill_events": self._journal.pending,
            "spill_bytes": self._journal.pending_bytes,
            "spill_max_bytes": self._journal.max_bytes,
            "spilled": self.spilled,
            "replayed": self.replayed,
            "lost": self._journal.refused,
        }

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Block until every event published so far is acknowledged by Kafka; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self.backlog:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.002)
        return True

    def close(self) -> None:
        """Deliver what can be delivered within ``close_timeout_s``; journal the rest; stop."""
        if self._closed:
            return
        self.flush(self._close_timeout_s)
        self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._close_timeout_s + 30.0)
        self._spill_buffer()  # anything published while the thread was stopping
        self._producer.close()
        self._journal.close()

    # -- the sender thread --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self._step()
            except Exception:  # never let the sender die: the events stay buffered or journaled
                log.exception("Kafka sender step failed")
                busy = False
                time.sleep(0.1)
            if not busy:
                self._wake.wait(self._idle_s)
                self._wake.clear()
        self._spill_buffer()

    def _step(self) -> bool:
        """One batch: replay the journal if it holds anything, else send from the buffer."""
        self._journal.sync()  # events ``publish`` journaled itself
        if self._journal.pending:
            self._spill_buffer()  # new events queue behind the journaled ones
            if time.monotonic() < self._next_try:
                return False
            return self._replay()
        batch = self._take()
        if not batch:
            return False
        try:
            acked = self._producer.send_all([self._record(e) for e in batch])
        except Exception:  # whatever went wrong, the batch must not vanish: journal it
            log.exception("Kafka send raised; journaling the batch")
            acked = [False] * len(batch)
        sent = sum(acked)
        self.sent += sent
        if sent < len(batch):
            self._spill([encode_event(e) for e, ok in zip(batch, acked) if not ok])
            self._failed(len(batch) - sent)
        else:
            self._ok()
        self._inflight = 0
        return True

    def _take(self) -> list[Event]:
        batch: list[Event] = []
        buffer = self._buffer
        while buffer and len(batch) < self._batch:
            batch.append(buffer.popleft())
        self._inflight = len(batch)
        self.taken += len(batch)
        return batch

    def _record(self, event: Event) -> Record:
        topic = self._topics["decision" if isinstance(event, DecisionMade) else "feedback"]
        return topic, event.decision_id.encode(), encode_event(event)

    def _replay(self) -> bool:
        chunk = self._journal.read(self._batch)
        if not chunk:
            return False
        records = []
        for payload, _pos in chunk:
            try:
                route = _route_decoder.decode(payload)
                records.append((self._topics.get(route.type, self._topics["feedback"]), route.decision_id.encode(), payload))
            except msgspec.MsgspecError:  # cannot happen for our own encodings; the sink dead-letters it
                records.append((self._topics["feedback"], b"", payload))
        acked = self._producer.send_all(records)
        prefix = 0
        while prefix < len(acked) and acked[prefix]:
            prefix += 1
        if prefix:
            self.replayed += prefix  # counted before the commit empties the backlog (flush reads it)
            self.sent += prefix
            self._journal.commit(chunk[prefix - 1][1], prefix)
        if prefix < len(chunk):
            self._failed(len(chunk) - prefix)
            return False
        self._ok()
        if not self._journal.pending:
            log.warning("spill journal replayed: events go straight to Kafka again")
        return True

    def _spill_buffer(self) -> None:
        while self._buffer:
            batch = self._take()
            self._spill([encode_event(e) for e in batch])
            self._inflight = 0
        self._journal.sync()

    def _spill(self, payloads: list[bytes]) -> None:
        if payloads:
            accepted = self._journal.append(payloads, sync=True)
            with self._count_lock:
                self.spilled += accepted

    def _failed(self, n: int) -> None:
        if self.connected or not self._backoff_s:
            log.warning("Kafka did not take %d events: journaling to %s and retrying", n, self._journal.directory)
        self.connected = False
        self._backoff_s = min(self._retry_max_s, max(0.1, self._backoff_s * 2))
        self._next_try = time.monotonic() + self._backoff_s

    def _ok(self) -> None:
        if not self.connected:
            log.info("Kafka producer connected")
        self.connected = True
        self._backoff_s = 0.0
        self._next_try = 0.0
