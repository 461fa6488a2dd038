"""A rolling restart of ``turnout serve`` through a broker outage, with a real broker and sink.

One service replica keeps its data directory (its spill journal) across restarts, as a pod's
volume does. Clients keep requests in flight throughout. The replica is restarted with SIGTERM
while the broker is unreachable (its events go to the journal), comes back while the broker is
still away, the broker returns, and the replica is restarted again. Every decision and thumb a
client was answered must reach ClickHouse through Kafka and the sink exactly once: raw rows.
"""

from __future__ import annotations

import contextlib
import re
import signal
from typing import Iterator

import httpx
import pytest

from feedback.clickhouse import ClickHouseDeadLetterStore, ClickHouseRowStore, connect
from feedback.clickhouse_schema import prepare
from feedback.sink import Sink
from tests.feedback.pipeline import running
from tests.processes import Turnout, wait_until
from tests.servers import free_port
from tests.service.traffic import Traffic

ENV = {
    "TURNOUT_ROUTER__EMBEDDER": "hashing",
    "TURNOUT_SERVER__LOG_FORMAT": "text",
    "TURNOUT_SIMULATED__LATENCY_SCALE": "10",  # answers take 50 to 300 ms: requests are in flight at each stop
    "TURNOUT_REREQUEST__ENABLED": "false",
    "TURNOUT_EVENTS__BACKEND": "kafka",
    "TURNOUT_EVENTS__SEND_TIMEOUT_S": "2",
    "TURNOUT_EVENTS__RETRY_MAX_S": "0.5",
}


class _Answers:
    """What clients were answered, over every replica they talked to."""

    def __init__(self) -> None:
        self.decisions: list[str] = []
        self.feedback: list[str] = []

    def add(self, traffic: Traffic) -> None:
        self.decisions += traffic.decisions
        self.feedback += traffic.feedback


@contextlib.contextmanager
def _replica(data, env: dict[str, str], cwd) -> Iterator[tuple[str, Turnout]]:
    port = free_port()
    with Turnout(["serve", "--port", str(port), "--data-dir", str(data)], env, cwd) as proc:
        proc.wait_for_line("listening on")
        yield f"http://127.0.0.1:{port}", proc


def _more(traffic: Traffic, n: int, proc: Turnout) -> None:
    want = traffic.answered + n
    wait_until(lambda: traffic.answered >= want and len(traffic.feedback) >= n // 2, 120, f"{n} more answers", proc)


def _stop(proc: Turnout) -> str:
    """SIGTERM; the replica must exit 0; its last line (what became of the events)."""
    code = proc.stop(signal.SIGTERM)
    assert code == 0, proc.output
    return re.search(r"turnout: stopped; events: (.*)", proc.output).group(1)


def test_rolling_restart_while_the_broker_is_away_stores_every_answer_exactly_once(
    settings, broker_factory, unique_topics, tmp_path
):
    names = unique_topics
    broker = broker_factory()
    ch = connect(settings.storage.dsn(), settings.storage.clickhouse_database)
    prepare(ch, settings.storage.retention())
    sink = Sink(broker.bootstrap, ClickHouseRowStore(ch), ClickHouseDeadLetterStore(ch),
                topics=(names["decisions"], names["feedback"]), dlq_topic=names["dlq"], group_id=names["group"],
                batch_events=500, batch_s=0.1, session_timeout_ms=6000, retry_max_s=0.5)  # fmt: skip
    env = {**ENV, "TURNOUT_EVENTS__BOOTSTRAP_SERVERS": broker.bootstrap, "TURNOUT_EVENTS__DECISIONS_TOPIC":
           names["decisions"], "TURNOUT_EVENTS__FEEDBACK_TOPIC": names["feedback"]}  # fmt: skip
    data = tmp_path / "replica"  # the replica's volume: its spill journal outlives each process
    answers = _Answers()

    def stored(table: str) -> int:
        return int(ch.query(f"SELECT uniqExact(event_id) FROM {table}").result_rows[0][0])

    said = []
    with running(sink):
        with _replica(data, env, tmp_path) as (url, first):
            with Traffic(url) as traffic:
                _more(traffic, 30, first)
            answers.add(traffic)
            # Tansu keeps records in memory only: what the old broker held must be stored before it dies
            wait_until(lambda: stored("decisions") == len(answers.decisions), 120, "the first answers stored")
            broker.kill()
            with Traffic(url) as traffic:
                _more(traffic, 30, first)  # journaled: the broker is unreachable
                said.append(_stop(first))  # SIGTERM with requests in flight, the broker still away
            answers.add(traffic)
        with _replica(data, env, tmp_path) as (url, second):
            with Traffic(url) as traffic:
                _more(traffic, 30, second)  # still away
                broker.start()  # back, empty (a new log): the journal replays into it
                _more(traffic, 30, second)
                said.append(_stop(second))  # SIGTERM with requests in flight, the broker reachable
            answers.add(traffic)
        with _replica(data, env, tmp_path) as (url, third):  # whatever is left in the journal is replayed

            def journal_empty() -> bool:
                return httpx.get(url + "/v1/router/state", timeout=5).json()["events"]["spill_events"] == 0

            wait_until(journal_empty, 120, "the journal replayed", third)
            said.append(_stop(third))
        everything = (len(answers.decisions), len(answers.feedback))
        wait_until(lambda: (stored("decisions"), stored("feedback")) == everything, 180, "every answer stored")
    decisions = [r[0] for r in ch.query("SELECT decision_id FROM decisions").result_rows]
    assert sorted(decisions) == sorted(answers.decisions)  # each answered decision exactly once (raw rows)
    feedback = [r[0] for r in ch.query("SELECT event_id FROM feedback").result_rows]
    assert sorted(feedback) == sorted(answers.feedback)
    assert re.match(r"\d+ published to Kafka, [1-9]\d* journaled in the spill journal, 0 lost", said[0]), said
    assert all(s.endswith(", 0 lost") for s in said), said
    print(f"rolling restart: answered {len(answers.decisions)} decisions and {len(answers.feedback)} thumbs over three "
          f"replica processes; stored {len(decisions)} and {len(feedback)} raw rows; the replicas said: {said}")


@pytest.fixture(autouse=True)
def _quiet_kafka_logs(caplog):
    caplog.set_level("CRITICAL", logger="kafka")
