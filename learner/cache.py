"""The answer cache: good answers kept per namespace, found again by exact key or by meaning.

A pure data structure: no clock (every call that needs the time takes ``now_s``), no I/O, no
settings. The service (``service/caching.py``) and ``turnout simulate --cache``
(``simulations/cache_sim.py``) run this same code.

**Isolation by construction.** Entries live in a ``Space``, one per namespace (a tenant, or a
tenant and one of its users). Every read is a method of one ``Space`` and reads only the
entries it holds; ``AnswerCache.space(tenant, user)`` is the only way to a ``Space``, and the
service calls it with the tenant of the authenticated request. Nothing indexes entries across
namespaces except the eviction order, which drops entries and never returns one, and the index
of decision ids that feedback evicts through, which checks the tenant before it drops.

**Lookup.** Exact: a dict from the normalised request's key, before any numpy work. Semantic:
within a ``Space``, the entries of one *context* (everything but the last user message: the model
or policy asked for, the system prompt, the conversation before, sampling parameters) and one
cluster of the live clustering form a bucket, so the search never crosses contexts. Each bucket
is a ``CellIndex`` (``learner/cache_index.py``): cells of at most ``cell_rows`` rows in groups of
at most ``group_cells`` cells; a lookup reads the group centres, the cell centres of the ``probe``
nearest groups and the rows of the ``probe`` nearest cells. Precision is exact (a hit has cosine
>= ``similarity``); recall is approximate (a neighbour in a cell not searched is missed: a miss,
never a wrong answer).

**Bounds.** An entry expires ``ttl_s`` after it was stored; the cache holds at most
``max_entries`` entries and ``max_bytes`` bytes (text + embedding + keys + a fixed overhead),
the least recently used going first. Every eviction is counted by reason (``EVICTION_REASONS``).
"""

from __future__ import annotations

import collections
import itertools
from typing import Callable, Literal

import msgspec
import numpy as np

from learner.cache_index import CellIndex

__all__ = ["EVICTION_REASONS", "AnswerCache", "CacheParams", "Entry", "Hit", "Space"]

# why an entry left: TTL, the memory bound, explicit feedback below the bar, a re-request of the
# answer, a judge's verdict (none yet: the hook is ``AnswerCache.verdict``), the answering model's
# posterior fell below the bar while it was cached
EVICTION_REASONS = ("expired", "capacity", "feedback", "re_request", "judge", "quality")
_OVERHEAD_BYTES = 400  # the entry's structs, dict slots and row bookkeeping, roughly
_SWEEP = 8  # least recently used entries checked for expiry at each store


class CacheParams(msgspec.Struct, frozen=True):
    ttl_s: float = 3600.0
    max_entries: int = 100_000
    max_bytes: int = 256_000_000
    similarity: float = 0.95  # cosine a semantic hit needs
    semantic: bool = True
    # the semantic index of a bucket (learner/cache_index.py; bench/overhead.py chose the sizes)
    cell_rows: int = 128  # rows of one cell before it is split
    group_cells: int = 64  # cells of one group before it is split
    probe: int = 2  # groups, then cells, searched per semantic lookup
    max_hit_ids: int = 200_000  # decision ids of hits remembered, for feedback on them


class Entry(msgspec.Struct, frozen=True, kw_only=True):
    """One cached answer: what it answered, who produced it, what it cost."""

    source_decision_id: str  # the decision whose answer this is
    exact_key: bytes
    context_key: bytes
    clustering: int
    cluster: int
    embedding: np.ndarray  # (d,) float32, unit norm: the prompt's
    model: str  # the pool model that answered
    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # what the answer cost: what each hit saves
    stored_at_s: float = 0.0

    @property
    def nbytes(self) -> int:
        return len(self.text) + self.embedding.nbytes + len(self.exact_key) + len(self.context_key) + _OVERHEAD_BYTES


class Hit(msgspec.Struct, frozen=True):
    entry: Entry
    kind: Literal["exact", "semantic"]
    similarity: float


class Space:
    """One namespace's entries. Its lookups read nothing else."""

    __slots__ = ("tenant", "user", "_cache", "_entries", "_exact", "_buckets")

    def __init__(self, tenant: str, user: str, cache: "AnswerCache") -> None:
        self.tenant, self.user = tenant, user
        self._cache = cache
        self._entries: dict[str, Entry] = {}
        self._exact: dict[bytes, str] = {}
        self._buckets: dict[tuple[bytes, int, int], CellIndex] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, source_decision_id: str) -> bool:
        return source_decision_id in self._entries

    def lookup(self, exact_key: bytes, context_key: bytes, clustering: int, cluster: int,
               embedding: np.ndarray | None, now_s: float) -> Hit | None:  # fmt: skip
        """An exact hit, else (with an embedding, and semantic matching on) the nearest entry of
        the prompt's bucket at cosine >= ``similarity``. An expired entry found is dropped."""
        p = self._cache.params
        sid = self._exact.get(exact_key)
        if sid is not None:
            hit = self._fresh(sid, "exact", 1.0, now_s)
            if hit is not None:
                return hit
        if embedding is None or not p.semantic:
            return None
        index = self._buckets.get((context_key, clustering, cluster))
        if index is None:
            return None
        found = index.nearest(np.asarray(embedding, dtype=np.float32), p.probe)
        if found is None or found[1] < p.similarity:
            return None
        return self._fresh(found[0], "semantic", found[1], now_s)

    def _fresh(self, sid: str, kind: Literal["exact", "semantic"], sim: float, now_s: float) -> Hit | None:
        entry = self._entries[sid]
        if now_s - entry.stored_at_s > self._cache.params.ttl_s:
            self._cache._drop(self, sid, "expired")
            return None
        self._cache._touch(sid)
        return Hit(entry, kind, sim)

    def store(self, entry: Entry) -> bool:
        """Keep ``entry`` (stored at ``entry.stored_at_s``); False when its request is cached already."""
        live = self._cache._spaces.setdefault((self.tenant, self.user), self)
        if live is not self:  # this space was emptied and replaced meanwhile: store in the live one
            return live.store(entry)
        if entry.exact_key in self._exact or entry.source_decision_id in self._entries:
            return False
        sid = entry.source_decision_id
        self._entries[sid] = entry
        self._exact[entry.exact_key] = sid
        key = (entry.context_key, entry.clustering, entry.cluster)
        p = self._cache.params
        index = self._buckets.get(key)
        if index is None:
            index = self._buckets[key] = CellIndex(len(entry.embedding), p.cell_rows, p.group_cells)
        index.add(sid, np.asarray(entry.embedding, dtype=np.float32), p.probe)
        self._cache._added(self, entry)
        return True

    def drop(self, source_decision_id: str, reason: str) -> bool:
        """Evict one entry of this space by its source decision id, counted under ``reason``."""
        if source_decision_id not in self._entries:
            return False
        self._cache._drop(self, source_decision_id, reason)
        return True

    def _remove(self, sid: str) -> Entry:
        entry = self._entries.pop(sid)
        del self._exact[entry.exact_key]
        key = (entry.context_key, entry.clustering, entry.cluster)
        index = self._buckets[key]
        index.remove(sid)
        if not len(index):
            del self._buckets[key]
        return entry


class AnswerCache:
    """Every namespace's ``Space``, the shared bounds and the eviction order (least recent first).

    ``on_evict(reason)`` is called once per entry evicted (metrics). Not thread-safe: the
    service calls it from its event loop only.
    """

    def __init__(self, params: CacheParams, on_evict: Callable[[str], None] | None = None) -> None:
        self.params = params
        self._on_evict = on_evict
        self._spaces: dict[tuple[str, str], Space] = {}
        self._order: collections.OrderedDict[str, Space] = collections.OrderedDict()  # source id -> its space
        self._hits: collections.OrderedDict[str, str] = collections.OrderedDict()  # hit decision id -> source id
        self.bytes = 0
        self.evicted: dict[str, int] = {r: 0 for r in EVICTION_REASONS}

    def __len__(self) -> int:
        return len(self._order)

    def space(self, tenant: str, user: str = "") -> Space:
        """The namespace of ``tenant`` (and ``user``, where answers are kept per user)."""
        key = (tenant, user)
        space = self._spaces.get(key)
        if space is None:
            space = self._spaces[key] = Space(tenant, user, self)
        return space

    def served(self, hit_decision_id: str, source_decision_id: str) -> None:
        """Remember that a hit's decision served this entry, so feedback on the hit reaches it."""
        self._hits[hit_decision_id] = source_decision_id
        if len(self._hits) > self.params.max_hit_ids:
            self._hits.popitem(last=False)

    def verdict(self, tenant: str, decision_id: str, reason: str) -> bool:
        """Evict the entry a decision of ``tenant`` stored or was served (thumbs-down, re-request,
        a judge). A decision of another tenant, or one that left no entry, changes nothing."""
        sid = self._hits.get(decision_id, decision_id)
        space = self._order.get(sid)
        if space is None or space.tenant != tenant:
            return False
        self._drop(space, sid, reason)
        return True

    def expire(self, now_s: float, limit: int | None = None) -> int:
        """Drop expired entries among the least recently used (``limit`` of them, or all)."""
        dropped = 0
        for sid in list(itertools.islice(self._order, limit)):
            space = self._order[sid]
            if now_s - space._entries[sid].stored_at_s > self.params.ttl_s:
                self._drop(space, sid, "expired")
                dropped += 1
        return dropped

    # -- bookkeeping, called by ``Space`` ------------------------------------------------------

    def _touch(self, sid: str) -> None:
        self._order.move_to_end(sid)

    def _added(self, space: Space, entry: Entry) -> None:
        self._order[entry.source_decision_id] = space
        self.bytes += entry.nbytes
        self.expire(entry.stored_at_s, _SWEEP)
        p = self.params
        while len(self._order) > p.max_entries or (self.bytes > p.max_bytes and len(self._order) > 1):
            sid, victim = next(iter(self._order.items()))
            self._drop(victim, sid, "capacity")

    def _drop(self, space: Space, sid: str, reason: str) -> None:
        entry = space._remove(sid)
        del self._order[sid]
        self.bytes -= entry.nbytes
        if not len(space):
            del self._spaces[(space.tenant, space.user)]
        self.evicted[reason] = self.evicted.get(reason, 0) + 1
        if self._on_evict is not None:
            self._on_evict(reason)
