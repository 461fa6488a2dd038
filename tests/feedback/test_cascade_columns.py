"""``escalated`` and ``gate`` (migration 071): a cascade's records in ClickHouse, summed per cluster
into the escalations the learner reads, alike in the memory store; old events decode."""

from __future__ import annotations

import msgspec
import pytest

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, decode_event, uuid7
from feedback.memory import MemoryRowStore


def _events() -> list[DecisionMade]:
    def d(model: str, escalated: bool, policy: str = "auto", parent: str = "") -> DecisionMade:
        return DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=1, model=model, arm="cb", policy=policy,
                            clustering=1, cluster=0, escalated=escalated, gate="empty" if escalated else "pass",
                            cost_usd=0.01, parent_decision_id=parent)  # fmt: skip

    return [d("cb", True), d("cb", True), d("cb", False), d("c", False, "cascade", "p"), d("a", False)]


@pytest.mark.parametrize("store", ["memory", "clickhouse"])
def test_escalations_are_summed_per_cluster_and_model(store, chdb_dir, ch_database):
    if store == "clickhouse":
        client = connect(f"chdb://{chdb_dir}", ch_database)
        assert "071_cascades.sql" in migrate(client)
        rows = ClickHouseRowStore(client)
    else:
        rows = MemoryRowStore()
    rows.insert(_events())
    stats = {(s.model, s.policy): s for s in rows.decision_stats(0, 2**62)}
    assert stats[("cb", "auto")].decisions == 3 and stats[("cb", "auto")].escalations == 2.0
    assert stats[("a", "auto")].escalations == 0.0 and stats[("c", "cascade")].escalations == 0.0
    if store == "clickhouse":
        got = client.query("SELECT gate, count() FROM decisions GROUP BY gate ORDER BY gate").result_rows
        assert got == [("empty", 2), ("pass", 3)]


def test_an_event_from_before_the_fields_decodes_unescalated():
    fields = {"type": "decision", **msgspec.structs.asdict(DecisionMade(event_id="e", decision_id="d", ts_ms=1))}
    del fields["escalated"], fields["gate"]
    old = decode_event(msgspec.msgpack.encode(fields))
    assert old.escalated is False and old.gate == ""
