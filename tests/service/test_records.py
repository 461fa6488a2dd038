"""Failed attempts in ClickHouse: a row of their own, linked to the request's decision, and the
learner's join (feedback -> decision -> model) lands on the model that failed."""

from __future__ import annotations

import numpy as np

from feedback.clickhouse import ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.events import FeedbackGiven, uuid7
from service.decisions import DecisionIndex
from service.failover import Attempt
from service.metrics import Registry
from service.records import Recorder, Routed, Turn
from service.routing import RouteChoice
from service.schemas import ChatRequest, Message
from service.tenants import ANONYMOUS


class _Sink:
    def __init__(self) -> None:
        self.events: list = []

    def publish(self, event) -> None:
        self.events.append(event)


def test_attempt_records_are_stored_linked_and_carry_the_negative_evidence(chdb_dir, ch_database):
    client = connect(f"chdb://{chdb_dir}", ch_database)
    migrate(client)
    rows = ClickHouseRowStore(client)
    sink = _Sink()
    rec = Recorder(sink, DecisionIndex(rows, 100), Registry(), store_prompts=False)
    req = ChatRequest(model="auto", messages=[Message(role="user", content="hello")])
    choice = RouteChoice(cluster=1, margin=0.2, arm=0, propensity=0.7, propensities=(0.7, 0.3), fallback_order=(1,),
                         expected_cost_usd=0.001)  # fmt: skip
    routed = Routed(choice, np.ones(4, dtype=np.float32) / 2, "hello", 3, "auto", ("a", "b"), 5, 2, "a")
    decision_id = uuid7()
    turn = Turn(req, ANONYMOUS, routed, decision_id, b"", started=0.0)
    rec.attempts(turn, [Attempt("a", "HTTP 500", 500, 12.0)])
    rec.outcome(turn, model="b", fallbacks=1, errors=("a: HTTP 500",))
    rows.insert(sink.events)
    got = client.query(
        "SELECT policy, arm, propensity, model, status, parent_decision_id, snapshot_version, clustering "
        "FROM decisions ORDER BY policy"
    ).result_rows
    assert got == [("auto", "a", 0.7, "b", "ok", "", 5, 2), ("failover", "a", 1.0, "a", "error", decision_id, 5, 2)]
    feedback = [e for e in sink.events if isinstance(e, FeedbackGiven)]
    assert [(f.kind, f.reward) for f in feedback] == [("upstream_error", 0.0)]
    ref = rows.find_decision(feedback[0].decision_id)
    assert ref is not None and ref.model == "a"  # the failure counts against the model that failed
