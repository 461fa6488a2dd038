"""``source_decision_id`` (migration 050): a cache hit's link to the answer it served, stored in ClickHouse."""

from __future__ import annotations

import msgspec

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, decode_event, encode_event, uuid7


def test_a_hit_keeps_its_source_decision_in_clickhouse(chdb_dir, ch_database):
    client = connect(f"chdb://{chdb_dir}", ch_database)
    assert "050_cache_hits.sql" in migrate(client)
    hit = DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=1, policy="cache", arm="cache", model="cache",
                       source_decision_id="0190aaaa-0000-7000-8000-000000000001")  # fmt: skip
    plain = DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=1, model="a")
    ClickHouseRowStore(client).insert([hit, plain])
    rows = dict(client.query("SELECT model, source_decision_id FROM decisions").result_rows)
    assert rows == {"cache": "0190aaaa-0000-7000-8000-000000000001", "a": ""}


def test_an_event_from_before_the_field_decodes_with_it_empty():
    fields = {"type": "decision", **msgspec.structs.asdict(DecisionMade(event_id="e", decision_id="d", ts_ms=1))}
    del fields["source_decision_id"]  # as a producer of the previous release wrote it
    assert decode_event(msgspec.msgpack.encode(fields)).source_decision_id == ""
    assert decode_event(encode_event(DecisionMade(event_id="e", decision_id="d", ts_ms=1, source_decision_id="s"))
                        ).source_decision_id == "s"
