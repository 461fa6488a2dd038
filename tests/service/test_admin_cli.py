"""``turnout snapshot|ope|learn --once`` beside a running ``turnout up`` on the same data directory.

The embedded ClickHouse lets one process open a data directory; while ``turnout up`` holds it,
these commands go through its admin API (found from the note it leaves in the data directory),
and the others say in one line who holds the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from service.tenants import hash_key
from tests.processes import ROOT, Turnout, wait_until

ENV = {"TURNOUT_ROUTER__EMBEDDER": "hashing", "TURNOUT_SERVER__LOG_FORMAT": "text",
       "TURNOUT_ROUTER__THOMPSON_SAMPLES": "64", "TURNOUT_LEARNER__GRACE_S": "0"}  # fmt: skip
ADMIN_KEY = "an-admin-key"


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    clean.update(ENV, **(env or {}))
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=300,
                          env=clean, cwd=cwd)  # fmt: skip


def _traffic(url: str, n: int) -> None:
    for i in range(n):
        r = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "auto", "messages": [{"role": "user", "content": f"Write a Python function number {i}."}]})  # fmt: skip
        assert r.status_code == 200, r.text
        fb = httpx.post(url + "/v1/feedback", timeout=30,
                        json={"decision_id": r.headers["x-turnout-decision-id"], "rating": "up" if i % 2 else "down"})
        assert fb.status_code == 202, fb.text


def test_commands_reach_the_running_service_through_its_admin_api(tmp_path):
    data = tmp_path / "data"
    config = tmp_path / "turnout.toml"
    config.write_text(f'[server]\nadmin_key_sha256 = ["{hash_key(ADMIN_KEY)}"]\n')
    # a long learning interval: the cycles here are the ones the test asks for
    args = ["up", "--port", "0", "--data-dir", str(data), "--config", str(config), "--learn-interval-s", "3600"]
    with Turnout(args, ENV, tmp_path) as up:
        line = up.wait_for_line("listening on")
        url = line.split("listening on ")[1].split()[0]
        note = json.loads((data / "turnout.json").read_text())
        assert note["url"] == url and note["pid"] == up.proc.pid and note["command"] == "up"
        _traffic(url, 20)
        key = {"TURNOUT_ADMIN_KEY": ADMIN_KEY}
        d = ["--data-dir", str(data)]

        refused = _cli("snapshot", "list", *d, cwd=tmp_path)  # no admin key: one line, exit 2
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        (said,) = refused.stderr.splitlines()
        assert said.startswith(f"turnout: the admin API at {url} refused: missing admin key") and "TURNOUT_ADMIN_KEY" in said

        learned = _cli("learn", "--once", *d, cwd=tmp_path, env=key)
        assert learned.returncode == 0, learned.stderr
        assert learned.stdout.startswith("snapshot v2 published (events up to "), learned.stdout
        assert httpx.get(url + "/healthz").json()["snapshot_version"] == 2

        listed = _cli("snapshot", "list", *d, cwd=tmp_path, env=key)
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines()[1:]]
        assert [r[:2] for r in rows] == [["2", "1"], ["1", "0"]] and rows[0][-1] == "(live)" and rows[1][-1] == "initial"

        shown = _cli("snapshot", "show", "2", *d, cwd=tmp_path, env=key)
        assert shown.returncode == 0 and shown.stdout.startswith("snapshot v2 (parent v1), manual"), shown.stdout

        back = _cli("snapshot", "rollback", "1", *d, cwd=tmp_path, env=key)
        assert back.returncode == 0, back.stderr
        assert back.stdout.startswith("snapshot v3 routes as v1 did (parent v2)"), back.stdout
        # the service routes with it within one poll (here: at once, it published it itself)
        wait_until(lambda: httpx.get(url + "/healthz").json()["snapshot_version"] == 3, 30, "the rollback to be live", up)
        relisted = _cli("snapshot", "list", *d, cwd=tmp_path, env=key).stdout.splitlines()
        assert relisted[1].split()[:2] == ["3", "2"] and "rollback" in relisted[1] and relisted[1].endswith("(live)")

        ope = _cli("ope", *d, "--cost-weight", "5", "--json", "--min-ess", "0", cwd=tmp_path, env=key)
        assert ope.returncode == 0, ope.stderr
        report = json.loads(ope.stdout)
        assert report["n"] == 20 and {"ips", "snips", "dr"} <= set(report)

        # a command that needs the store itself says in one line who holds it and how to reach it
        migrate = _cli("migrate", *d, cwd=tmp_path)
        assert migrate.returncode == 2 and "Traceback" not in migrate.stderr
        assert migrate.stderr.splitlines() == [
            f"turnout: the embedded ClickHouse in {(data / 'clickhouse').resolve()} is in use by process "
            f"{up.proc.pid} (turnout up at {url}): stop it to run this command; turnout snapshot, ope and learn --once "
            f"reach it through its admin API by themselves (or --url {url})"
        ]
        assert up.stop() == 0
    assert not (data / "turnout.json").exists()  # the note goes with the process
    # with the service gone, the same command opens the store itself
    alone = _cli("snapshot", "list", "--data-dir", str(data), cwd=tmp_path)
    assert alone.returncode == 0 and alone.stdout.splitlines()[1].split()[:2] == ["3", "2"], alone.stderr


def test_a_note_left_by_a_crashed_service_is_ignored(tmp_path):
    data = tmp_path / "data"
    with Turnout(["up", "--port", "0", "--data-dir", str(data), "--learn-interval-s", "3600"], ENV, tmp_path) as up:
        up.wait_for_line("listening on")
        up.proc.kill()  # no stop: the note stays behind
        up.proc.wait(timeout=60)
    assert (data / "turnout.json").exists()
    listed = _cli("snapshot", "list", "--data-dir", str(data), cwd=ROOT)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].split()[:2] == ["1", "0"], listed.stderr
