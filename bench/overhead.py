"""Routing overhead: the in-process decision, and the HTTP round trip at a fixed request rate.

    python -m bench.overhead [--rate 200] [--duration-s 20] [--decisions 20000] [--cache-entries 100000]
                             [--language-detector cld2|none]
                             [--conversations 100000]

1. Decision in-process: language detection (``[language] detector``, cld2 by default) + embed
   (wordllama) + rules + nearest centroid + Thompson sample with its propensity, through the
   service's own ``ChatService.route`` on a loaded snapshot; beside it the embedding alone and the
   language detection alone (on the same prompts and on ``bench.language``'s short prompts in 14
   languages). The bench's prompts come in a few lengths, so most decisions read the rows' winners
   the view worked out for an earlier request of the same cluster and length (``learner.routing``);
   ``decision_new_key`` gives each request a length not met before (a system message), so every
   one is worked out.
2. HTTP: ``turnout up`` in its own process on a zero-latency simulated pool (so the whole round
   trip is Turnout's overhead: parsing, routing, answering, emitting the event), driven open-loop
   at a fixed rate with latency counted from each request's due time. Beside it, in the same
   run, the floor: ``bench.floor_app`` (a bare ASGI answer on the same HTTP server) under the
   same generator, which is what the machine, the loopback, the generator and the server cost by
   themselves (on a shared 2-core VM its p99 alone is several milliseconds); beside it the same
   app on uvicorn (``floor_uvicorn_``), the server Turnout used before its own. CPU per request
   of each server process is printed with it (``*_cpu_ms``).
1b. Conversations (``--conversations``): the same decision for the later turns of six-turn
   chats, with ``--conversations`` others remembered: the conversation's keys hashed from the
   messages, its lookup, the context mixed, and the kept (or re-routed) decision.
3. Response cache lookup (``--cache-entries``, ``--cache-tenants``): ``bench.cache_lookup``.
4. Garbage collection: a full collection of a serving process's heap, as it is and frozen as
   ``service.serving`` freezes it once the app has started (``gc_full_collection_ms``).
Targets on a 2-core machine: decision p99 < 0.5 ms (also for a conversation's later turns); HTTP p99 < 5 ms at 200 requests/s; cache
lookup p99 < 0.1 ms with 100,000 entries.
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


def topic_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts of the simulated topics, seeded."""
    rng = np.random.default_rng(seed)
    return [make_prompt(DEFAULT_TOPICS[rng.integers(len(DEFAULT_TOPICS))], rng) for _ in range(n)]


_CASCADE = """
[[cascades]]
name = "mini-then-frontier"
cheap = "sim-mini"
strong = "sim-frontier"
"""


def bench_gc() -> dict[str, float]:
    """A full garbage collection of a serving process's heap (the runtime and its app built, as
    ``turnout up`` builds them before serving), in ms: as it is, and after ``gc.freeze`` (what
    ``service.serving`` does once the app has started). Median of three each."""
    import gc

    from feedback.memory import MemoryRowStore, MemorySnapshotStore
    from service.runtime import Runtime
    from service.settings import load_settings

    def full_ms() -> float:
        spent = []
        for _ in range(3):
            t0 = time.perf_counter()
            gc.collect()
            spent.append((time.perf_counter() - t0) * 1000.0)
        return float(np.median(spent))

    with tempfile.TemporaryDirectory() as tmp:
        rt = Runtime(load_settings(None, {"TURNOUT_STORAGE__DATA_DIR": tmp}), learner=False, sim_latency_scale=0.0,
                     rows=MemoryRowStore(), snapshots=MemorySnapshotStore())  # fmt: skip
        out = {"gc_tracked_objects": float(len(gc.get_objects())), "gc_full_collection_ms": full_ms()}
        gc.freeze()
        try:
            out["gc_full_collection_frozen_ms"] = full_ms()
        finally:
            gc.unfreeze()
        rt.stop()
    return out


def bench_decision(n: int, detector: str = "cld2", cascade: bool = False) -> dict[str, float]:
    """``cascade``: with a cascade configured (one more arm in every decision)."""
    from pathlib import Path

    from feedback.memory import MemoryRowStore, MemorySnapshotStore
    from service.runtime import Runtime
    from service.schemas import ChatRequest, Message
    from service.settings import load_settings

    with tempfile.TemporaryDirectory() as tmp:
        config = None
        if cascade:
            config = Path(tmp) / "turnout.toml"
            config.write_text(_CASCADE)
        settings = load_settings(config, {"TURNOUT_STORAGE__DATA_DIR": tmp, "TURNOUT_LANGUAGE__DETECTOR": detector})
        rt = Runtime(settings, learner=False, sim_latency_scale=0.0, rows=MemoryRowStore(),
                     snapshots=MemorySnapshotStore())  # fmt: skip (chDB: one engine path per process)
        reqs = [ChatRequest(model="auto", messages=[Message(role="user", content=p)]) for p in topic_prompts(n)]
        for r in reqs[:500]:
            rt.chat.route(r)
        times = []
        for r in reqs:
            t0 = time.perf_counter()
            rt.chat.route(r)
            times.append(time.perf_counter() - t0)
        # the same prompts, each after a system message of a length not met before: a prompt length
        # (so a penalty) new to the snapshot, whose decision the view has not worked out yet
        new_key = []
        for i, r in enumerate(reqs):
            system = Message(role="system", content="w" * (4 * (1000 + i)))
            req = ChatRequest(model="auto", messages=[system, *r.messages])
            t0 = time.perf_counter()
            rt.chat.route(req)
            new_key.append(time.perf_counter() - t0)
        embed_times = []
        for r in reqs[:5000]:
            text = r.messages[0].content
            t0 = time.perf_counter()
            rt.embedder.embed([text])
            embed_times.append(time.perf_counter() - t0)
        language = _detection(rt.chat.routing.language, [str(r.messages[0].content) for r in reqs])
        rt.stop()
    out = {f"decision_{k}_ms": v for k, v in percentiles(times).items()}
    out.update({f"decision_new_key_{k}_ms": v for k, v in percentiles(new_key).items()})
    out.update({f"embed_{k}_ms": v for k, v in percentiles(embed_times).items()})
    out.update({f"language_{k}_ms": v for k, v in language.items()})
    return out


def _detection(detector, prompts: list[str]) -> dict[str, float]:
    """The language detector alone: the decision's prompts, then short prompts in 14 languages."""
    from bench.language import HAND

    texts = prompts[:5000] + [p for ps in HAND.values() for p in ps] * 20
    times = []
    for text in texts:
        t0 = time.perf_counter()
        detector.detect(text)
        times.append(time.perf_counter() - t0)
    return percentiles(times)


def bench_conversation(chats: int, remembered: int, turns: int = 6) -> dict[str, float]:
    """Decisions of turns 2..``turns`` of ``chats`` chats, with ``remembered`` other conversations stored."""
    from feedback.memory import MemoryRowStore, MemorySnapshotStore
    from service.conversations import Conversation
    from service.runtime import Runtime
    from service.schemas import ChatRequest, Message
    from service.settings import load_settings

    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, {"TURNOUT_STORAGE__DATA_DIR": tmp})
        rt = Runtime(settings, learner=False, sim_latency_scale=0.0, rows=MemoryRowStore(),
                     snapshots=MemorySnapshotStore())  # fmt: skip (chDB: one engine path per process)
        convs = rt.chat.conversations
        assert convs is not None, "[conversations] is disabled"
        filler = Conversation("c", rt.chat.pool[0].name, np.zeros(rt.embedder.dim, dtype=np.float32), 1,
                              convs.store.clock())  # fmt: skip
        for _ in range(remembered):
            convs.store.save([("default", rng.bytes(16))], filler)
        prompts = topic_prompts(chats * turns, seed=2)
        times, kept = [], 0
        for c in range(chats):
            messages = [Message(role="system", content="You are a helpful assistant.")]
            for t in range(turns):
                messages.append(Message(role="user", content=prompts[c * turns + t]))
                req = ChatRequest(model="auto", messages=list(messages), user=f"user-{c}")
                t0 = time.perf_counter()
                routed = rt.chat.route(req)
                elapsed = time.perf_counter() - t0
                if t > 0:
                    times.append(elapsed)
                    kept += routed.thread is not None and routed.thread.sticky
                convs.answered(routed.thread, routed.arm)
                messages.append(Message(role="assistant", content="An answer of a few words. " * 20))
        rt.stop()
    out = {f"followup_decision_{k}_ms": v for k, v in percentiles(times).items()}
    out["followup_kept_share"] = kept / len(times)
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


def _drive(port: int, bodies: list[bytes], rate: float, duration_s: float, pid: int) -> tuple[Any, float]:
    """The open-loop run at ``rate``, and the CPU (ms) the server process ``pid`` spent a request."""
    from bench.gateway import _cpu_s

    url = f"http://127.0.0.1:{port}"
    open_loop(url, "/v1/chat/completions", lambda i: bodies[i % len(bodies)], rate=50, duration_s=3)  # warm-up
    cpu0 = sum(_cpu_s(pid))
    res = open_loop(url, "/v1/chat/completions", lambda i: bodies[i % len(bodies)], rate=rate, duration_s=duration_s)
    return res, (sum(_cpu_s(pid)) - cpu0) * 1000.0 / max(1, res.sent)


def bench_http(rate: float, duration_s: float) -> dict[str, float]:
    """Turnout's round trip, and the floor (``bench.floor_app``) in the same run on two servers:
    Turnout's own (``floor_``, what ``turnout up`` serves with) and uvicorn (``floor_uvicorn_``)."""
    from tests.servers import free_port

    prompts = topic_prompts(4096, seed=1)
    bodies = [msgspec.json.encode({"model": "auto", "messages": [{"role": "user", "content": p}]}) for p in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        port, floor_port, uvicorn_port = free_port(), free_port(), free_port()
        env = dict(os.environ, TURNOUT_SIMULATED__LATENCY_SCALE="0")
        turnout = _serve([sys.executable, "-m", "service.cli", "up", "--port", str(port), "--data-dir", tmp], env, port)
        floor = _serve([sys.executable, "-m", "bench.floor_app", "--port", str(floor_port)], dict(os.environ),
                       floor_port)  # fmt: skip
        floor_uvicorn = _serve([sys.executable, "-m", "uvicorn", "bench.floor_app:app", "--port", str(uvicorn_port),
                                "--log-level", "warning", "--no-access-log"], dict(os.environ), uvicorn_port)  # fmt: skip
        try:
            res, cpu = _drive(port, bodies, rate, duration_s, turnout.pid)
            base, base_cpu = _drive(floor_port, bodies, rate, duration_s, floor.pid)
            ref, ref_cpu = _drive(uvicorn_port, bodies, rate, duration_s, floor_uvicorn.pid)
        finally:
            for proc in (turnout, floor, floor_uvicorn):
                proc.terminate()
                proc.wait(timeout=30)
    out: dict[str, Any] = {"http_rate_rps": rate, "http_sent": res.sent, "http_errors": res.errors}
    for p in (50, 90, 99):
        out[f"http_p{p}_ms"] = res.pct_ms(p)
    out["http_max_ms"] = res.pct_ms(100)
    out["http_cpu_ms"] = cpu  # the whole `turnout up` process (serving, storage, learner threads) a request
    for name, r, c in (("floor", base, base_cpu), ("floor_uvicorn", ref, ref_cpu)):
        for p in (50, 99):
            out[f"{name}_p{p}_ms"] = r.pct_ms(p)  # a bare ASGI answer: machine + loopback + generator + server
        out[f"{name}_cpu_ms"] = c
    for p in (50, 99):
        out[f"above_floor_p{p}_ms"] = res.pct_ms(p) - base.pct_ms(p)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--decisions", type=int, default=20000)
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--language-detector", default="cld2", help="[language] detector of the decision: cld2 or none")
    p.add_argument("--conversations", type=int, default=100_000,
                   help="other conversations remembered while later turns are timed (-1: skip)")
    p.add_argument("--cache-entries", type=int, default=100_000, help="answers stored for the cache lookup (0: skip)")
    p.add_argument("--cache-tenants", type=int, default=1,
                   help="tenants the answers are spread over (1: one namespace, the worst case)")
    p.add_argument("--cascade", action="store_true", help="the decision with a cascade configured ([[cascades]])")
    args = p.parse_args(argv)
    figures = bench_gc()  # first: the heap a serving process has, nothing of the other benches in it
    figures.update(bench_decision(args.decisions, args.language_detector, args.cascade))
    if args.conversations >= 0:
        figures.update(bench_conversation(max(1, args.decisions // 10), args.conversations))
    if args.cache_entries > 0:
        from bench.cache_lookup import bench_cache

        figures.update(bench_cache(args.cache_entries, args.cache_tenants))
    if not args.skip_http:
        figures.update(bench_http(args.rate, args.duration_s))
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:10.3f}" if isinstance(v, float) else f"{k:<{width}}  {v:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
