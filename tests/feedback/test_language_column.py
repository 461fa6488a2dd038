"""``language`` (migration 061): a decision's prompt language, stored in ClickHouse; old events decode."""

from __future__ import annotations

import msgspec

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, decode_event, encode_event, uuid7


def test_a_decision_keeps_its_language_in_clickhouse(chdb_dir, ch_database):
    client = connect(f"chdb://{chdb_dir}", ch_database)
    assert "061_language.sql" in migrate(client)
    zh = DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=1, model="a", language="zh")
    unknown = DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=1, model="b")
    ClickHouseRowStore(client).insert([zh, unknown])
    assert dict(client.query("SELECT model, language FROM decisions").result_rows) == {"a": "zh", "b": ""}


def test_an_event_from_before_the_field_decodes_with_no_language():
    fields = {"type": "decision", **msgspec.structs.asdict(DecisionMade(event_id="e", decision_id="d", ts_ms=1))}
    del fields["language"]  # as a producer of the previous release wrote it
    assert decode_event(msgspec.msgpack.encode(fields)).language == ""
    assert decode_event(encode_event(DecisionMade(event_id="e", decision_id="d", ts_ms=1, language="fr"))).language == "fr"
