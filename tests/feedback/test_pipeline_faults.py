"""Faults on the Kafka path, with exact counts: the broker dies and comes back, the sink is killed -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from feedback.kafka import KafkaEventSink
from feedback.spill import SpillJournal
from tests.feedback.pipeline import events, wait_for
from tests.feedback.test_sink import committed
from tests.servers import free_port, serve

ROOT = Path(__file__).resolve().parents[2]


def kafka_settings(settings: Any, bootstrap: str, names: dict[str, str], spill_dir: Path) -> Any:
    """``settings`` with the Kafka event path on ``bootstrap``, tuned for quick tests."""
    ev = msgspec.structs.replace(
        settings.events, backend="kafka", bootstrap_servers=bootstrap, decisions_topic=names["decisions"],
        feedback_topic=names["feedback"], dlq_topic=names["dlq"], sink_group=names["group"],
        sink_session_timeout_ms=6000, sink_batch_s=0.1, send_timeout_s=2.0, retry_max_s=0.5, spill_dir=str(spill_dir),
    )  # fmt: skip
    return msgspec.structs.replace(settings, events=ev)


def _traffic(client: httpx.Client, n: int, start: int) -> list[str]:
    """``n`` answered requests, each with a thumbs-up; the decision ids the clients saw."""
    ids = []
    for i in range(start, start + n):
        r = client.post("/v1/chat/completions", json={"model": "auto", "messages": [
            {"role": "user", "content": f"How long should I boil pasta number {i}?"}]})  # fmt: skip
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-turnout-decision-id"])
        assert client.post("/v1/feedback", json={"decision_id": ids[-1], "rating": "up"}).status_code == 202
    return ids


def _stored(client: Any, table: str, column: str) -> list[str]:
    return [r[0] for r in client.query(f"SELECT {column} FROM {table}").result_rows]


def test_broker_outage_every_answered_decision_stored_exactly_once(settings, embedder, broker_factory,
                                                                   unique_topics, tmp_path):  # fmt: skip
    from service.runtime import Runtime

    broker = broker_factory()
    rt = Runtime(kafka_settings(settings, broker.bootstrap, unique_topics, tmp_path / "spill"), embedder=embedder,
                 sim_latency_scale=0.0, embedded_sink=True)  # fmt: skip
    rt.start_pipeline()
    ch = rt.client

    def count(table: str) -> int:
        return int(ch.query(f"SELECT uniqExact(event_id) FROM {table}").result_rows[0][0])

    try:
        with serve(rt.app) as url, httpx.Client(base_url=url, timeout=30) as client:
            seen = _traffic(client, 30, 0)
            wait_for(lambda: count("decisions") == 30 and count("feedback") == 30, what="phase 1 stored")

            broker.kill()  # the service keeps answering; its events go to the spill journal
            seen += _traffic(client, 30, 30)
            wait_for(lambda: rt.sink.stats()["spill_events"] == 60, what="60 events journaled")
            state = client.get("/v1/router/state").json()
            assert state["events"]["spill_events"] == 60 and state["events"]["spill_bytes"] > 0
            assert state["events"]["connected"] is False

            broker.start()  # a new broker on the same address: empty, no topics, no offsets
            seen += _traffic(client, 30, 60)
            wait_for(lambda: count("decisions") == 90 and count("feedback") == 90, timeout_s=90, what="all stored")
            assert rt.sink.flush(10.0)
            stats = rt.sink.stats()
            assert stats["spill_events"] == 0 and stats["lost"] == 0 and stats["replayed"] >= 60
    finally:
        rt.stop()
    decisions = _stored(ch, "decisions", "decision_id")
    assert sorted(decisions) == sorted(seen)  # every answered decision, each exactly once (raw rows)
    feedback = _stored(ch, "feedback", "decision_id")
    assert sorted(feedback) == sorted(seen)


def _env(chdb: Path, db: str, bootstrap: str, names: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TURNOUT_STORAGE__CLICKHOUSE_DSN": f"chdb://{chdb}", "TURNOUT_STORAGE__CLICKHOUSE_DATABASE": db,
        "TURNOUT_EVENTS__BOOTSTRAP_SERVERS": bootstrap, "TURNOUT_EVENTS__DECISIONS_TOPIC": names["decisions"],
        "TURNOUT_EVENTS__FEEDBACK_TOPIC": names["feedback"], "TURNOUT_EVENTS__DLQ_TOPIC": names["dlq"],
        "TURNOUT_EVENTS__SINK_GROUP": names["group"], "TURNOUT_EVENTS__SINK_SESSION_TIMEOUT_MS": "6000",
        "TURNOUT_EVENTS__SINK_BATCH_EVENTS": "100", "TURNOUT_EVENTS__SINK_BATCH_S": "0.1",
    })  # fmt: skip
    return env


def test_sink_killed_mid_batch_then_restarted_loses_and_duplicates_nothing(kafka_broker, unique_topics, tmp_path):
    names = unique_topics
    topics = (names["decisions"], names["feedback"])
    evs = events(300)
    producer = KafkaEventSink(kafka_broker.bootstrap, SpillJournal(tmp_path / "spill", 1 << 24),
                              decisions_topic=names["decisions"], feedback_topic=names["feedback"])  # fmt: skip
    for e in evs:
        producer.publish(e)
    assert producer.flush(30.0)
    producer.close()

    chdb, db, marker = tmp_path / "sink-chdb", "sinkdb", tmp_path / "hung"
    common = ["--chdb", str(chdb), "--db", db]
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.feedback.sink_proc", "run", *common, "--bootstrap", kafka_broker.bootstrap,
         "--topics", ",".join(topics), "--dlq", names["dlq"], "--group", names["group"], "--batch-events", "100",
         "--hang-on-insert", "3", "--marker", str(marker)], cwd=ROOT,
    )  # fmt: skip
    try:
        wait_for(lambda: marker.exists() or first.poll() is not None, timeout_s=90, what="the sink to hang mid-batch")
        assert first.poll() is None, "the first sink exited early"
        done_before = sum(o or 0 for o in committed(kafka_broker.bootstrap, names["group"], topics).values())
        assert 0 < done_before < 600  # two batches committed, the third half stored and not committed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    port = free_port()  # the restarted sink is the real `turnout sink`, with its health probes
    second = subprocess.Popen([sys.executable, "-m", "service.cli", "sink", "--health-port", str(port)], cwd=ROOT,
                              env=_env(chdb, db, kafka_broker.bootstrap, names))  # fmt: skip
    try:
        wait_for(lambda: sum(o or 0 for o in committed(kafka_broker.bootstrap, names["group"], topics).values()) == 600,
                 timeout_s=120, what="the restarted sink to commit all 600 records")  # fmt: skip
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert ready.status_code == 200 and ready.json()["joined"] and ready.json()["events"] > 0
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    dump = subprocess.run([sys.executable, "-m", "tests.feedback.sink_proc", "dump", *common], cwd=ROOT,
                          capture_output=True, text=True, check=True)  # fmt: skip
    stored = json.loads(dump.stdout.strip().splitlines()[-1])
    assert sorted(stored["decisions"]) == sorted(e.event_id for e in evs[0::2])  # raw rows: no duplicate
    assert sorted(stored["feedback"]) == sorted(e.event_id for e in evs[1::2])


@pytest.fixture(autouse=True)
def _quiet_kafka_logs(caplog):
    caplog.set_level("CRITICAL", logger="kafka")
