"""``turnout up --workers 2``: two serving processes on one port (``service.workers``).

- the same requests on the same snapshot: two workers log exactly the propensities (and clusters)
  one worker logs, and ``/metrics`` on either worker counts the requests of both;
- a SIGTERM to the whole process group mid-traffic: every decision and thumb a client was
  answered is stored exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.processes import ROOT, Turnout, dump_store, wait_until
from tests.servers import free_port
from tests.service.traffic import Traffic

ENV = {
    "TURNOUT_ROUTER__EMBEDDER": "hashing",
    "TURNOUT_SERVER__LOG_FORMAT": "text",
    "TURNOUT_SIMULATED__LATENCY_SCALE": "5",
    "TURNOUT_REREQUEST__ENABLED": "false",
    "TURNOUT_EVENTS__INPROCESS_FLUSH_S": "0.2",
}
PROMPTS = [f"Question {i}: how do I {topic}?" for i, topic in enumerate(
    ["sort a list in Python", "bake bread", "plan a trip to Oslo", "solve 2x + 3 = 7", "write a haiku",
     "fix a flat tyre", "learn French", "price a bond"])]  # fmt: skip


def _decisions(data: Path) -> list[tuple[str, str, int, int, float]]:
    """(prompt_hash, arm, snapshot_version, cluster, propensity) of every stored decision."""
    code = (
        "import json, sys\n"
        "from feedback.clickhouse import connect\n"
        "c = connect(sys.argv[1], 'turnout')\n"
        "print(json.dumps([list(r) for r in c.query('SELECT prompt_hash, arm, snapshot_version, cluster, propensity '\n"
        "                                         'FROM decisions').result_rows]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, f"chdb://{(data / 'clickhouse').resolve()}"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)  # fmt: skip
    return [tuple(r) for r in json.loads(done.stdout.strip().splitlines()[-1])]


def _run(tmp: Path, workers: int, rounds: int) -> tuple[list[tuple], list[float]]:
    port, data = free_port(), tmp / f"data-{workers}"
    args = ["up", "--port", str(port), "--data-dir", str(data), "--learn-interval-s", "3600", "--workers", str(workers)]
    with Turnout(args, ENV, tmp, session=True) as up:
        up.wait_for_line("listening on")
        url = f"http://127.0.0.1:{port}"
        if workers > 1:  # the supervisor's children: the storage process and the workers
            children = Path(f"/proc/{up.proc.pid}/task/{up.proc.pid}/children").read_text().split()
            assert len(children) >= workers + 1, children
        for _ in range(rounds):
            for p in PROMPTS:  # a new connection each: the kernel spreads them over the workers
                r = httpx.post(url + "/v1/chat/completions",
                               json={"model": "auto", "messages": [{"role": "user", "content": p}]})  # fmt: skip
                assert r.status_code == 200, r.text
        n = rounds * len(PROMPTS)

        def counted() -> list[float]:
            text = httpx.get(url + "/metrics").text
            return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("turnout_requests_total")]

        # whichever worker answers, it counts all (the other's counts at most a second old)
        wait_until(lambda: all(sum(counted()) == n for _ in range(10)), 30, "/metrics on both to count all", up)
        scrapes = [sum(counted()) for _ in range(10)]
        os.killpg(up.proc.pid, signal.SIGTERM)
        assert up.proc.wait(timeout=120) == 0, up.output
    return _decisions(data), scrapes


def test_two_workers_log_the_propensities_one_worker_logs(tmp_path):
    one, _ = _run(tmp_path, 1, 6)
    two, scrapes = _run(tmp_path, 2, 6)
    assert len(one) == len(two) == 6 * len(PROMPTS)
    assert scrapes == [6.0 * len(PROMPTS)] * 10
    assert {d[2] for d in one} == {d[2] for d in two} == {1}  # one snapshot throughout
    # per prompt, arm: the cluster and the propensity logged, identical to the last bit
    by_arm_one = {(h, arm): (cluster, prop) for h, arm, _, cluster, prop in one}
    by_arm_two = {(h, arm): (cluster, prop) for h, arm, _, cluster, prop in two}
    shared = by_arm_one.keys() & by_arm_two.keys()
    assert len(shared) >= len(PROMPTS)
    assert {k: by_arm_one[k] for k in shared} == {k: by_arm_two[k] for k in shared}
    for rows in (one, two):  # and within each run a (prompt, arm) has one propensity, whichever worker
        assert len({(h, a, prop) for h, a, _, _, prop in rows}) == len({(h, a) for h, a, _, _, _ in rows})


def test_sigterm_to_a_group_of_two_workers_loses_nothing(tmp_path):
    port, data = free_port(), tmp_path / "data"
    env = {**ENV, "TURNOUT_SERVER__SHUTDOWN_DELAY_S": "1"}
    args = ["up", "--port", str(port), "--data-dir", str(data), "--learn-interval-s", "1", "--workers", "2"]
    with Turnout(args, env, tmp_path, session=True) as up:
        up.wait_for_line("listening on")
        with Traffic(f"http://127.0.0.1:{port}", clients=6) as traffic:
            wait_until(lambda: traffic.answered >= 60 and len(traffic.feedback) >= 30, 120, "answers", up)
            os.killpg(up.proc.pid, signal.SIGTERM)
            code = up.proc.wait(timeout=180)
    assert code == 0, up.output
    assert "stopped; events: 0 not stored" in up.output, up.output
    store = dump_store(f"chdb://{(data / 'clickhouse').resolve()}", "turnout")
    assert sorted(d for (d,) in store["decisions"]) == sorted(traffic.decisions)  # raw rows: each exactly once
    assert sorted(e for e, kind in store["feedback"] if kind == "explicit") == sorted(traffic.feedback)


def test_serve_with_workers_on_the_embedded_store_is_one_line(tmp_path):
    """Each worker of ``serve`` would open the store: one line and exit 2, nothing started."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    done = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--data-dir", str(tmp_path / "d"),
                           "--workers", "2", "--port", "0"], capture_output=True, text=True, cwd=ROOT, env=clean,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        'turnout: --workers needs the store outside the serving processes: turnout up with [processes] storage = '
        '"process" on the embedded store, or a ClickHouse server ([storage] clickhouse_dsn)']
    assert not (tmp_path / "d").exists()
