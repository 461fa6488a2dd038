"""What a newcomer does: ``turnout up`` in its own process, then the openai SDK against it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.servers import free_port


@pytest.fixture
def turnout_up(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "up", "--port", str(port), "--data-dir", str(tmp_path / "data"),
         "--learn-interval-s", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("turnout up did not start:\n" + (proc.stdout.read() if proc.stdout else ""))
        time.sleep(0.2)
    yield url, proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_turnout_up_serves_learns_and_says_it_is_simulated(turnout_up, tmp_path):
    url, proc = turnout_up
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Give me a recipe for banana bread."}])
    answer = raw.parse()
    assert answer.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="auto", stream=True, messages=[{"role": "user", "content": "Prove that there are infinitely many primes."}])
        if c.choices
    )  # fmt: skip
    assert streamed
    decision = raw.headers["x-turnout-decision-id"]
    assert httpx.post(url + "/v1/feedback", json={"decision_id": decision, "rating": "up"}).status_code == 202
    before = httpx.get(url + "/v1/router/state").json()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the scheduled learner picks the feedback up by itself
        state = httpx.get(url + "/v1/router/state").json()
        evidence = sum(m["evidence"] for c in state["clusters"] for m in c["models"].values())
        if state["version"] > before["version"] and evidence >= 1:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no learning cycle took the feedback in: {state}")
    assert (tmp_path / "data" / "clickhouse").is_dir()
    metrics = httpx.get(url + "/metrics").text  # what the start built is set aside from garbage collection
    frozen = next(line for line in metrics.splitlines() if line.startswith("turnout_gc_frozen_objects "))
    assert float(frozen.split()[1]) > 10_000, frozen
    assert 'turnout_gc_collections{generation="2"}' in metrics
    proc.terminate()  # SIGTERM, as Docker and Kubernetes stop it: a clean stop (tests/service/test_stop.py counts)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "simulated model pool" in out and "turnout: stopped; events: 0 not stored" in out
