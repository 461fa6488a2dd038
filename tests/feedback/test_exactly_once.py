"""Exactly once across writers that share no lock: two row stores, then two sinks in one group.

Every count here is of raw rows (``SELECT count()``, merges stopped), never a de-duplicating read. The race is
forced, not hoped for: each writer's client holds its first insert until the other writer has
reached its own, so both have checked which ids are stored (and seen none) before either writes.
The clients are real chDB clients; only the timing of their first insert is arranged.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from feedback.clickhouse import ClickHouseDeadLetterStore, ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade
from feedback.kafka import KafkaEventSink, ensure_topics
from feedback.sink import Sink
from feedback.spill import SpillJournal
from tests.feedback.pipeline import events, running, wait_for
from tests.feedback.test_sink import committed


class Rendezvous:
    """Holds writers at an insert until a partner arrives, then lets them all go at once.

    A writer made with ``hold=True`` waits at its first insert; any writer whose insert holds
    one of the ids a waiting writer holds is its partner. Without a partner within
    ``timeout_s`` everyone goes on (and the test's check that the writers met fails).
    """

    def __init__(self, timeout_s: float = 120.0) -> None:
        self._cond = threading.Condition()
        self._timeout_s = timeout_s
        self.waiting: set[str] = set()  # the ids held back
        self.met = False

    def arrive(self, ids: list[str], hold: bool) -> None:
        with self._cond:
            if self.met:
                return
            if self.waiting.intersection(ids):
                self.met = True
                self._cond.notify_all()
            elif hold:
                self.waiting.update(ids)
                self._cond.notify_all()
                self._cond.wait_for(lambda: self.met, timeout=self._timeout_s)


class HeldClient:
    """A real ClickHouse client whose inserts pass a rendezvous first; records the ids it sends."""

    def __init__(self, client: Any, rendezvous: Rendezvous, hold: bool) -> None:
        self._client, self._rendezvous, self._hold = client, rendezvous, hold
        self.sent: list[list[str]] = []  # the event ids of each block this client sent, in order

    def insert_arrow(self, table: str, arrow_table: Any, **kw: Any) -> Any:
        ids = arrow_table.column("event_id").to_pylist()
        self._rendezvous.arrive(ids, hold=self._hold and not self.sent)
        self.sent.append(ids)
        return self._client.insert_arrow(table, arrow_table, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def sent_ids(self) -> set[str]:
        return {i for block in self.sent for i in block}


def _raw(client: Any, table: str) -> tuple[int, int]:
    """(rows, distinct event ids) as stored: no FINAL, no GROUP BY."""
    rows, ids = client.query(f"SELECT count(), uniqExact(event_id) FROM {table}").result_rows[0]
    return int(rows), int(ids)


@pytest.fixture
def clients(chdb_dir, ch_database):
    """Two clients of their own on one database (as two sink replicas would have).

    Merges are stopped: a ReplacingMergeTree merge collapses rows with the same key, so a
    duplicate written in a race could vanish before it is counted and the test would pass
    without the mechanism it tests.
    """
    a, b = connect(f"chdb://{chdb_dir}", ch_database), connect(f"chdb://{chdb_dir}", ch_database)
    migrate(a)
    for table in ("decisions", "feedback"):
        a.command(f"SYSTEM STOP MERGES {table}")
    return a, b


@pytest.mark.parametrize("window", [10_000, 0], ids=["dedup-window", "control-no-window"])
def test_two_stores_racing_on_overlapping_batches_store_each_event_once(clients, window):
    a, b = clients
    if window == 0:  # the control: without ClickHouse's deduplication window the same race duplicates
        for table in ("decisions", "feedback"):
            a.command(f"ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = 0")
    evs = events(250)  # 250 decisions and their feedback, one stream per kind ("partition" p0, p1)
    streams = ["p0" if isinstance(e, DecisionMade) else "p1" for e in evs]
    rendezvous = Rendezvous()
    held_a, held_b = HeldClient(a, rendezvous, hold=True), HeldClient(b, rendezvous, hold=False)
    # A has read the first 300 records, B all 500 (a re-delivery with other batch boundaries)
    store_a, store_b = ClickHouseRowStore(held_a), ClickHouseRowStore(held_b)
    thread = threading.Thread(target=store_a.insert, args=(evs[:300], streams[:300]))
    thread.start()
    wait_for(lambda: rendezvous.waiting, what="A to have checked and to wait at its insert")
    store_b.insert(evs, streams)
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert rendezvous.met  # both had checked and found nothing stored before either wrote
    assert held_a.sent[0][0] == held_b.sent[0][0]  # the same first event: the same token
    a_decisions = {e.event_id for e in evs[:300] if isinstance(e, DecisionMade)}
    assert a_decisions <= held_a.sent_ids() & held_b.sent_ids()  # both sent A's 150 decisions
    if window == 0:
        assert _raw(a, "decisions")[0] > 250  # the race is real: this is what the window prevents
        return
    assert _raw(a, "decisions") == (250, 250) and _raw(a, "feedback") == (250, 250)
    stored = {r[0] for t in ("decisions", "feedback") for r in a.query(f"SELECT event_id FROM {t}").result_rows}
    assert stored == {e.event_id for e in evs}


def test_an_existing_store_upgrades_and_keeps_its_rows(chdb_dir, ch_database, tmp_path):
    from feedback.clickhouse_schema import MIGRATIONS_DIR

    old = tmp_path / "migrations"
    old.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:3]) < 40:
            (old / path.name).write_text(path.read_text())
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client, old)  # a store as the previous release left it
    evs = events(20)
    client.command("INSERT INTO decisions (event_id, decision_id) VALUES " +
                   ", ".join(f"('{e.event_id}', '{e.decision_id}')" for e in evs[0::2]))  # fmt: skip
    assert migrate(client)[0] == "040_exactly_once.sql"  # (and the migrations after it)
    ddl = client.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                       "AND name = 'decisions'").result_rows[0][0]  # fmt: skip
    assert "non_replicated_deduplication_window = 10000" in ddl
    rows = ClickHouseRowStore(client)
    rows.insert(evs, ["p"] * len(evs))  # the old decisions again, and their feedback
    assert _raw(client, "decisions") == (20, 20) and _raw(client, "feedback") == (20, 20)
    assert client.query("SELECT countIf(insert_id = '') FROM decisions").result_rows[0][0] == 20  # old rows kept


def test_two_sinks_in_one_group_racing_on_redelivered_batches_store_each_event_once(
    kafka_broker, unique_topics, clients, tmp_path
):
    """Sinks B, then A join the group and share its partitions; then the events are produced. A
    takes a batch of its partitions and is held at its insert past its poll interval, so it
    leaves the group and B, the group's leader, takes A's partitions and reads the same
    uncommitted records again. When B is about to insert some of them, both go on."""
    names = unique_topics
    topics = (names["decisions"], names["feedback"])
    ensure_topics(kafka_broker.bootstrap, [*topics, names["dlq"]])
    rendezvous = Rendezvous()
    held = [HeldClient(clients[0], rendezvous, hold=True), HeldClient(clients[1], rendezvous, hold=False)]

    def sink(i: int) -> Sink:
        return Sink(kafka_broker.bootstrap, ClickHouseRowStore(held[i]), ClickHouseDeadLetterStore(clients[i]),
                    topics=topics, dlq_topic=names["dlq"], group_id=names["group"], client_id=f"sink-{'ab'[i]}",
                    batch_events=1000, batch_s=0.2, session_timeout_ms=6000, max_poll_interval_ms=6000,
                    retry_max_s=0.2)  # fmt: skip

    a, b = sink(0), sink(1)
    evs = events(400)
    with running(b):
        wait_for(lambda: b.running.is_set(), timeout_s=90, what="sink B to join the group")
        with running(a):
            wait_for(lambda: a.running.is_set(), timeout_s=90, what="sink A to join the group")
            producer = KafkaEventSink(kafka_broker.bootstrap, SpillJournal(tmp_path / "spill", 1 << 24),
                                      decisions_topic=names["decisions"], feedback_topic=names["feedback"])  # fmt: skip
            for e in evs:
                producer.publish(e)
            assert producer.flush(30.0)
            producer.close()
            wait_for(lambda: rendezvous.met, timeout_s=150, what="sink B to read sink A's held records again")
            wait_for(lambda: sum(o or 0 for o in committed(kafka_broker.bootstrap, names["group"], topics).values())
                     == 800, timeout_s=120, what="all 800 records committed")  # fmt: skip
    both = held[0].sent_ids() & held[1].sent_ids()
    assert both, "the two sinks never sent the same events"  # each would be a duplicate row without tokens
    raw = clients[0]
    assert _raw(raw, "decisions") == (400, 400) and _raw(raw, "feedback") == (400, 400)
    stored = {r[0] for t in ("decisions", "feedback") for r in raw.query(f"SELECT event_id FROM {t}").result_rows}
    assert stored == {e.event_id for e in evs}


@pytest.fixture(autouse=True)
def _quiet_kafka_logs(caplog):
    caplog.set_level("CRITICAL", logger="kafka")


def test_an_event_whose_rows_were_deleted_is_stored_again(chdb_dir, ch_database):
    """Rows deleted while their token is still in the window (a TTL, an operator's DELETE): the
    re-delivered event's block is dropped as a duplicate, seen as not stored, and sent again."""
    a = connect(f"chdb://{chdb_dir}", ch_database)  # merges on: a DELETE is a mutation, run by the merger
    migrate(a)
    rows = ClickHouseRowStore(a)
    evs = events(5)
    rows.insert(evs, ["p"] * len(evs))
    a.command("ALTER TABLE decisions DELETE WHERE 1 SETTINGS mutations_sync = 1")
    assert _raw(a, "decisions") == (0, 0)
    rows.insert(evs, ["p"] * len(evs))
    assert _raw(a, "decisions") == (5, 5) and _raw(a, "feedback") == (5, 5)
