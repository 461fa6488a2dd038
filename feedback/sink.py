"""The sink: a Kafka consumer group that stores events in ClickHouse, losing and duplicating nothing.

One loop, one batch at a time::

    poll until batch_events records or batch_s seconds  ->  decode + validate each record
    ->  store the events (row store, exactly once) and the dead letters (store + DLQ topic)
    ->  commit the batch's offsets

Offsets are committed only after the batch is stored, so a crash at any point re-reads an
uncommitted batch, and the row store's idempotent insert makes the re-read change nothing. Each
event goes to the row store with its stream (topic and partition), in offset order, so that two
replicas holding the same records during a rebalance converge on one copy of each
(``feedback.clickhouse_dedup``).
A store that fails is retried with backoff and nothing is committed; a batch held longer than
``hold_max_s`` is abandoned and re-read from Kafka (so a long ClickHouse outage never outlives the
group's ``max_poll_interval_ms``). A record that is not a valid event (bad bytes, unknown schema
version, values out of range) becomes a ``DeadLetter`` and the stream behind it goes on.
``stop`` (SIGTERM in ``turnout sink``) lets the batch in hand finish storing and committing, or
abandons it uncommitted while it is waiting to retry.

A topic that disappears and comes back (a broker that lost its storage) is a new log: the
sink notices the new topic id and reads it from the beginning (duplicates are harmless).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Sequence

import msgspec

from feedback.deadletters import DeadLetter, DeadLetterStore, letter_id
from feedback.events import SCHEMA_VERSION, DecisionMade, Event, decode_event
from feedback.kafka import Producer, ensure_topics
from feedback.kafka_client import build_client
from learner.ports import RowStore

__all__ = ["Sink", "check_event", "dead_letter", "split_batch"]

log = logging.getLogger("turnout.sink")

_U32 = 1 << 32
_I64 = 1 << 63
_F32_MAX = 3.4e38
_DATA_ERRORS = (ValueError, TypeError, OverflowError)  # raised converting values, before any I/O


def check_event(event: Event) -> str | None:
    """Why an event must not be stored (None when it is fine): what ClickHouse columns can hold."""
    if not 1 <= event.schema_version <= SCHEMA_VERSION:
        return f"unsupported schema_version {event.schema_version} (this sink reads 1..{SCHEMA_VERSION})"
    if not event.event_id or not event.decision_id:
        return "event_id and decision_id must not be empty"
    if not 0 <= event.ts_ms < _I64:
        return f"ts_ms {event.ts_ms} out of range"
    if isinstance(event, DecisionMade):
        for name in ("clustering", "cluster", "prompt_tokens", "completion_tokens"):
            if not 0 <= getattr(event, name) < _U32:
                return f"{name} {getattr(event, name)} out of range"
        if not 0 <= event.snapshot_version < 2 * _I64 or event.fallbacks < 0:
            return "snapshot_version or fallbacks out of range"
        if not all(math.isfinite(v) for v in (event.margin, event.propensity, event.cost_usd, event.latency_ms)):
            return "a number is not finite"
        if abs(event.margin) > _F32_MAX:
            return f"margin {event.margin} does not fit a Float32"
        if not 0.0 <= event.propensity <= 1.0:
            return f"propensity {event.propensity} not in [0, 1]"
        if len(event.embedding) % 4:
            return "embedding is not whole float32 values"
    elif not (math.isfinite(event.reward) and 0.0 <= event.reward <= 1.0):
        return f"reward {event.reward} not in [0, 1]"
    return None


def dead_letter(record: Any, error: str, now_ms: int) -> DeadLetter:
    """A consumer record that is not a storable event, with the reason."""
    payload = record.value if record.value is not None else b""
    return DeadLetter(
        letter_id=letter_id(record.topic, record.partition, record.offset, payload), topic=record.topic,
        partition=record.partition, offset=record.offset, key=record.key or b"", error=error, payload=payload,
        received_ms=now_ms,
    )  # fmt: skip


def _stream(record: Any) -> str:
    return f"{record.topic}:{record.partition}"


def split_batch(records: Sequence[Any], now_ms: int) -> tuple[list[tuple[Event, Any]], list[DeadLetter]]:
    """Consumer records -> ((event, its record) for the valid ones, dead letters for the others), in order."""
    events: list[tuple[Event, Any]] = []
    letters: list[DeadLetter] = []
    for r in records:
        try:
            event = decode_event(r.value if r.value is not None else b"")
            error = check_event(event)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = f"undecodable: {exc}"
        if error is None:
            events.append((event, r))
        else:
            letters.append(dead_letter(r, error, now_ms))
    return events, letters


class Sink:
    """Kafka (decisions, feedback topics) -> row store + dead letters. ``run(stop)`` until stopped."""

    def __init__(self, bootstrap_servers: str, rows: RowStore, dead_letters: DeadLetterStore, *,
                 topics: Sequence[str] = ("turnout.decisions", "turnout.feedback"), dlq_topic: str = "turnout.dlq",
                 group_id: str = "turnout-sink", batch_events: int = 5000, batch_s: float = 0.5,
                 session_timeout_ms: int = 10_000, max_poll_interval_ms: int = 300_000, retry_max_s: float = 5.0,
                 hold_max_s: float | None = None, client_id: str = "turnout-sink") -> None:  # fmt: skip
        self._bootstrap = bootstrap_servers
        self._rows = rows
        self._dead = dead_letters
        self._topics = tuple(topics)
        self._dlq_topic = dlq_topic
        self._group = group_id
        self._batch_events = batch_events
        self._batch_s = batch_s
        self._session_timeout_ms = session_timeout_ms
        self._max_poll_interval_ms = max_poll_interval_ms
        self._retry_max_s = retry_max_s
        self._hold_max_s = hold_max_s if hold_max_s is not None else max_poll_interval_ms / 1000 * 0.5
        self._client_id = client_id
        self._consumer: Any = None
        self._dlq = Producer(bootstrap_servers, client_id=client_id + "-dlq")
        self._topic_ids: dict[str, Any] = {}
        self._recreated: set[str] = set()
        self._ids_lock = threading.Lock()
        self.batches = 0
        self.events = 0  # valid events stored (duplicates included: the store drops those)
        self.dead_lettered = 0
        self.store_failures = 0
        self.commit_failures = 0
        self.abandoned = 0
        self.restarts = 0
        self.running = threading.Event()  # set once the consumer has joined and polled
        self._beat = time.monotonic()  # the loop's last sign of life (probes)
        self._store_failing = False  # the last store attempt failed (until one succeeds)
        self._last_stored_ms = 0

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the loop came round within the hold limit plus a minute (a batch whose store
        keeps failing is retried that long before it is re-read)."""
        limit = self._hold_max_s + 60.0
        age = time.monotonic() - self._beat
        return age <= limit, {"loop_age_s": round(age, 3), "limit_s": limit, **self.stats()}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: joined the group (partitions assigned) and storing (the last store did not fail)."""
        joined = self._consumer is not None and self.running.is_set()
        failing = self._store_failing
        details = {"joined": joined, "store_failing": failing, "last_stored_ms": self._last_stored_ms, **self.stats()}
        return joined and not failing, details

    def stats(self) -> dict[str, Any]:
        return {"batches": self.batches, "events": self.events, "dead_letters": self.dead_lettered,
                "store_failures": self.store_failures, "commit_failures": self.commit_failures,
                "abandoned_batches": self.abandoned, "consumer_restarts": self.restarts}  # fmt: skip

    # -- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        backoff = 0.1
        try:
            while not stop.is_set():
                self._beat = time.monotonic()
                if self._consumer is None and not self._connect():
                    stop.wait(backoff)
                    backoff = min(self._retry_max_s, backoff * 2)
                    continue
                try:
                    self._step(stop)
                    backoff = 0.1
                except Exception:  # a consumer error: start over from the committed offsets
                    log.exception("sink consumer failed; reconnecting (uncommitted records will be read again)")
                    self._close_consumer()
                    stop.wait(backoff)
                    backoff = min(self._retry_max_s, backoff * 2)
        finally:
            self._close_consumer()
            self._dlq.close(timeout_s=2.0)

    def _step(self, stop: threading.Event) -> None:
        """One batch: poll, store, commit (or rewind when the batch was abandoned)."""
        records = self._poll_batch(stop)
        if self._take_recreated():
            return  # what was polled may come from a stale position: drop it, re-read
        if not records:
            return
        if self._store(records, stop):
            self._commit(records)
            self.batches += 1
        elif not stop.is_set():
            self._rewind(records)

    def _connect(self) -> bool:
        from kafka import KafkaConsumer

        try:
            ensure_topics(self._bootstrap, (*self._topics, self._dlq_topic))
            consumer = build_client(
                KafkaConsumer,
                bootstrap_servers=self._bootstrap.split(","), group_id=self._group, client_id=self._client_id,
                enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=max(100, self._session_timeout_ms // 6),
                max_poll_interval_ms=self._max_poll_interval_ms, max_poll_records=self._batch_events,
                max_partition_fetch_bytes=max(1 << 20, self._batch_events * 2048),
                request_timeout_ms=max(self._session_timeout_ms + 5000, 15_000), metadata_max_age_ms=30_000,
                bootstrap_timeout_ms=2000, fetch_max_wait_ms=100,
            )  # fmt: skip
        except Exception as exc:
            log.warning("sink cannot reach Kafka at %s: %s", self._bootstrap, exc)
            return False
        consumer.subscribe(list(self._topics))
        self._watch_topic_ids(consumer)
        self._consumer = consumer
        log.info("sink consuming %s as group %s", ", ".join(self._topics), self._group)
        return True

    def _poll_batch(self, stop: threading.Event) -> list[Any]:
        records: list[Any] = []
        deadline = None
        while len(records) < self._batch_events and not stop.is_set():
            self._beat = time.monotonic()
            wait_ms = 100 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            polled = self._consumer.poll(timeout_ms=wait_ms, max_records=self._batch_events - len(records))
            for batch in polled.values():
                records.extend(batch)
            if self._consumer.assignment():
                self.running.set()
            if records and deadline is None:
                deadline = time.monotonic() + self._batch_s
            if not records or (deadline is not None and time.monotonic() >= deadline):
                break
        return records

    def _store(self, records: list[Any], stop: threading.Event) -> bool:
        """Store the batch; retry with backoff. False if abandoned (stopping or held too long)."""
        now_ms = int(time.time() * 1000)
        pairs, letters = split_batch(records, now_ms)
        events = [e for e, _ in pairs]
        streams = [_stream(r) for _, r in pairs]
        started = time.monotonic()
        delay = 0.05
        while True:
            self._beat = time.monotonic()
            try:
                if events:
                    rejected = self._insert_isolating(events, streams)
                    if rejected:  # values check_event let through and the store cannot take
                        source = {id(e): r for e, r in pairs}
                        letters = letters + [dead_letter(source[id(e)], error, now_ms) for e, error in rejected]
                        gone = {id(e) for e, _ in rejected}
                        kept = [i for i, e in enumerate(events) if id(e) not in gone]
                        events, streams = [events[i] for i in kept], [streams[i] for i in kept]
                if letters:
                    self._dead.insert_dead_letters(letters)
                    self._publish_dead_letters(letters)
                self.events += len(events)
                self.dead_lettered += len(letters)
                self._last_stored_ms = int(time.time() * 1000)
                self._store_failing = False
                return True
            except Exception as exc:
                self.store_failures += 1
                self._store_failing = True
                log.warning("sink could not store a batch of %d events (%d dead letters), retrying in %.2f s: %s",
                            len(events), len(letters), delay, exc)  # fmt: skip
            if stop.wait(delay):
                log.warning("sink stopping: batch of %d records abandoned uncommitted", len(records))
                return False
            if time.monotonic() - started > self._hold_max_s:
                self.abandoned += 1
                log.warning("sink held a batch for %.0f s: re-reading it from Kafka", time.monotonic() - started)
                return False
            delay = min(self._retry_max_s, delay * 2)

    def _insert_isolating(self, events: list[Event], streams: list[str]) -> list[tuple[Event, str]]:
        """Insert; when the store rejects the *data* (not an outage), bisect to the events it rejects.

        A conversion error (ValueError, TypeError, OverflowError) would fail the batch forever and
        stop the stream behind it; halving finds the culprits in O(log n) inserts. Other errors
        (connection, server) propagate and are retried. Halves already inserted are deduplicated
        when the batch is retried.
        """
        try:
            self._rows.insert(events, streams)
            return []
        except _DATA_ERRORS as exc:
            if len(events) == 1:
                return [(events[0], f"rejected by the row store: {type(exc).__name__}: {exc}")]
        mid = len(events) // 2
        return (self._insert_isolating(events[:mid], streams[:mid])
                + self._insert_isolating(events[mid:], streams[mid:]))  # fmt: skip

    def _publish_dead_letters(self, letters: list[DeadLetter]) -> None:
        records = [(self._dlq_topic, x.key, x.payload) for x in letters]
        headers = [[("error", x.error.encode()), ("topic", x.topic.encode()), ("partition", str(x.partition).encode()),
                    ("offset", str(x.offset).encode())] for x in letters]  # fmt: skip
        acked = self._dlq.send_all(records, headers)
        if not all(acked):
            raise RuntimeError(f"dead-letter topic {self._dlq_topic} took {sum(acked)} of {len(acked)} messages")

    def _commit(self, records: list[Any]) -> None:
        from kafka.structs import OffsetAndMetadata, TopicPartition

        last: dict[Any, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, -1), r.offset)
        try:
            self._consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in last.items()})
        except Exception as exc:  # rebalanced or broker gone: the batch is stored; a re-read is deduplicated
            self.commit_failures += 1
            log.warning("sink commit failed (the stored batch may be read again, harmlessly): %s", exc)

    def _rewind(self, records: list[Any]) -> None:
        from kafka.structs import TopicPartition

        first: dict[Any, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(first.get(tp, r.offset), r.offset)
        owned = self._consumer.assignment()
        for tp, offset in first.items():
            if tp in owned:
                self._consumer.seek(tp, offset)

    # -- a topic recreated under the same name --------------------------------------------------

    def _watch_topic_ids(self, consumer: Any) -> None:
        # kafka-python keeps topic ids in its cluster metadata; a changed id means the topic was
        # deleted and created again, and positions in the old log mean nothing in the new one.
        cluster = getattr(getattr(consumer, "_client", None), "cluster", None)
        if cluster is None or not hasattr(cluster, "topic_id"):
            return

        def on_metadata(c: Any) -> None:
            with self._ids_lock:
                for topic in self._topics:
                    tid = c.topic_id(topic)
                    if tid is None:
                        continue
                    prev = self._topic_ids.get(topic)
                    if prev is not None and prev != tid:
                        self._recreated.add(topic)
                    self._topic_ids[topic] = tid

        cluster.add_listener(on_metadata)

    def _take_recreated(self) -> bool:
        with self._ids_lock:
            topics, self._recreated = self._recreated, set()
        if not topics:
            return False
        self.restarts += 1
        tps = [tp for tp in self._consumer.assignment() if tp.topic in topics]
        log.warning("topics %s were recreated: reading them again from the beginning", ", ".join(sorted(topics)))
        if tps:
            self._consumer.seek_to_beginning(*tps)
        return True

    def _close_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                consumer.close(autocommit=False, timeout_ms=2000)
            except Exception:
                log.debug("closing the consumer", exc_info=True)
