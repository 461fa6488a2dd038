"""``turnout up``, ``serve`` and ``learn`` stopped with work in flight: exit 0, nothing accepted lost.

Each test runs the real command in a subprocess, keeps clients busy against it (requests in flight,
simulated providers slowed down so answers take a while), signals it, and then counts: every
decision and thumb a client was answered is in the store (``up``) or in the spill journal
(``serve`` with the broker down) exactly once, and nothing else is. ``learn`` has no clients: its
count is the snapshots, a single line with none half-published.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest

from feedback.events import DecisionMade, decode_event
from feedback.spill import SpillJournal
from feedback.stop import StopSignal
from tests.processes import ROOT, Turnout, dump_store, wait_until
from tests.servers import free_port
from tests.service.traffic import Traffic

ENV = {
    "TURNOUT_ROUTER__EMBEDDER": "hashing",  # quick to start; the embedder plays no part in a stop
    "TURNOUT_SERVER__LOG_FORMAT": "text",
    "TURNOUT_SIMULATED__LATENCY_SCALE": "20",  # answers take 0.1 to 0.6 s: requests are in flight
    "TURNOUT_REREQUEST__ENABLED": "false",  # only the thumbs the clients give: counts stay exact
}


def _drained(url: str) -> list[object]:
    """Poll /readyz until it says 503 or the listener is gone; what it said, in order."""
    seen: list[object] = []

    def done() -> bool:
        try:
            seen.append(httpx.get(url + "/readyz", timeout=2).status_code)
        except httpx.HTTPError:
            seen.append("refused")
        return seen[-1] != 200

    wait_until(done, 60, "readiness to turn off")
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_up_stopped_mid_traffic_stores_exactly_what_was_answered(tmp_path, sig):
    port, data = free_port(), tmp_path / "data"
    env = {**ENV, "TURNOUT_SERVER__SHUTDOWN_DELAY_S": "2"}
    with Turnout(["up", "--port", str(port), "--data-dir", str(data), "--learn-interval-s", "1"], env, tmp_path) as up:
        up.wait_for_line("listening on")
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/readyz").json()["status"] == "ready"
        with Traffic(url) as traffic:
            wait_until(lambda: traffic.answered >= 40 and len(traffic.feedback) >= 20, 120, "answers", up)
            up.proc.send_signal(sig)
            readiness = _drained(url)
            code = up.proc.wait(timeout=120)
    assert code == 0, up.output
    assert readiness[-1] == 503, readiness  # readiness went off while the listener still answered
    assert "stopped; events: 0 not stored" in up.output
    store = dump_store(f"chdb://{(data / 'clickhouse').resolve()}", "turnout")
    assert sorted(d for (d,) in store["decisions"]) == sorted(traffic.decisions)  # raw rows: each exactly once
    assert sorted(e for e, kind in store["feedback"] if kind == "explicit") == sorted(traffic.feedback)
    assert [kind for _, kind in store["feedback"] if kind != "explicit"] == []
    print(f"up, {signal.Signals(sig).name}: answered {len(traffic.decisions)} decisions and {len(traffic.feedback)} "
          f"thumbs; stored {len(store['decisions'])} and {len(store['feedback'])}; exit {code}")


def test_serve_with_the_broker_down_journals_exactly_what_was_answered(tmp_path):
    port, data = free_port(), tmp_path / "data"
    env = {**ENV, "TURNOUT_EVENTS__BACKEND": "kafka", "TURNOUT_EVENTS__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
           "TURNOUT_EVENTS__SEND_TIMEOUT_S": "2", "TURNOUT_EVENTS__RETRY_MAX_S": "0.5"}  # fmt: skip
    with Turnout(["serve", "--port", str(port), "--data-dir", str(data)], env, tmp_path) as serve:
        serve.wait_for_line("listening on")
        with Traffic(f"http://127.0.0.1:{port}") as traffic:
            wait_until(lambda: traffic.answered >= 40 and len(traffic.feedback) >= 20, 120, "answers", serve)
            code = serve.stop(signal.SIGTERM)
    assert code == 0, serve.output
    journal = SpillJournal(data / "spill", 1 << 30)
    try:
        events = [decode_event(payload) for payload, _ in journal.read(1_000_000, 1 << 30)]
    finally:
        journal.close()
    decisions = [e.decision_id for e in events if isinstance(e, DecisionMade)]
    feedback = [e.event_id for e in events if not isinstance(e, DecisionMade)]
    assert sorted(decisions) == sorted(traffic.decisions)
    assert sorted(feedback) == sorted(traffic.feedback)
    total = len(traffic.decisions) + len(traffic.feedback)
    assert f"0 published to Kafka, {total} journaled in the spill journal, 0 lost" in serve.output
    print(f"serve, broker down, SIGTERM: answered {len(traffic.decisions)} decisions and {len(traffic.feedback)} "
          f"thumbs; journaled {len(decisions)} and {len(feedback)}; exit {code}")


def _seed_traffic(data, n: int) -> None:
    """``n`` answered and rated decisions in the store at ``data``, written from a process of its own
    (``turnout learn`` runs no sink: what it learns from was stored before it started)."""
    code = (
        "import sys, numpy as np\n"
        "from feedback.clickhouse import ClickHouseRowStore, connect\n"
        "from feedback.clickhouse_schema import migrate\n"
        "from feedback.events import DecisionMade, FeedbackGiven, uuid7\n"
        "c = connect(sys.argv[1], 'turnout')\n"
        "migrate(c)\n"
        "rng, events = np.random.default_rng(0), []\n"
        "for i in range(int(sys.argv[2])):\n"
        "    did, model = uuid7(), ('sim-mini', 'sim-chat')[i % 2]\n"
        "    emb = rng.normal(size=256).astype('<f4')\n"
        "    events.append(DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=0, clustering=1, cluster=0,\n"
        "        model=model, arm=model, embedding=(emb / np.linalg.norm(emb)).astype('<f4').tobytes()))\n"
        "    events.append(FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=0, reward=float(i % 3 > 0)))\n"
        "ClickHouseRowStore(c).insert(events)\n"
    )
    subprocess.run([sys.executable, "-c", code, f"chdb://{(data / 'clickhouse').resolve()}", str(n)],
                   capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)  # fmt: skip


def test_learn_stopped_between_or_during_cycles_leaves_a_single_line_of_snapshots(tmp_path):
    # a cycle publishes a snapshot only when something arrived: the stored traffic makes one, the
    # cycles after it find nothing new and publish nothing (the live snapshot stays)
    data = tmp_path / "data"
    data.mkdir()
    _seed_traffic(data, 40)
    args = ["learn", "--data-dir", str(data), "--interval-s", "0.2", "--health-port", "0"]
    with Turnout(args, ENV, tmp_path) as learn:
        probe = re.search(r"probes on (http://\S+)/healthz", learn.wait_for_line("probes on http://")).group(1)

        def version() -> int:
            r = httpx.get(probe + "/readyz", timeout=5)
            assert r.json()["stopping"] is False
            return int(r.json()["snapshot_version"])

        wait_until(lambda: version() >= 2, 120, "a learning cycle with the stored traffic", learn)
        wait_until(lambda: learn.output.count("nothing new since v2") >= 2, 120, "idle cycles", learn)
        code = learn.stop(signal.SIGTERM)
    assert code == 0, learn.output
    cycles, idle, last = map(int, re.search(r"stopped after (\d+) cycles that published a snapshot and (\d+) idle "
                                            r"\(last snapshot v(\d+)\)", learn.output).groups())  # fmt: skip
    snapshots = dump_store(f"chdb://{(data / 'clickhouse').resolve()}", "turnout")["snapshots"]
    assert [v for v, _, _ in snapshots] == list(range(1, last + 1))  # every published cycle saved, in one line
    assert [p for _, p, _ in snapshots[1:]] == list(range(1, last))
    assert snapshots[0][2] == "initial" and last == 2  # the traffic once; idle cycles published nothing
    assert cycles == 1 and idle >= 2  # the one that published v2, then the idle ones
    print(f"learn, SIGTERM: {cycles} cycle published, {idle} idle, snapshots v1..v{last} stored; exit {code}")


def test_stop_signal_sets_one_event_for_sigterm_and_sigint_and_turns_readiness_off():
    for sig in (signal.SIGTERM, signal.SIGINT):
        stop = StopSignal().install()
        try:
            ready = stop.gate(lambda: (True, {"batches": 3}))
            assert ready() == (True, {"batches": 3, "stopping": False})
            signal.raise_signal(sig)  # no KeyboardInterrupt, no exit: only the event
            assert stop.event.wait(10)
            signal.raise_signal(signal.SIGTERM)  # a second signal changes nothing
            assert stop.signal == sig
            assert ready() == (False, {"batches": 3, "stopping": True})
        finally:
            stop.uninstall()
