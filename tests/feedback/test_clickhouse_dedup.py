"""Idempotent inserts: a re-delivered event never becomes a second row (nor a later ingested_ms)."""

from __future__ import annotations

import time

import pytest

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.clickhouse_dedup import _ranges, stored_ids
from feedback.events import FeedbackGiven, uuid7
from tests.feedback.pipeline import events


@pytest.fixture
def ch(chdb_dir, ch_database):
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    return client


def _rows(client, table: str) -> int:
    return int(client.query(f"SELECT count() FROM {table}").result_rows[0][0])


def test_ranges_cover_time_ordered_ids_or_give_up():
    t = 1_700_000_000_000
    close = sorted(uuid7(t + i) for i in range(0, 900, 3))
    assert len(_ranges(close)) == 1
    spread = sorted(uuid7(t + i * 10_000) for i in range(4))
    assert len(_ranges(spread)) == 4
    assert _ranges(sorted(uuid7(t + i * 10_000) for i in range(9))) is None  # too many ranges: IN instead
    assert _ranges(["d1", "d2"]) is None  # not UUIDv7: IN instead


@pytest.mark.parametrize("spread_ms", [0, 10_000, 3_600_000])
def test_stored_ids_finds_exactly_the_stored_ones(ch, spread_ms):
    rows = ClickHouseRowStore(ch)
    t = int(time.time() * 1000)
    ids = [uuid7(t + (i % 10) * spread_ms) for i in range(200)]
    rows.insert([FeedbackGiven(event_id=i, decision_id="d", ts_ms=t, reward=1.0) for i in ids[::2]])
    assert stored_ids(ch, "feedback", "event_id", ids) == set(ids[::2])
    assert stored_ids(ch, "feedback", "event_id", ["nope", ids[0]]) == {ids[0]}


def test_redelivery_adds_no_row_and_no_new_ingestion_time(ch):
    rows = ClickHouseRowStore(ch)
    evs = events(50)
    rows.insert(evs[:60] + evs[:10])  # repeats inside one batch too
    first = {r[0]: r[1] for r in ch.query("SELECT event_id, ingested_ms FROM feedback").result_rows}
    time.sleep(0.01)
    rows.insert(list(reversed(evs)))  # everything again, later, in another order
    assert _rows(ch, "decisions") == 50 and _rows(ch, "feedback") == 50
    again = {r[0]: r[1] for r in ch.query("SELECT event_id, ingested_ms FROM feedback").result_rows}
    assert {k: again[k] for k in first} == first  # the copies stored first keep their window
