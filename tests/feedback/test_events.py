"""Event codecs round-trip; ids are UUIDv7 and sort by time; the in-process bus loses nothing."""

from __future__ import annotations

import threading
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.events import DecisionMade, FeedbackGiven, decode_event, encode_event, uuid7
from feedback.inprocess import InProcessBus
from feedback.memory import MemoryRowStore


@settings(max_examples=60, deadline=None)
@given(
    cluster=st.integers(0, 1000), margin=st.floats(-1, 1), prop=st.floats(0, 1), model=st.text(max_size=20),
    emb=st.binary(max_size=64), cost=st.floats(0, 10), user=st.text(max_size=10),
)
def test_decision_round_trip(cluster, margin, prop, model, emb, cost, user):
    ev = DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=1, cluster=cluster, margin=margin,
                      propensity=prop, model=model, embedding=emb, cost_usd=cost, user=user)  # fmt: skip
    assert decode_event(encode_event(ev)) == ev


@given(reward=st.floats(0, 1), kind=st.sampled_from(["explicit", "re_request", "upstream_error"]))
def test_feedback_round_trip(reward, kind):
    ev = FeedbackGiven(event_id=uuid7(), decision_id="d", ts_ms=2, reward=reward, kind=kind)
    assert decode_event(encode_event(ev)) == ev


def test_uuid7_is_version_7_and_time_ordered():
    a, b = uuid7(1_000), uuid7(2_000)
    assert uuid.UUID(a).version == 7 and uuid.UUID(a).variant == uuid.RFC_4122
    assert a < b


class _FlakyStore(MemoryRowStore):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    def insert(self, events):
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("store down")
        super().insert(events)


def test_bus_loses_nothing_when_the_store_fails_for_a_while():
    store = _FlakyStore(failures=3)
    bus = InProcessBus(store, max_batch=50, flush_interval_s=0.01)
    ids = []

    def produce(offset):
        for i in range(500):
            ev = FeedbackGiven(event_id=uuid7(), decision_id=f"{offset}-{i}", ts_ms=1, reward=1.0)
            ids.append(ev.event_id)
            bus.publish(ev)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert bus.flush(timeout_s=30)
    bus.close()
    assert store.failures == 0 and bus.failures == 3
    assert store.count("feedback") == 2000 == len(set(ids))
