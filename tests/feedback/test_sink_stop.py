"""``turnout sink`` stopped by SIGTERM while events stream in: exit 0, and what it stored is exactly
what it committed; the next run stores the rest, each event once (raw rows, no de-duplicating read).

For the sink, "answered" is the offset it commits: a committed record is one the group will never
read again, so it must be in the store, and a stored one must be committed or be read again.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from typing import Callable, Iterator

from feedback.events import DecisionMade
from feedback.kafka import KafkaEventSink
from feedback.kafka_client import build_client
from feedback.spill import SpillJournal
from tests.feedback.pipeline import events
from tests.feedback.test_pipeline_faults import _env
from tests.processes import Turnout, dump_store, wait_until


class _Producer:
    """Publishes decision + feedback pairs to the topics until stopped; keeps what it published."""

    def __init__(self, bootstrap: str, names: dict[str, str], spill: object) -> None:
        self.sink = KafkaEventSink(bootstrap, SpillJournal(spill, 1 << 26), decisions_topic=names["decisions"],
                                   feedback_topic=names["feedback"])  # fmt: skip
        self.published: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for e in events(5):
                self.sink.publish(e)
                self.published.append(e)
            self._stop.wait(0.02)

    def __enter__(self) -> "_Producer":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert self.sink.flush(60.0), "the producer could not deliver what it published"
        self.sink.close()
        assert self.sink.stats()["spilled"] == 0


@contextlib.contextmanager
def _committed(bootstrap: str, group: str, topics: tuple[str, ...]) -> Iterator[Callable[[], int]]:
    """The group's committed offsets summed over the topics' partitions, read at the broker by one
    consumer kept for the whole test (polled often: one consumer rather than a new one per look)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = build_client(KafkaConsumer, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                     metadata_max_age_ms=500)  # fmt: skip

    def total() -> int:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or ())]
        return sum(c.committed(tp) or 0 for tp in parts)

    try:
        yield total
    finally:
        c.close(autocommit=False)


def test_sink_stopped_mid_stream_stores_exactly_what_it_committed(kafka_broker, unique_topics, tmp_path):
    names = unique_topics
    topics = (names["decisions"], names["feedback"])
    chdb, db = tmp_path / "sink-chdb", "sinkdb"
    env = _env(chdb, db, kafka_broker.bootstrap, names)

    def stored() -> tuple[list[str], list[str]]:
        rows = dump_store(f"chdb://{chdb}", db)
        return [d for (d,) in rows["decisions"]], [e for e, _ in rows["feedback"]]

    with _committed(kafka_broker.bootstrap, names["group"], topics) as offsets:
        with _Producer(kafka_broker.bootstrap, names, tmp_path / "spill") as producer:
            with Turnout(["sink", "--health-port", "0"], env, tmp_path) as sink:
                wait_until(lambda: offsets() >= 400, 120, "the sink to commit a few batches", sink)
                code = sink.stop(signal.SIGTERM)  # records keep arriving: a batch is in hand
        assert code == 0, sink.output
        at_stop, total = offsets(), len(producer.published)
        decisions, feedback = stored()
        assert len(decisions) + len(feedback) == at_stop, (len(decisions), len(feedback), at_stop)
        assert len(set(decisions)) == len(decisions) and len(set(feedback)) == len(feedback)
        said = re.search(r"stopped; (\d+) events stored", sink.output)
        assert said and int(said.group(1)) == at_stop, sink.output
        assert at_stop < total  # the stop came mid-stream

        with Turnout(["sink", "--health-port", "0"], env, tmp_path) as again:
            wait_until(lambda: offsets() == total, 120, "the next run to commit the rest", again)
            assert again.stop(signal.SIGTERM) == 0, again.output
    decisions, feedback = stored()
    assert sorted(decisions) == sorted(e.decision_id for e in producer.published if isinstance(e, DecisionMade))
    assert sorted(feedback) == sorted(e.event_id for e in producer.published if not isinstance(e, DecisionMade))
    print(f"sink, SIGTERM mid-stream: committed {at_stop} of {total} published, stored {at_stop}; exit {code}; "
          f"after the next run {len(decisions) + len(feedback)} stored of {total}")
