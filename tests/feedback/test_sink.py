"""The sink against a real broker and ClickHouse: failing inserts, poison messages, validation."""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec
import pytest

from feedback.clickhouse import ClickHouseDeadLetterStore, ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, encode_event
from feedback.kafka import KafkaEventSink
from feedback.kafka_client import build_client
from feedback.sink import Sink, check_event, split_batch
from feedback.spill import SpillJournal
from tests.feedback.pipeline import FlakyRows, decision, events, feedback, running, wait_for


@pytest.fixture
def ch(chdb_dir, ch_database) -> Any:
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    return client


def _count(client: Any, table: str) -> int:
    return int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])


def _sink(broker, names, rows, dead, **kw) -> Sink:
    return Sink(broker.bootstrap, rows, dead, topics=(names["decisions"], names["feedback"]), dlq_topic=names["dlq"],
                group_id=names["group"], session_timeout_ms=6000, batch_s=0.1, retry_max_s=0.2, **kw)  # fmt: skip


def committed(bootstrap: str, group: str, topics: tuple[str, ...]) -> dict[Any, int | None]:
    """The group's committed offsets at the broker, per partition (None: nothing committed)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = build_client(KafkaConsumer, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {TopicPartition(t, p): c.committed(TopicPartition(t, p)) for t in topics
                for p in sorted(c.partitions_for_topic(t) or ())}  # fmt: skip
    finally:
        c.close(autocommit=False)


def _produce(broker, names, tmp_path, evs) -> None:
    producer = KafkaEventSink(broker.bootstrap, SpillJournal(tmp_path / "spill", 1 << 24),
                              decisions_topic=names["decisions"], feedback_topic=names["feedback"])  # fmt: skip
    for e in evs:
        producer.publish(e)
    assert producer.flush(30.0)
    producer.close()
    assert producer.stats()["spilled"] == 0


def test_failing_inserts_commit_nothing_then_resume_losing_nothing(kafka_broker, unique_topics, ch, tmp_path):
    names = unique_topics
    topics = (names["decisions"], names["feedback"])
    evs = events(200)
    _produce(kafka_broker, names, tmp_path, evs)
    rows = FlakyRows(ClickHouseRowStore(ch), failures=4)
    seen_while_failing: list[dict] = []
    probes: list[tuple[bool, bool]] = []  # (alive, ready) seen at each failing insert

    def on_fail() -> None:
        seen_while_failing.append(committed(kafka_broker.bootstrap, names["group"], topics))
        probes.append((sink.liveness()[0], sink.readiness()[0]))

    rows.on_fail = on_fail
    # hold_max_s: a batch failing for longer than that is abandoned and read again from Kafka
    sink = _sink(kafka_broker, names, rows, ClickHouseDeadLetterStore(ch), batch_events=1000, hold_max_s=0.25)
    assert sink.liveness()[0] and not sink.readiness()[0]  # alive, not joined yet
    with running(sink):
        wait_for(lambda: _count(ch, "decisions") + _count(ch, "feedback") >= 400, what="400 rows")
        wait_for(lambda: sum(o or 0 for o in committed(kafka_broker.bootstrap, names["group"], topics).values()) == 400,
                 what="offsets of all 400 records committed")  # fmt: skip
        ready, details = sink.readiness()
        assert ready and details["joined"] and details["last_stored_ms"] > 0
    # joined and alive throughout; ready at the first failure, not ready while the failures go on
    assert probes == [(True, True)] + [(True, False)] * 3
    assert rows.failed == 4 and sink.store_failures == 4
    assert sink.abandoned >= 1  # the failing batch was given back to Kafka and polled again
    assert len(seen_while_failing) == 4
    assert all(o is None for offsets in seen_while_failing for o in offsets.values())  # no commit while failing
    assert _count(ch, "decisions") == 200 and _count(ch, "feedback") == 200
    stored = {r[0] for t in ("decisions", "feedback") for r in ch.query(f"SELECT event_id FROM {t}").result_rows}
    assert stored == {e.event_id for e in evs}


def _raw(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


POISON = {
    "garbage": b"\x00\x01not msgpack at all\xff",
    "json": b'{"type": "decision", "event_id": "x"}',
    "empty": b"",
    "future schema": _raw({"type": "decision", "event_id": "e1", "decision_id": "d1", "ts_ms": 1, "schema_version": 99}),
    "unknown kind": _raw({"type": "verdict", "event_id": "e2", "decision_id": "d2", "ts_ms": 1}),
    "missing field": _raw({"type": "feedback", "event_id": "e3", "decision_id": "d3", "ts_ms": 1}),
    "reward out of range": encode_event(FeedbackGiven(event_id="e4", decision_id="d4", ts_ms=1, reward=7.0)),
}


class RejectingRows:
    """A row store that rejects, as bad data, any batch holding an event of tenant "reject-me"."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def insert(self, events: Any, streams: Any = None) -> None:
        if any(e.tenant == "reject-me" for e in events):
            raise ValueError("value out of range for column tenant")
        self.inner.insert(events, streams)


REJECTED = encode_event(FeedbackGiven(event_id="e5", decision_id="d5", ts_ms=1, reward=0.5, tenant="reject-me"))


def test_poison_goes_to_dead_letters_and_the_stream_behind_is_stored(kafka_broker, unique_topics, ch):
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.structs import TopicPartition

    names = unique_topics
    good = events(60)
    producer = build_client(KafkaProducer, bootstrap_servers=kafka_broker.bootstrap, acks="all")
    sent: list[tuple[str, bytes]] = []
    poison = list(POISON.values())
    for i, e in enumerate(good):  # every poison message has good events behind it, on the same partition
        if i % 30 == 0 and len(poison) > 3:
            payload = poison.pop(0)
            producer.send(names["decisions"], key=b"k", value=payload)
            sent.append(("poison", payload))
        producer.send(names["decisions"] if isinstance(e, DecisionMade) else names["feedback"], key=b"k",
                      value=encode_event(e))  # fmt: skip
    for payload in [*poison, REJECTED]:  # the last one passes check_event; the store rejects it
        producer.send(names["feedback"], key=b"k", value=payload)
        sent.append(("poison", payload))
    producer.send(names["feedback"], key=b"k", value=encode_event(feedback(decision(), 0.5)))  # behind the last
    producer.flush(30)
    producer.close()

    dead = ClickHouseDeadLetterStore(ch)
    sink = _sink(kafka_broker, names, RejectingRows(ClickHouseRowStore(ch)), dead)
    expected = sorted([*POISON.values(), REJECTED])
    with running(sink):
        wait_for(lambda: _count(ch, "decisions") + _count(ch, "feedback") >= 121, what="121 rows")
        wait_for(lambda: len(dead.dead_letters()) >= len(expected), what="dead letters")
    assert _count(ch, "decisions") == 60 and _count(ch, "feedback") == 61
    letters = dead.dead_letters()
    assert len(letters) == len(expected) == sink.dead_lettered
    assert sorted(x.payload for x in letters) == expected
    by_payload = {x.payload: x.error for x in letters}
    assert by_payload[REJECTED].startswith("rejected by the row store: ValueError")
    assert by_payload[POISON["future schema"]].startswith("unsupported schema_version 99")
    assert by_payload[POISON["reward out of range"]].startswith("reward 7.0")
    assert by_payload[POISON["garbage"]].startswith("undecodable")

    dlq = build_client(KafkaConsumer, bootstrap_servers=kafka_broker.bootstrap, enable_auto_commit=False)
    parts = [TopicPartition(names["dlq"], p) for p in sorted(dlq.partitions_for_topic(names["dlq"]) or ())]
    dlq.assign(parts)
    dlq.seek_to_beginning(*parts)
    got = []
    deadline = time.monotonic() + 20
    while len(got) < len(expected) and time.monotonic() < deadline:
        for batch in dlq.poll(timeout_ms=200).values():
            got += batch
    dlq.close()
    assert sorted(m.value or b"" for m in got) == expected
    assert all(dict(m.headers)["error"] for m in got)
    assert {dict(m.headers)["topic"].decode() for m in got} == {names["decisions"], names["feedback"]}


class _Rec(msgspec.Struct):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@pytest.mark.parametrize(
    "event, error",
    [
        (DecisionMade(event_id="e", decision_id="d", ts_ms=1, propensity=1.5), "propensity"),
        (DecisionMade(event_id="e", decision_id="d", ts_ms=1, cluster=-1), "cluster"),
        (DecisionMade(event_id="e", decision_id="d", ts_ms=1, prompt_tokens=1 << 32), "prompt_tokens"),
        (DecisionMade(event_id="e", decision_id="d", ts_ms=1, cost_usd=math.nan), "not finite"),
        (DecisionMade(event_id="e", decision_id="d", ts_ms=1, embedding=b"abc"), "embedding"),
        (DecisionMade(event_id="e", decision_id="d", ts_ms=1, margin=1e300), "Float32"),
        (DecisionMade(event_id="", decision_id="d", ts_ms=1), "must not be empty"),
        (DecisionMade(event_id="e", decision_id="d", ts_ms=-5), "ts_ms"),
        (DecisionMade(event_id="e", decision_id="d", ts_ms=1, schema_version=0), "schema_version"),
        (FeedbackGiven(event_id="e", decision_id="d", ts_ms=1, reward=-0.1), "reward"),
        (FeedbackGiven(event_id="e", decision_id="d", ts_ms=1, reward=math.inf), "reward"),
    ],
)
def test_check_event_names_what_a_column_cannot_hold(event, error):
    assert error in (check_event(event) or "")


def test_split_batch_keeps_order_and_marks_each_dead_letter():
    good = events(3)
    recs = [_Rec("t", 0, i, b"k", encode_event(e)) for i, e in enumerate(good)]
    recs.insert(2, _Rec("t", 1, 77, None, b"\xc1"))
    ok, dead = split_batch(recs, now_ms=5)
    assert [e for e, _ in ok] == good and [r.offset for _, r in ok] == [0, 1, 2, 3, 4, 5]
    assert [(d.topic, d.partition, d.offset, d.key, d.payload, d.received_ms) for d in dead] == [("t", 1, 77, b"", b"\xc1", 5)]
    assert split_batch(recs, now_ms=9)[1][0].letter_id == dead[0].letter_id  # same message, same id
