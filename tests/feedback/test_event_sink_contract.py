"""One contract for the event path, in-process bus and Kafka (producer + broker + sink) alike:
every event accepted ends up in ClickHouse exactly once."""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import msgspec
import pytest

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.deadletters import MemoryDeadLetterStore
from feedback.inprocess import InProcessBus
from feedback.kafka import KafkaEventSink
from feedback.sink import Sink
from feedback.spill import SpillJournal
from tests.feedback.pipeline import events, running, wait_for


class Path_(msgspec.Struct):
    """An event path under test: where to publish, where rows land, how to wait for them."""

    sink: Any
    client: Any
    delivered: Callable[[int], None]


def _rows(client: Any, table: str) -> int:
    return int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])


@pytest.fixture(params=["inprocess", "kafka"])
def path(request, chdb_dir, ch_database, tmp_path) -> Iterator[Path_]:
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    rows = ClickHouseRowStore(client)

    def stored() -> int:
        return _rows(client, "decisions") + _rows(client, "feedback")

    if request.param == "inprocess":
        bus = InProcessBus(rows)
        yield Path_(bus, client, lambda n: wait_for(lambda: bus.flush(1.0) and stored() >= n, what=f"{n} rows"))
        bus.close()
        return
    broker = request.getfixturevalue("kafka_broker")
    names = request.getfixturevalue("unique_topics")
    producer = KafkaEventSink(broker.bootstrap, SpillJournal(tmp_path / "spill", 1 << 24),
                              decisions_topic=names["decisions"], feedback_topic=names["feedback"])  # fmt: skip
    sink = Sink(broker.bootstrap, rows, MemoryDeadLetterStore(), topics=(names["decisions"], names["feedback"]),
                dlq_topic=names["dlq"], group_id=names["group"], batch_events=500, batch_s=0.1,
                session_timeout_ms=6000)  # fmt: skip
    with running(sink):
        yield Path_(producer, client, lambda n: wait_for(lambda: stored() >= n, what=f"{n} rows"))
        producer.close()


def test_every_event_is_stored_exactly_once(path):
    batches = [events(150), events(150)]  # two publishing threads, 300 events each
    threads = [threading.Thread(target=lambda b=b: [path.sink.publish(e) for e in b]) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.sink.flush(30.0)
    assert path.sink.backlog == 0
    path.delivered(600)
    assert _rows(path.client, "decisions") == 300 and _rows(path.client, "feedback") == 300
    want = sorted(e.event_id for b in batches for e in b)
    got = sorted(r[0] for t in ("decisions", "feedback") for r in path.client.query(f"SELECT event_id FROM {t}").result_rows)
    assert got == want


def test_close_delivers_what_was_accepted_then_refuses(path):
    evs = events(50)
    for e in evs:
        path.sink.publish(e)
    path.sink.close()
    path.delivered(100)
    assert _rows(path.client, "decisions") == 50 and _rows(path.client, "feedback") == 50
    with pytest.raises(RuntimeError):
        path.sink.publish(evs[0])
