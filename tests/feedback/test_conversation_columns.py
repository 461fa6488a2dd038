"""Conversation columns (migration 060): stored in ClickHouse; a kept (sticky) turn teaches the
learner its model's quality but is left out of off-policy evaluation, as a rule's decision is."""

from __future__ import annotations

import msgspec
import numpy as np

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import DecisionMade, FeedbackGiven, decode_event, uuid7
from simulations.logs import read_decisions


def test_kept_turns_are_learned_from_and_left_out_of_ope(chdb_dir, ch_database):
    client = connect(f"chdb://{chdb_dir}", ch_database)
    assert "060_conversations.sql" in migrate(client)
    store = ClickHouseRowStore(client)
    now = store.now_ms()
    emb = np.array([1.0, 0.0], dtype="<f4").tobytes()
    conv = uuid7(now)
    fresh = DecisionMade(event_id=uuid7(now), decision_id=uuid7(now), ts_ms=now - 2, arm="a", model="a",
                         propensity=0.4, conversation_id=conv, turn=1, embedding=emb)  # fmt: skip
    kept = DecisionMade(event_id=uuid7(now), decision_id=uuid7(now), ts_ms=now - 1, arm="a", model="a",
                        propensity=1.0, conversation_id=conv, turn=2, sticky=True, embedding=emb)  # fmt: skip
    alone = DecisionMade(event_id=uuid7(now), decision_id=uuid7(now), ts_ms=now, arm="b", model="b", propensity=0.6)
    feedback = [FeedbackGiven(event_id=uuid7(now), decision_id=d.decision_id, ts_ms=now, reward=1.0)
                for d in (fresh, kept, alone)]  # fmt: skip
    store.insert([fresh, kept, alone, *feedback])
    rows = client.query("SELECT turn, sticky, conversation_id FROM decisions ORDER BY ts").result_rows
    assert rows == [(1, False, conv), (2, True, conv), (0, False, "")]
    # the learner counts the kept turn's feedback (quality of model a: two rewards)...
    stats = {(s.model, s.kind): s.count for s in store.reward_stats(0, now + 10**9)}
    assert stats == {("a", "explicit"): 2, ("b", "explicit"): 1}
    # ...off-policy evaluation does not: its propensity 1 is the conversation's, not the policy's
    logs = read_decisions(client, now - 60_000, now + 60_000)
    assert logs.decision_ids == (fresh.decision_id, alone.decision_id) and logs.skipped_pinned == 1


def test_an_event_from_before_the_fields_decodes_outside_any_conversation():
    fields = {"type": "decision", **msgspec.structs.asdict(DecisionMade(event_id="e", decision_id="d", ts_ms=1))}
    for name in ("conversation_id", "turn", "sticky"):
        del fields[name]  # as a producer of the previous release wrote it
    got = decode_event(msgspec.msgpack.encode(fields))
    assert (got.conversation_id, got.turn, got.sticky) == ("", 0, False)
