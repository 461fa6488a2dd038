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

**Lookup.** Exact: a dict from the normalised request's key. Semantic: within a ``Space``, the
entries of one *context* (everything but the last user message: the model or policy asked for,
the system prompt, the conversation before, sampling parameters) and one cluster of the live
clustering form a bucket, so the search never crosses contexts and only reads a small matrix.
A bucket is cut into cells of at most ``cell_rows`` rows (a cell that grows past that is split
in two by 2-means) holding the embeddings (or, with ``index_dim``, a projection of them); a lookup
scans the ``probe`` cells whose centres are nearest the prompt and compares the ``verify`` best of
each in full. Precision is exact (a hit has cosine >= ``similarity`` in full); recall is approximate (a
neighbour across a cell boundary, or ranked low by the projection, can be missed: a miss, never a
wrong answer). References: Jegou, Douze & Schmid, Product quantization for nearest neighbor
search (2011), for the inverted file of cells; Johnson & Lindenstrauss (1984) for the projection.

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
    cell_rows: int = 128  # rows of one cell of a bucket before it is split (bench/overhead.py chose it)
    probe: int = 2  # cells scanned per semantic lookup
    # the cells may hold embeddings projected to fewer dimensions, the ``verify`` best of each cell
    # then compared in full; on the 2-core machine of bench/overhead.py the projection cost more
    # than it saved (and lost recall: 95% at 128 dimensions against 95% in full, 90% at 64)
    index_dim: int = 0  # 0: cells hold the embeddings as they are
    verify: int = 1
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


class _Cell:
    """Rows of one region of a bucket: (capacity, d) float32, the first ``len(ids)`` in use."""

    __slots__ = ("rows", "ids", "split_at")

    def __init__(self, dim: int, split_at: int) -> None:
        self.rows = np.empty((8, dim), dtype=np.float32)
        self.ids: list[str] = []
        self.split_at = split_at

    def add(self, source_id: str, emb: np.ndarray) -> None:
        n = len(self.ids)
        if n == len(self.rows):
            grown = np.empty((2 * n, self.rows.shape[1]), dtype=np.float32)
            grown[:n] = self.rows
            self.rows = grown
        self.rows[n] = emb
        self.ids.append(source_id)

    def remove(self, source_id: str) -> None:
        i = self.ids.index(source_id)
        last = len(self.ids) - 1
        self.rows[i] = self.rows[last]
        self.ids[i] = self.ids[last]
        self.ids.pop()


class _Bucket:
    """The entries of one (context, clustering, cluster) of a space, in cells."""

    __slots__ = ("centres", "cells", "cell_of", "cell_rows")

    def __init__(self, dim: int, cell_rows: int) -> None:
        self.cell_rows = cell_rows
        self.centres = np.zeros((1, dim), dtype=np.float32)
        self.cells = [_Cell(dim, cell_rows)]
        self.cell_of: dict[str, _Cell] = {}

    def __len__(self) -> int:
        return len(self.cell_of)

    def add(self, source_id: str, emb: np.ndarray) -> None:
        i = 0 if len(self.cells) == 1 else int(np.argmax(self.centres @ emb))
        cell = self.cells[i]
        cell.add(source_id, emb)
        self.cell_of[source_id] = cell
        if len(cell.ids) > cell.split_at:
            self._split(i)

    def remove(self, source_id: str) -> None:
        cell = self.cell_of.pop(source_id)
        cell.remove(source_id)
        if not cell.ids and len(self.cells) > 1:
            i = self.cells.index(cell)
            del self.cells[i]
            self.centres = np.delete(self.centres, i, axis=0)

    def candidates(self, emb: np.ndarray, probe: int, k: int) -> tuple[list[str], list[float]]:
        """The ``k`` closest entries (in the index's space) of each of the ``probe`` nearest cells,
        with their cosines there (exact when the cells hold the embeddings as they are)."""
        if len(self.cells) == 1:
            cells = self.cells
        else:
            sims = self.centres @ emb
            cells = []
            for _ in range(min(probe, len(sims))):  # probe is small: argmax a few times beats a sort
                i = int(sims.argmax())
                cells.append(self.cells[i])
                sims[i] = -np.inf
        ids: list[str] = []
        cos: list[float] = []
        for cell in cells:
            n = len(cell.ids)
            if not n:
                continue
            sims = cell.rows[:n] @ emb
            if k == 1:
                j = int(sims.argmax())
                ids.append(cell.ids[j])
                cos.append(float(sims[j]))
            else:
                top = np.argpartition(sims, n - k)[n - k :] if n > k else range(n)
                ids += [cell.ids[j] for j in top]
                cos += [float(sims[j]) for j in top]
        return ids, cos

    def _split(self, i: int) -> None:
        """Cut cell ``i`` in two by 2-means (deterministic: seeded by its farthest rows)."""
        cell = self.cells[i]
        rows = cell.rows[: len(cell.ids)]
        mean = rows.mean(axis=0)
        a = rows[int(np.argmin(rows @ mean))]
        b = rows[int(np.argmin(rows @ a))]
        side = np.zeros(len(rows), dtype=bool)
        for _ in range(6):
            side = rows @ b > rows @ a
            if side.all() or not side.any():
                break
            a, b = _unit(rows[~side].mean(axis=0)), _unit(rows[side].mean(axis=0))
        if side.all() or not side.any():  # all alike: let it grow, try again at twice the size
            cell.split_at = 2 * len(cell.ids)
            return
        dim = rows.shape[1]
        left, right = _Cell(dim, self.cell_rows), _Cell(dim, self.cell_rows)
        for sid, row, s in zip(list(cell.ids), rows.copy(), side):
            (right if s else left).add(sid, row)
        for c in (left, right):
            for sid in c.ids:
                self.cell_of[sid] = c
        self.cells[i] = left
        self.cells.append(right)
        self.centres = np.vstack([self.centres[:i], a[None, :], self.centres[i + 1 :], b[None, :]]).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


class Space:
    """One namespace's entries. Its lookups read nothing else."""

    __slots__ = ("tenant", "user", "_cache", "_entries", "_exact", "_buckets")

    def __init__(self, tenant: str, user: str, cache: "AnswerCache") -> None:
        self.tenant, self.user = tenant, user
        self._cache = cache
        self._entries: dict[str, Entry] = {}
        self._exact: dict[bytes, str] = {}
        self._buckets: dict[tuple[bytes, int, int], _Bucket] = {}

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
        bucket = self._buckets.get((context_key, clustering, cluster))
        if bucket is None:
            return None
        ids, sims = bucket.candidates(self._cache._index(embedding), p.probe, p.verify)
        if not ids:
            return None
        if self._cache._index_dim(len(embedding)) != len(embedding):  # projected: the full cosines decide
            sims = list(np.stack([self._entries[i].embedding for i in ids]) @ embedding)
        j = max(range(len(ids)), key=sims.__getitem__)
        if sims[j] < p.similarity:
            return None
        return self._fresh(ids[j], "semantic", float(sims[j]), now_s)

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
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._cache._index_dim(len(entry.embedding)),
                                                  self._cache.params.cell_rows)  # fmt: skip
        bucket.add(sid, self._cache._index(entry.embedding))
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
        bucket = self._buckets[key]
        bucket.remove(sid)
        if not len(bucket):
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
        self._proj: dict[int, np.ndarray] = {}  # embedding dim -> (dim, index_dim) projection

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

    def _index_dim(self, dim: int) -> int:
        k = self.params.index_dim
        return dim if k <= 0 or k >= dim else k

    def _index(self, emb: np.ndarray) -> np.ndarray:
        """The embedding (d,) as the cells hold it: a fixed random projection to ``index_dim``
        dimensions, unit norm (Johnson-Lindenstrauss: near neighbours stay near), so a lookup
        reads a quarter of the bytes; candidates are then compared in full."""
        emb = np.asarray(emb, dtype=np.float32)
        d = len(emb)
        k = self._index_dim(d)
        if k == d:
            return emb
        proj = self._proj.get(d)
        if proj is None:  # seeded: the same projection in every process and run
            proj = self._proj[d] = (np.random.default_rng(14).standard_normal((d, k)) / np.sqrt(k)).astype(np.float32)
        low = emb @ proj
        return low / max(float(np.linalg.norm(low)), 1e-12)

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
