"""``turnout up`` with the store in a process of its own (``service.storage_process``, ``feedback.link``).

The serving process hands events to the storage process in batches and forgets a batch only
once it is stored. These tests break that hand-over where it can break and count: every decision
and thumb a client was answered is in the store exactly once (raw rows, no de-duplication at read).

- the storage process killed (SIGKILL) mid-traffic: it is started again, the batches it did not
  acknowledge are sent again, and the exactly-once insert drops what the killed one had stored;
- SIGTERM to the whole process group (what a terminal's Ctrl-C or ``kill -- -pgid`` does): the
  storage process waits for the serving process's last events before it closes the store;
- the storage process unreachable at a stop: the events go to the spill journal, and the next
  start sends them before anything new.
"""

from __future__ import annotations

import json
import os
import signal

import httpx

from feedback.clickhouse import ClickHouseSnapshotStore, connect
from feedback.clickhouse_schema import migrate
from feedback.link import LinkSink, StoreLink, journal_dir
from feedback.spill import SpillJournal
from service.settings import load_settings
from service.storage_process import _NewestSnapshot
from tests.feedback.pipeline import decision
from tests.processes import Turnout, dump_store, wait_until
from tests.servers import free_port
from tests.service.traffic import Traffic

ENV = {
    "TURNOUT_ROUTER__EMBEDDER": "hashing",
    "TURNOUT_SERVER__LOG_FORMAT": "text",
    "TURNOUT_SIMULATED__LATENCY_SCALE": "5",
    "TURNOUT_REREQUEST__ENABLED": "false",  # only the thumbs the clients give: counts stay exact
    "TURNOUT_EVENTS__INPROCESS_FLUSH_S": "0.2",
}


def _storage_pid(data) -> int:
    return json.loads((data / "turnout.json").read_text())["store_pid"]


def _check_store(data, traffic: Traffic) -> None:
    store = dump_store(f"chdb://{(data / 'clickhouse').resolve()}", "turnout")
    assert sorted(d for (d,) in store["decisions"]) == sorted(traffic.decisions)  # raw rows: each exactly once
    assert sorted(e for e, kind in store["feedback"] if kind == "explicit") == sorted(traffic.feedback)


def test_storage_process_killed_mid_traffic_is_restarted_and_nothing_is_lost_or_doubled(tmp_path):
    port, data = free_port(), tmp_path / "data"
    with Turnout(["up", "--port", str(port), "--data-dir", str(data), "--learn-interval-s", "1"], ENV, tmp_path) as up:
        up.wait_for_line("listening on")
        url = f"http://127.0.0.1:{port}"
        first = _storage_pid(data)
        assert first != up.proc.pid  # the store is held by another process than the one serving
        with Traffic(url) as traffic:
            wait_until(lambda: traffic.answered >= 30, 120, "answers", up)
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: "starting it again" in up.output, 60, "the storage process to be restarted", up)
            n = traffic.answered
            wait_until(lambda: traffic.answered >= n + 30, 120, "answers after the restart", up)
            # the feedback API reads an old decision through the new storage process
            r = httpx.post(url + "/v1/feedback", json={"decision_id": traffic.decisions[0], "rating": "down"})
            assert r.status_code == 202, r.text
            traffic.feedback.append(r.json()["event_id"])
        code = up.stop(signal.SIGTERM)
    assert code == 0, up.output
    assert "stopped; events: 0 not stored" in up.output, up.output
    _check_store(data, traffic)


def test_sigterm_to_the_process_group_loses_nothing(tmp_path):
    port, data = free_port(), tmp_path / "data"
    env = {**ENV, "TURNOUT_SERVER__SHUTDOWN_DELAY_S": "1"}
    args = ["up", "--port", str(port), "--data-dir", str(data), "--learn-interval-s", "1"]
    with Turnout(args, env, tmp_path, session=True) as up:
        up.wait_for_line("listening on")
        storage = _storage_pid(data)
        with Traffic(f"http://127.0.0.1:{port}") as traffic:
            wait_until(lambda: traffic.answered >= 40 and len(traffic.feedback) >= 20, 120, "answers", up)
            os.killpg(up.proc.pid, signal.SIGTERM)  # the serving and the storage process alike
            code = up.proc.wait(timeout=120)
    assert code == 0, up.output
    assert "stopped; events: 0 not stored" in up.output, up.output
    wait_until(lambda: not os.path.exists(f"/proc/{storage}"), 30, "the storage process to exit")
    _check_store(data, traffic)


def test_events_the_storage_process_did_not_take_are_journaled_and_sent_at_the_next_start(tmp_path):
    from service.storage_process import StorageProcess

    settings = load_settings(None, {"TURNOUT_STORAGE__DATA_DIR": str(tmp_path / "data"),
                                    "TURNOUT_ROUTER__EMBEDDER": "hashing"})  # fmt: skip
    spill = journal_dir(settings.events.spill_path(settings.storage.data_dir), 0)
    down = LinkSink(StoreLink(str(tmp_path / "nobody.sock"), b"key", timeout_s=1), SpillJournal(spill, 1 << 20),
                    flush_interval_s=0.05, retry_max_s=0.1)  # fmt: skip
    events = [decision(i) for i in range(6)]
    for e in events[:5]:
        down.publish(e)
    down.close(timeout_s=0.5)
    assert down.journaled == 5 and down.stored == 0
    storage = StorageProcess(settings).start()
    try:
        link = storage.link()
        sink = LinkSink(link, SpillJournal(spill, 1 << 20), flush_interval_s=0.05)
        sink.publish(events[5])
        assert sink.flush(60)
        ids = sorted(r[0] for r in link.call("query", "SELECT decision_id FROM decisions", None))
        assert ids == sorted(e.decision_id for e in events)
        sink.publish(events[0])  # sent again (a lost answer): stored once all the same
        assert sink.flush(60)
        assert link.call("query", "SELECT count() FROM decisions", None) == [(6,)]
        sink.close()
        link.close()
    finally:
        storage.stop()


def test_up_on_kafka_runs_the_sink_in_the_storage_process(tmp_path, kafka_broker, unique_topics):
    """``[events] backend = "kafka"``: the serving process publishes, the storage process's sink
    stores them, each once (what it had not read at the stop stays in Kafka for the next start)."""
    port, data, names = free_port(), tmp_path / "data", unique_topics
    env = {**ENV, "TURNOUT_EVENTS__BACKEND": "kafka", "TURNOUT_EVENTS__BOOTSTRAP_SERVERS": kafka_broker.bootstrap,
           "TURNOUT_EVENTS__DECISIONS_TOPIC": names["decisions"], "TURNOUT_EVENTS__FEEDBACK_TOPIC": names["feedback"],
           "TURNOUT_EVENTS__DLQ_TOPIC": names["dlq"], "TURNOUT_EVENTS__SINK_GROUP": names["group"],
           "TURNOUT_EVENTS__SINK_BATCH_S": "0.1"}  # fmt: skip
    with Turnout(["up", "--port", str(port), "--data-dir", str(data), "--learn-interval-s", "1"], env, tmp_path) as up:
        up.wait_for_line("listening on")
        url = f"http://127.0.0.1:{port}"
        with Traffic(url) as traffic:
            wait_until(lambda: traffic.answered >= 30 and len(traffic.feedback) >= 15, 120, "answers", up)
        # stored by the storage process's sink, read back through it (the dashboard's history)
        wait_until(lambda: httpx.get(url + "/v1/router/history").json()["decisions"] == len(traffic.decisions), 60,
                   "every decision stored", up)  # fmt: skip
        code = up.stop(signal.SIGTERM)
    assert code == 0, up.output
    assert ", 0 lost" in up.output, up.output
    store = dump_store(f"chdb://{(data / 'clickhouse').resolve()}", "turnout")
    assert sorted(d for (d,) in store["decisions"]) == sorted(traffic.decisions)  # raw rows: each exactly once
    thumbs = [e for e, kind in store["feedback"] if kind == "explicit"]
    assert len(thumbs) == len(set(thumbs)) and set(thumbs) <= set(traffic.feedback)


class _Counting:
    """A ClickHouse client that counts the queries it was asked."""

    def __init__(self, client) -> None:
        self._client, self.queries = client, 0

    def query(self, *args, **kwargs):
        self.queries += 1
        return self._client.query(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_the_newest_snapshot_version_is_read_from_the_store_only_after_a_write(chdb_dir, ch_database):
    client = _Counting(connect(f"chdb://{chdb_dir}", ch_database))
    migrate(client)
    client.queries = 0
    store = ClickHouseSnapshotStore(client)
    newest = _NewestSnapshot(store)
    assert newest.version() == 0 and client.queries == 1  # nothing stored yet
    assert newest.version() == 0 and client.queries == 1  # asked again: no query
    store.save(1, 0, 1_000, "initial", b"one")  # this process's learner
    assert newest.version() == 1 and client.queries == 2
    assert newest.version() == 1 and client.queries == 2
    ClickHouseSnapshotStore(client).save(2, 1, 2_000, "rollback", b"two")  # a serving process, through the link
    assert newest.version() == 1  # not told yet
    newest.written()
    assert newest.version() == 2 and client.queries == 3
