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
3. Response cache lookup: what the cache adds to a request (its keys from the body, the exact
   and the semantic lookup, the posterior check: ``ResponseCache.ask`` + ``lookup``) with
   ``--cache-entries`` answers stored over ``--cache-tenants`` tenants (1, the default, is the
   worst case: one namespace whose buckets, one per cluster, hold tens of thousands of prompts of
   the simulated topics), for prompts stored (hits) and prompts never seen (misses); and storing
   one (``offer``). As the service does it: the keys (``ask``) as the body is parsed, the lookup
   after routing; their sum is a lookup's time, in wall clock and in CPU time of the thread (what
   it computed, without waiting for a core). ``cache_keys_parsed`` / ``cache_keys_routed``: the
   keys' CPU time made as parsed, and after routing instead (every other request of the same
   stored and new prompts); ``cache_lookup_keys_parsed`` / ``_routed``: the whole lookup so.
4. Garbage collection: a full collection of a serving process's heap, as it is and frozen as
   ``service.serving`` freezes it once the app has started (``gc_full_collection_ms``).
Targets on a 2-core machine: decision p99 < 0.5 ms (also for a conversation's later turns); HTTP p99 < 5 ms at 200 requests/s; cache
lookup p99 < 0.1 ms with 100,000 entries.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np

from bench.loadgen import open_loop, percentiles
from simulations.pool import DEFAULT_TOPICS, make_prompt


def _prompts(n: int, seed: int = 0) -> list[str]:
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
        reqs = [ChatRequest(model="auto", messages=[Message(role="user", content=p)]) for p in _prompts(n)]
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
        prompts = _prompts(chats * turns, seed=2)
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


def cache_texts(n: int) -> list[str]:
    """``n`` distinct prompts: the topics' sentences, each with two words of RouterBench's
    vocabulary (near neighbours of one another: the worst case for the semantic search); no
    digits, which the cache's keys keep."""
    corpus = Path(__file__).resolve().parents[1] / "data" / "routerbench"
    words = sorted({w for f in corpus.glob("*.jsonl") for w in re.findall(r"[a-z]{5,}", f.read_text())})
    drawn = 2 * n  # drawn twice over: duplicates are dropped
    pairs = np.random.default_rng(2).integers(len(words), size=(drawn, 2))
    made = (f"{p} Mention {words[a]} and {words[b]}." for p, (a, b) in zip(_prompts(drawn, seed=2), pairs))
    return list(dict.fromkeys(made))[:n]


def bench_cache(entries: int, tenants: int = 1, lookups: int = 20_000) -> dict[str, float]:
    from feedback.memory import MemoryRowStore, MemorySnapshotStore
    from learner.cache import Entry
    from learner.clusters import assign_many
    from service.caching import request_keys
    from service.runtime import Runtime
    from service.schemas import ChatRequest, Message
    from service.settings import load_settings
    from service.tenants import Caller, Tenant

    def body(text: str) -> bytes:
        return msgspec.json.encode({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": text}]})

    texts = cache_texts(entries + lookups)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(None, {"TURNOUT_STORAGE__DATA_DIR": tmp, "TURNOUT_CACHE__ENABLED": "true",
                                        "TURNOUT_CACHE__MAX_ENTRIES": str(entries),
                                        "TURNOUT_CACHE__MIN_QUALITY": "0"})  # fmt: skip
        rt = Runtime(settings, rows=MemoryRowStore(), snapshots=MemorySnapshotStore(), learner=False,
                     sim_latency_scale=0.0)  # (one chDB engine a process: bench_decision's holds it)
        cache, view = rt.chat.cache, rt.router.view
        stored = texts[:entries]
        embs = np.concatenate([rt.embedder.embed(stored[i : i + 4096]) for i in range(0, entries, 4096)])
        clusters, _ = assign_many(embs, view.centroids)
        callers = [Caller(Tenant(name=f"tenant-{t}")) for t in range(tenants)]
        for i, (text, emb, c) in enumerate(zip(stored, embs, clusters)):
            exact, context = request_keys(body(text))
            entry = Entry(source_decision_id=f"d{i}", exact_key=exact, context_key=context,
                          clustering=view.snapshot.clustering, cluster=int(c), embedding=emb, model=view.models[0],
                          text="a cached answer " * 20, stored_at_s=cache.clock())  # fmt: skip
            cache.cache.space(callers[i % tenants].tenant.name).store(entry)
        rng = np.random.default_rng(3)
        picks = rng.integers(entries, size=lookups // 2)
        asked = [(stored[int(j)], callers[int(j) % tenants]) for j in picks]  # stored: hits, by their tenant
        asked += [(text, callers[i % tenants]) for i, text in enumerate(texts[entries : entries + lookups // 2])]
        times: dict[str, list[float]] = {"hit": [], "miss": [], "back_to_back": [], "cpu": []}
        requests = []
        for text, caller in asked:  # as served (service/chat.py): the keys as the body is parsed, lookup after routing
            raw = body(text)
            req = rt.chat.parse(raw)
            c0, t0 = time.thread_time(), time.perf_counter()
            ask = cache.ask(raw, req.temperature, caller, "", {})
            t1, c1 = time.perf_counter(), time.thread_time()
            routed = rt.chat.route(req)
            requests.append((raw, caller, routed))
            c2, t2 = time.thread_time(), time.perf_counter()
            hit = cache.lookup(ask, routed, view) if ask is not None else None
            t3, c3 = time.perf_counter(), time.thread_time()
            times["hit" if hit is not None else "miss"].append(t1 - t0 + t3 - t2)
            times["cpu"].append(c1 - c0 + c3 - c2)
        # the keys where service/chat.py makes them (as the body is parsed) and, every other
        # request, after routing instead; the same stored and new prompts as above
        keys: dict[str, list[float]] = {"parsed": [], "routed": []}
        whole: dict[str, list[float]] = {"parsed": [], "routed": []}
        for i, (text, caller) in enumerate(asked[::2]):
            where = "routed" if i % 2 else "parsed"
            raw = body(text)
            req = rt.chat.parse(raw)
            routed = rt.chat.route(req) if where == "routed" else None
            c0 = time.thread_time()
            ask = cache.ask(raw, req.temperature, caller, "", {})
            c1 = time.thread_time()
            routed = routed or rt.chat.route(req)
            c2 = time.thread_time()
            cache.lookup(ask, routed, view) if ask is not None else None
            keys[where].append(c1 - c0)
            whole[where].append(c1 - c0 + time.thread_time() - c2)
        for raw, caller, routed in requests:  # the same lookups back to back: the cache's own work, warm
            t0 = time.perf_counter()
            ask = cache.ask(raw, 0, caller, "", {})
            cache.lookup(ask, routed, view) if ask is not None else None
            times["back_to_back"].append(time.perf_counter() - t0)
        offers = []
        for i, text in enumerate(texts[entries:entries + 2000]):
            raw = body(text)
            routed = rt.chat.route(ChatRequest(model="auto", temperature=0, messages=[Message(role="user", content=text)]))
            ask = cache.ask(raw, 0, callers[i % tenants], "", {})
            t0 = time.perf_counter()
            cache.offer(ask, routed, view, f"n{i}", view.models[0], "an answer", "stop", 10, 20, 0.001)  # type: ignore
            offers.append(time.perf_counter() - t0)
        shapes = [index.shape() for s in cache.cache._spaces.values() for index in s._buckets.values()]
        largest = max(len(index) for s in cache.cache._spaces.values() for index in s._buckets.values())
        rt.stop()
    out: dict[str, float] = {"cache_entries": float(entries), "cache_tenants": float(tenants),
                             "cache_buckets": float(len(shapes)), "cache_largest_bucket": float(largest),
                             "cache_groups": float(sum(g for g, _ in shapes)), "cache_cells": float(sum(c for _, c in shapes)),
                             "cache_hits": float(len(times["hit"]))}  # fmt: skip
    out.update({f"cache_lookup_{k}_ms": v for k, v in percentiles(times["hit"] + times["miss"]).items()})
    # the same lookups in CPU time of this thread: without the time it waited for a core (on a
    # shared machine the wall-clock p99 is mostly that)
    out.update({f"cache_lookup_cpu_{k}_ms": v for k, v in percentiles(times["cpu"]).items()})
    out.update({f"cache_hit_{k}_ms": v for k, v in percentiles(times["hit"]).items()})
    out.update({f"cache_miss_{k}_ms": v for k, v in percentiles(times["miss"]).items()})
    out.update({f"cache_back_to_back_{k}_ms": v for k, v in percentiles(times["back_to_back"]).items()})
    for where in ("parsed", "routed"):  # CPU time of the keys, and of the whole lookup, keys made as parsed or after routing
        out.update({f"cache_keys_{where}_cpu_{k}_ms": v for k, v in percentiles(keys[where]).items()})
        out.update({f"cache_lookup_keys_{where}_cpu_{k}_ms": v for k, v in percentiles(whole[where]).items()})
    out.update({f"cache_store_{k}_ms": v for k, v in percentiles(offers).items()})
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

    prompts = _prompts(4096, seed=1)
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
    figures = bench_decision(args.decisions, args.language_detector, args.cascade)
    figures.update(bench_gc())
    if args.conversations >= 0:
        figures.update(bench_conversation(max(1, args.decisions // 10), args.conversations))
    if args.cache_entries > 0:
        figures.update(bench_cache(args.cache_entries, args.cache_tenants))
    if not args.skip_http:
        figures.update(bench_http(args.rate, args.duration_s))
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:10.3f}" if isinstance(v, float) else f"{k:<{width}}  {v:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
