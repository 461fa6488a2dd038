"""Health probes of the processes without an HTTP service: 200 when a check passes, 503 when it
fails or raises, 404 elsewhere; and ``turnout learn`` serving them for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from feedback.probe import ProbeServer
from tests.feedback.pipeline import wait_for
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def _broken() -> tuple[bool, dict]:
    raise RuntimeError("the check itself failed")


def test_probe_answers_each_check_and_names_the_paths_it_has():
    state = {"ok": True}
    probe = ProbeServer("127.0.0.1", 0, {"/healthz": lambda: (state["ok"], {"n": 3}), "/readyz": _broken}).start()
    base = f"http://127.0.0.1:{probe.port}"
    try:
        r = httpx.get(base + "/healthz")
        assert (r.status_code, r.json()) == (200, {"status": "ok", "n": 3})
        state["ok"] = False
        r = httpx.get(base + "/healthz?verbose=1")
        assert (r.status_code, r.json()) == (503, {"status": "failing", "n": 3})
        r = httpx.get(base + "/readyz")
        assert r.status_code == 503 and r.json()["error"] == "RuntimeError: the check itself failed"
        r = httpx.get(base + "/metrics")
        assert r.status_code == 404 and "/healthz, /readyz" in r.json()["error"]
    finally:
        probe.close()


@pytest.mark.timeout(180)
def test_turnout_learn_serves_probes_and_stops_on_sigterm(tmp_path):
    port = free_port()
    env = dict(os.environ, TURNOUT_STORAGE__DATA_DIR=str(tmp_path), TURNOUT_LEARNER__INTERVAL_S="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "learn", "--health-port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    seen: list[dict] = []

    def cycled() -> bool:
        try:
            r = httpx.get(base + "/readyz", timeout=2)
        except httpx.HTTPError:
            return False
        seen.append(r.json())
        return r.status_code == 200 and r.json()["last_success_age_s"] is not None

    try:
        wait_for(cycled, timeout_s=120, what="a learning cycle seen by the readiness probe")
        # no traffic: the cycle found nothing new and published nothing, the initial snapshot stays
        assert seen[-1]["snapshot_version"] == 1 and seen[-1]["consecutive_failures"] == 0
        health = httpx.get(base + "/healthz", timeout=2).json()
        assert health["status"] == "ok" and health["scheduler_running"] and health["consecutive_failures"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate()[0]
    assert f"probes on http://127.0.0.1:{port}/healthz" in out
