"""Routing overhead: the in-process decision, and the HTTP round trip at a fixed request rate.

    python -m bench.overhead [--rate 200] [--duration-s 20] [--decisions 20000]

1. Decision in-process: embed (wordllama) + nearest centroid + Thompson sample with its
   propensity, through the service's own ``ChatService.route`` on a loaded snapshot.
2. HTTP: ``turnout up`` in its own process on a zero-latency simulated pool (so the whole round
   trip is Turnout's overhead: parsing, routing, answering, emitting the event), driven open-loop
   at a fixed rate with latency counted from each request's due time. Beside it, in the same
   run, the floor: ``bench.floor_app`` (a bare ASGI answer on the same uvicorn stack) under the
   same generator, which is what the machine, the loopback and the generator cost by themselves
   (on a shared 2-core VM its p99 alone is several milliseconds).
Targets on a 2-core machine: decision p99 < 0.5 ms; HTTP p99 < 5 ms at 200 requests/s.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import msgspec
import numpy as np

from bench.loadgen import open_loop, percentiles
from simulations.pool import DEFAULT_TOPICS, make_prompt


def _prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [make_prompt(DEFAULT_TOPICS[rng.integers(len(DEFAULT_TOPICS))], rng) for _ in range(n)]


def bench_decision(n: int) -> dict[str, float]:
    from service.runtime import Runtime
    from service.schemas import ChatRequest, Message
    from service.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, {"TURNOUT_STORAGE__DATA_DIR": tmp})
        rt = Runtime(settings, learner=False, sim_latency_scale=0.0)
        reqs = [ChatRequest(model="auto", messages=[Message(role="user", content=p)]) for p in _prompts(n)]
        for r in reqs[:500]:
            rt.chat.route(r)
        times = []
        for r in reqs:
            t0 = time.perf_counter()
            rt.chat.route(r)
            times.append(time.perf_counter() - t0)
        embed_times = []
        for r in reqs[:5000]:
            text = r.messages[0].content
            t0 = time.perf_counter()
            rt.embedder.embed([text])
            embed_times.append(time.perf_counter() - t0)
        rt.stop()
    out = {f"decision_{k}_ms": v for k, v in percentiles(times).items()}
    out.update({f"embed_{k}_ms": v for k, v in percentiles(embed_times).items()})
    return out


def _serve(cmd: list[str], env: dict[str, str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code < 500:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"{' '.join(cmd)} did not start")


def _drive(port: int, bodies: list[bytes], rate: float, duration_s: float) -> Any:
    url = f"http://127.0.0.1:{port}"
    open_loop(url, "/v1/chat/completions", lambda i: bodies[i % len(bodies)], rate=50, duration_s=3)  # warm-up
    return open_loop(url, "/v1/chat/completions", lambda i: bodies[i % len(bodies)], rate=rate, duration_s=duration_s)


def bench_http(rate: float, duration_s: float) -> dict[str, float]:
    """Turnout's round trip, and the floor (``bench.floor_app`` on the same stack) in the same run."""
    from tests.servers import free_port

    prompts = _prompts(4096, seed=1)
    bodies = [msgspec.json.encode({"model": "auto", "messages": [{"role": "user", "content": p}]}) for p in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        port, floor_port = free_port(), free_port()
        env = dict(os.environ, TURNOUT_SIMULATED__LATENCY_SCALE="0")
        turnout = _serve([sys.executable, "-m", "service.cli", "up", "--port", str(port), "--data-dir", tmp], env, port)
        floor = _serve([sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(floor_port),
                        "--log-level", "warning", "--no-access-log"], dict(os.environ), floor_port)  # fmt: skip
        try:
            res = _drive(port, bodies, rate, duration_s)
            base = _drive(floor_port, bodies, rate, duration_s)
        finally:
            for proc in (turnout, floor):
                proc.terminate()
                proc.wait(timeout=30)
    out: dict[str, Any] = {"http_rate_rps": rate, "http_sent": res.sent, "http_errors": res.errors}
    for p in (50, 90, 99):
        out[f"http_p{p}_ms"] = res.pct_ms(p)
    out["http_max_ms"] = res.pct_ms(100)
    for p in (50, 99):
        out[f"floor_p{p}_ms"] = base.pct_ms(p)  # a bare ASGI answer: machine + loopback + generator
    for p in (50, 99):
        out[f"above_floor_p{p}_ms"] = res.pct_ms(p) - base.pct_ms(p)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--decisions", type=int, default=20000)
    p.add_argument("--skip-http", action="store_true")
    args = p.parse_args(argv)
    figures = bench_decision(args.decisions)
    if not args.skip_http:
        figures.update(bench_http(args.rate, args.duration_s))
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:10.3f}" if isinstance(v, float) else f"{k:<{width}}  {v:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
