"""Response cache lookup: what the cache adds to a request (``bench.overhead`` runs it).

    python -m bench.overhead --skip-http --conversations -1 [--cache-entries 100000] [--cache-tenants 1]

The keys from the body, the exact and the semantic lookup, the posterior check: ``ResponseCache.ask`` + ``lookup``) with
``--cache-entries`` answers stored over ``--cache-tenants`` tenants (1, the default, is the
worst case: one namespace whose buckets, one per cluster, hold tens of thousands of prompts of
the simulated topics), for prompts stored (hits) and prompts never seen (misses); and storing
one (``offer``). As the service does it: the keys (``ask``) as the body is parsed, the lookup
after routing; their sum is a lookup's time, in wall clock and in CPU time of the thread (what
it computed, without waiting for a core). ``cache_keys_parsed`` / ``cache_keys_routed``: the
keys' CPU time made as parsed, and after routing instead (every other request of the same
stored and new prompts); ``cache_lookup_keys_parsed`` / ``_routed``: the whole lookup so.

Target on a 2-core machine: lookup p99 < 0.1 ms with 100,000 entries.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from bench.loadgen import percentiles
from bench.overhead import topic_prompts

__all__ = ["bench_cache", "cache_texts"]


def cache_texts(n: int) -> list[str]:
    """``n`` distinct prompts: the topics' sentences, each with two words of RouterBench's
    vocabulary (near neighbours of one another: the worst case for the semantic search); no
    digits, which the cache's keys keep."""
    corpus = Path(__file__).resolve().parents[1] / "data" / "routerbench"
    words = sorted({w for f in corpus.glob("*.jsonl") for w in re.findall(r"[a-z]{5,}", f.read_text())})
    drawn = 2 * n  # drawn twice over: duplicates are dropped
    pairs = np.random.default_rng(2).integers(len(words), size=(drawn, 2))
    made = (f"{p} Mention {words[a]} and {words[b]}." for p, (a, b) in zip(topic_prompts(drawn, seed=2), pairs))
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
