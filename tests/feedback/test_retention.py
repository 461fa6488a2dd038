"""Retention: a configurable TTL per table, applied idempotently, that really drops old rows."""

from __future__ import annotations

import time

import pytest

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import apply_retention, migrate
from feedback.events import DecisionMade, FeedbackGiven, uuid7
from service.settings import ConfigError, load_settings

DAY_MS = 86_400_000


def test_ttls_are_set_changed_removed_and_drop_old_rows(chdb_dir, ch_database):
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    # the migration's defaults: dead letters 30 days, events forever
    assert apply_retention(client, {"decisions": 0, "feedback": 0, "dead_letters": 30}) == {}
    now = int(time.time() * 1000)
    old, new = now - 10 * DAY_MS, now - DAY_MS
    ClickHouseRowStore(client).insert([
        DecisionMade(event_id=uuid7(old), decision_id=uuid7(old), ts_ms=old, model="a", arm="a"),
        DecisionMade(event_id=uuid7(new), decision_id=uuid7(new), ts_ms=new, model="a", arm="a"),
        FeedbackGiven(event_id=uuid7(old), decision_id="x", ts_ms=old, reward=1.0),
    ])  # fmt: skip
    assert apply_retention(client, {"decisions": 7, "feedback": 7, "dead_letters": 90}) == {
        "decisions": 7, "feedback": 7, "dead_letters": 90}  # fmt: skip
    assert apply_retention(client, {"decisions": 7, "feedback": 7, "dead_letters": 90}) == {}  # idempotent
    for table in ("decisions", "feedback"):
        client.command(f"OPTIMIZE TABLE {table} FINAL")  # a merge applies the TTL now rather than later
    ts = [r[0] for r in client.query("SELECT toUnixTimestamp64Milli(ts) FROM decisions").result_rows]
    assert ts == [new]  # 10 days old: gone; 1 day old: kept
    assert client.query("SELECT count() FROM feedback").result_rows[0][0] == 0
    assert apply_retention(client, {"decisions": 0}) == {"decisions": 0}  # back to forever
    ddl = client.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                       "AND name = 'decisions'").result_rows[0][0]  # fmt: skip
    assert " TTL " not in ddl
    with pytest.raises(ValueError, match="retention for feedback"):
        apply_retention(client, {"feedback": -1})


def test_a_negative_retention_names_the_key(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text("[storage]\nretention_days = -3\n")
    with pytest.raises(ConfigError, match=r"storage\.retention_days must be >= 0"):
        load_settings(path, {})
    settings = load_settings(None, {"TURNOUT_STORAGE__RETENTION_DAYS": "14"})
    assert settings.storage.retention() == {"decisions": 14, "feedback": 14, "dead_letters": 30}
