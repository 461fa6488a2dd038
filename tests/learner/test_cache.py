"""The answer cache core (learner/cache.py): isolation, exact and semantic hits, TTL, bounds, verdicts."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.cache import AnswerCache, CacheParams, Entry
from learner.cache_index import CellIndex
from learner.embedding import HashingEmbedder

EMB = HashingEmbedder(64)


def key(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def entry(sid: str, text: str, *, t: float = 0.0, answer: str = "an answer", cluster: int = 0,
          emb: np.ndarray | None = None, context: bytes = b"ctx") -> Entry:  # fmt: skip
    return Entry(source_decision_id=sid, exact_key=key(text), context_key=context, clustering=0, cluster=cluster,
                 embedding=EMB.embed([text])[0] if emb is None else emb, model="m", text=answer, cost_usd=0.01,
                 stored_at_s=t)  # fmt: skip


def find(cache: AnswerCache, tenant: str, text: str, now: float = 0.0, user: str = "", context: bytes = b"ctx"):
    return cache.space(tenant, user).lookup(key(text), context, 0, 0, EMB.embed([text])[0], now)


def test_exact_and_semantic_hits_within_one_context():
    cache = AnswerCache(CacheParams(similarity=0.8))
    assert cache.space("a").store(entry("d1", "how do I boil an egg for a soft yolk"))
    hit = find(cache, "a", "how do I boil an egg for a soft yolk")
    assert hit is not None and hit.kind == "exact" and hit.entry.source_decision_id == "d1"
    near = find(cache, "a", "how do I boil an egg for a soft yolk please")
    assert near is not None and near.kind == "semantic" and near.similarity >= 0.8
    assert find(cache, "a", "plan a three day trip to lisbon") is None  # unlike: no hit
    assert find(cache, "a", "how do I boil an egg for a soft yolk please", context=b"other system prompt") is None


def test_semantic_matching_can_be_off():
    cache = AnswerCache(CacheParams(similarity=0.5, semantic=False))
    cache.space("a").store(entry("d1", "how do I boil an egg"))
    assert find(cache, "a", "how do I boil an egg") is not None
    assert find(cache, "a", "how do I boil an egg please") is None


words = st.lists(st.sampled_from("egg boil soft yolk trip lisbon budget sql query python list merge sort".split()),
                 min_size=1, max_size=8).map(" ".join)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(tenants=st.lists(st.text("abcxyz", min_size=1, max_size=3), min_size=2, max_size=4, unique=True),
       prompts=st.lists(st.tuples(st.integers(0, 3), words), min_size=1, max_size=20),
       probes=st.lists(st.tuples(st.integers(0, 3), words, st.sampled_from(["", " please", " now", "!"])),
                       min_size=1, max_size=20))  # fmt: skip
def test_no_tenant_is_ever_served_another_tenants_answer(tenants, prompts, probes):
    """Whatever is stored, a lookup returns only its own tenant's entries: for the very same
    prompt (exact) and for near-identical ones (semantic, at a similarity low enough to match)."""
    cache = AnswerCache(CacheParams(similarity=0.5))
    owner = {}
    for i, (t, text) in enumerate(prompts):
        tenant = tenants[t % len(tenants)]
        if cache.space(tenant).store(entry(f"d{i}", text, answer=f"answer of {tenant}")):
            owner[f"d{i}"] = tenant
    for t, text, suffix in probes:
        tenant = tenants[t % len(tenants)]
        for probe in (text, text + suffix):
            hit = find(cache, tenant, probe)
            if hit is not None:
                assert owner[hit.entry.source_decision_id] == tenant
                assert hit.entry.text == f"answer of {tenant}"
    # and every tenant does find its own exact prompts (the property is not vacuous)
    for i, (t, text) in enumerate(prompts):
        if f"d{i}" in owner:
            assert find(cache, owner[f"d{i}"], text) is not None


def test_users_are_namespaces_of_their_own():
    cache = AnswerCache(CacheParams())
    cache.space("a", "alice").store(entry("d1", "my account balance"))
    assert find(cache, "a", "my account balance", user="alice") is not None
    assert find(cache, "a", "my account balance", user="bob") is None
    assert find(cache, "a", "my account balance") is None


def test_entries_expire_after_ttl():
    cache = AnswerCache(CacheParams(ttl_s=60.0))
    cache.space("a").store(entry("d1", "boil an egg", t=100.0))
    assert find(cache, "a", "boil an egg", now=160.0) is not None
    assert find(cache, "a", "boil an egg", now=160.5) is None
    assert len(cache) == 0 and cache.evicted["expired"] == 1 and cache.bytes == 0


def test_expire_sweeps_entries_nobody_asks_for():
    cache = AnswerCache(CacheParams(ttl_s=10.0))
    for i in range(5):
        cache.space("a").store(entry(f"d{i}", f"prompt {i}", t=float(i)))
    assert cache.expire(12.5) == 3 and len(cache) == 2  # stored at 0, 1, 2


def test_entry_count_bound_evicts_the_least_recently_used():
    cache = AnswerCache(CacheParams(max_entries=10))
    for i in range(10):
        cache.space(f"t{i % 3}").store(entry(f"d{i}", f"prompt number {i}"))
    assert find(cache, "t0", "prompt number 0") is not None  # used: now the most recent
    cache.space("t1").store(entry("d10", "prompt number 10"))
    assert find(cache, "t1", "prompt number 1") is None  # the least recently used went
    assert find(cache, "t0", "prompt number 0") is not None  # the oldest stored, but used: kept
    for i in range(11, 40):
        cache.space(f"t{i % 3}").store(entry(f"d{i}", f"prompt number {i}"))
        assert len(cache) <= 10
    assert cache.evicted["capacity"] == 30 and len(cache) == 10


def test_byte_bound_holds():
    one = entry("x", "p", answer="y" * 10_000).nbytes
    cache = AnswerCache(CacheParams(max_bytes=5 * one))
    for i in range(50):
        cache.space("a").store(entry(f"d{i}", f"p{i}", answer="y" * 10_000))
        assert cache.bytes <= 5 * one
    assert len(cache) == 5 and cache.bytes == sum(
        e.nbytes for s in cache._spaces.values() for e in s._entries.values())


def test_verdicts_evict_by_source_or_hit_decision_and_only_for_the_tenant():
    evicted = []
    cache = AnswerCache(CacheParams(), on_evict=evicted.append)
    cache.space("a").store(entry("src", "boil an egg"))
    hit = find(cache, "a", "boil an egg")
    cache.served("hit-1", hit.entry.source_decision_id)
    assert not cache.verdict("b", "hit-1", "feedback")  # another tenant's feedback: nothing
    assert not cache.verdict("b", "src", "feedback")
    assert find(cache, "a", "boil an egg") is not None
    assert cache.verdict("a", "hit-1", "feedback")  # a thumbs-down on the hit
    assert find(cache, "a", "boil an egg") is None and evicted == ["feedback"]
    cache.space("a").store(entry("src2", "boil an egg"))
    assert cache.verdict("a", "src2", "re_request")  # the stored answer itself re-asked
    assert len(cache) == 0 and evicted == ["feedback", "re_request"]


def test_a_space_emptied_meanwhile_still_stores_where_lookups_read():
    cache = AnswerCache(CacheParams(ttl_s=1.0))
    held = cache.space("a")
    held.store(entry("d1", "boil an egg"))
    assert find(cache, "a", "boil an egg", now=5.0) is None  # expired: the space emptied and went
    held.store(entry("d2", "trip to lisbon", t=5.0))  # the request that still holds it stores
    assert find(cache, "a", "trip to lisbon", now=5.0) is not None


def _prompts_like(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Unit rows around 60 topics (cosine about 0.7 to their topic), as prompt embeddings are; rows
    without any structure are the worst case of every inverted file, not what a cache holds."""
    topics = rng.standard_normal((60, dim)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    rows = topics[rng.integers(60, size=n)] + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def test_cells_and_groups_split_and_lookups_still_find_near_duplicates():
    rng = np.random.default_rng(0)
    base = _prompts_like(rng, 3000, 256)
    cache = AnswerCache(CacheParams(similarity=0.9, cell_rows=64, group_cells=8))
    space = cache.space("a")
    for i, e in enumerate(base):
        space.store(entry(f"d{i}", f"p{i}", emb=e))
    index = next(iter(space._buckets.values()))
    groups, cells = index.shape()
    assert groups > 2 and cells > 20  # both levels split
    assert all(len(c) <= 128 for g in index._groups.keys for c in g.keys)
    noise = rng.standard_normal(base.shape).astype(np.float32) * 0.02
    probes = (base + noise) / np.linalg.norm(base + noise, axis=1, keepdims=True)
    found = [space.lookup(b"none", b"ctx", 0, 0, p, 0.0) for p in probes]
    right = sum(h is not None and h.entry.source_decision_id == f"d{i}" for i, h in enumerate(found))
    assert all(h is None or h.similarity >= 0.9 for h in found)  # never a hit below the bar
    assert right >= 0.9 * len(base)  # recall of a cell search (a miss costs money, never correctness)
    for i in range(0, 3000, 2):
        space.drop(f"d{i}", "feedback")
    assert len(space) == 1500 == len(index) == sum(len(c) for g in index._groups.keys for c in g.keys)
    found = [space.lookup(b"none", b"ctx", 0, 0, p, 0.0) for p in probes]
    assert all(h is None or int(h.entry.source_decision_id[1:]) % 2 for h in found)  # the dropped are gone
    assert sum(h is not None for h in found[1::2]) >= 0.9 * 1500
    for i in range(1, 3000, 2):
        space.drop(f"d{i}", "feedback")
    assert len(space) == 0 and not space._buckets


def test_cell_index_returns_the_exact_cosine_of_the_row_it_names():
    rng = np.random.default_rng(1)
    rows = _prompts_like(rng, 2000, 256)
    index = CellIndex(256, cell_rows=16, group_cells=8)
    for i, r in enumerate(rows):
        index.add(f"r{i}", r, 2)
    assert index.shape()[0] > 8
    found = [index.nearest(r, 2) for r in rows]
    for r, (key, cos) in zip(rows, found):
        assert cos == pytest.approx(float(rows[int(key[1:])] @ r), abs=1e-5)
    assert sum(key == f"r{i}" for i, (key, _) in enumerate(found)) >= 0.9 * len(rows)  # each row finds itself
