"""Exactly-once inserts into ClickHouse, also when sink replicas race on the same records.

Kafka delivers at least once, so the same event can reach the row store twice: a batch re-read
after a sink crash, a batch the producer sent again after a lost acknowledgement or a spill
replay, and, during a rebalance, the same uncommitted records held by two sink replicas at
once. ReplacingMergeTree collapses such rows only eventually (at a merge), and the learner reads
by ingestion time, so a copy inserted later would be counted in a later window. Two mechanisms
together make sure a duplicate never becomes a row:

1. **The id check**: before inserting, look up which ids of the batch are stored and
   drop those (and repeats inside the batch). This catches every copy that arrives after the
   first was stored, whatever the batch boundaries, offsets or time in between.
2. **Deduplication tokens** (``insert_once``): what the check cannot see is a racing writer that
   checked at the same moment. So each insert is one block per *stream* (a Kafka partition),
   holding that stream's fresh events in the stream's order, with ``insert_deduplication_token``
   = table and the block's first event id. Two replicas racing on a partition both start at the
   first record neither saw stored, so they send the same token; ClickHouse keeps the first
   block and drops the other, atomically on the server (the tables' deduplication window,
   migration 040). Each row carries the ``insert_id`` of the insert that wrote it: a writer
   whose first event is not stored under its own ``insert_id`` lost the race, checks that
   block's events again and inserts what the winner's block did not hold (under the next token).

Why two replicas always meet on the same token: a sink reads a partition in offset order from
a position before which everything is stored (a committed offset, or the end of the batch it
stored itself). If two written blocks overlapped but began at different offsets, the later start
would have been reached past records the earlier block holds, i.e. through a third written
block overlapping the earlier one further back; descending, some pair would have to start at the
same offset, and those share a token. The window covers the last 10,000 blocks per table, far
more than the inserts of one race; a copy arriving after the window passed is caught by 1. A
token can outlive its rows (deleted by a TTL or an operator while still in the window): a block
dropped although its first event is not stored is sent again under a token of its own.

The check reads the table's sorting key. Ids are UUIDv7 (time-ordered), so the ids of a batch
fall into a few narrow key ranges; a range scan over those is several times cheaper than an
``IN`` list of thousands of literals. Ids that are not UUIDv7, or a batch spread over too long a
time (an old spill replayed), fall back to ``IN``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable, NamedTuple, Sequence, TypeVar

__all__ = ["TableRows", "insert_once", "stored_ids"]

log = logging.getLogger("turnout.clickhouse")

T = TypeVar("T")

_GAP_MS = 1000  # ids further apart than this start a new key range
_MAX_SPAN_MS = 2000  # no range covers more than this
_MAX_RANGES = 8


def _uuid7_ms(value: str) -> int | None:
    if len(value) != 36 or value[14] != "7":
        return None
    try:
        return int(value[:8] + value[9:13], 16)
    except ValueError:
        return None


def _ranges(ids_sorted: Sequence[str]) -> list[tuple[str, str]] | None:
    """Narrow [lo, hi] key ranges covering time-ordered ids, or None (use ``IN``)."""
    ranges: list[list[Any]] = []  # [lo, hi, lo_ms, hi_ms]
    for value in ids_sorted:
        ms = _uuid7_ms(value)
        if ms is None:
            return None
        if ranges and ms - ranges[-1][3] <= _GAP_MS and ms - ranges[-1][2] <= _MAX_SPAN_MS:
            ranges[-1][1], ranges[-1][3] = value, ms
        else:
            if len(ranges) == _MAX_RANGES:
                return None
            ranges.append([value, value, ms, ms])
    return [(r[0], r[1]) for r in ranges]


def _lookup_sql(table: str, column: str, ids: Sequence[str], tag: int) -> tuple[str, dict[str, Any]]:
    """A SELECT of (tag, key) for the members of ``ids`` in ``table``: key ranges, or ``IN``."""
    ranges = _ranges(sorted(ids))
    if ranges is None:
        return (f"SELECT {tag} AS t, {column} AS k FROM {table} WHERE {column} IN {{ids{tag}:Array(String)}}",
                {f"ids{tag}": list(ids)})  # fmt: skip
    where = " OR ".join(f"({column} >= {{lo{tag}_{i}:String}} AND {column} <= {{hi{tag}_{i}:String}})"
                        for i in range(len(ranges)))  # fmt: skip
    params = {}
    for i, (lo, hi) in enumerate(ranges):
        params[f"lo{tag}_{i}"], params[f"hi{tag}_{i}"] = lo, hi
    return f"SELECT {tag} AS t, {column} AS k FROM {table} WHERE {where}", params


def _union(client: Any, parts: list[tuple[str, dict[str, Any]]], n: int) -> list[set[str]]:
    """Run the tagged SELECTs as one query; the keys found per tag 0..n-1."""
    found: list[set[str]] = [set() for _ in range(n)]
    if parts:
        params = {k: v for _, p in parts for k, v in p.items()}
        for tag, key in client.query(" UNION ALL ".join(sql for sql, _ in parts), parameters=params).result_rows:
            found[int(tag)].add(key)
    return found


def stored_ids(client: Any, table: str, column: str, ids: Sequence[str]) -> set[str]:
    """The members of ``ids`` present in ``table.column`` (which should be its sorting key)."""
    if not ids:
        return set()
    return _union(client, [_lookup_sql(table, column, ids, 0)], 1)[0] & set(ids)


Write = Callable[[list[T], str, dict[str, Any]], None]


class TableRows(NamedTuple):
    """Items bound for one table, each with the stream it was read from (in the stream's order)."""

    table: str
    column: str  # the table's sorting key
    key: Callable[[Any], str]  # an item's value of ``column``
    write: Write  # write(block, insert_id, settings): one INSERT with insert_id in every row
    items: list[tuple[Any, str]]  # (item, stream)


def _fresh(client: Any, tables: Sequence[TableRows], pending: list[list[tuple[Any, str]]]) -> list[list[tuple[Any, str]]]:
    """Per table, the pending items whose key is not stored and does not repeat an earlier one's."""
    unique: list[list[tuple[Any, str]]] = []
    for t, items in zip(tables, pending):
        firsts = {}
        for p in items:
            firsts.setdefault(t.key(p[0]), p)
        unique.append(list(firsts.values()))
    parts = [_lookup_sql(t.table, t.column, [t.key(p[0]) for p in items], i)
             for i, (t, items) in enumerate(zip(tables, unique)) if items]  # fmt: skip
    stored = _union(client, parts, len(tables))
    return [[p for p in items if t.key(p[0]) not in s] for t, items, s in zip(tables, unique, stored)]


def _owners(client: Any, tables: Sequence[TableRows], firsts: list[list[str]], insert_id: str) -> list[dict[str, bool]]:
    """Per table, each stored key of ``firsts`` -> whether a row of it was written by ``insert_id``."""
    parts = [f"SELECT {i} AS t, {t.column} AS k, insert_id = {{iid:String}} AS mine FROM {t.table} "
             f"WHERE {t.column} IN {{ids{i}:Array(String)}}" for i, t in enumerate(tables) if firsts[i]]  # fmt: skip
    owners: list[dict[str, bool]] = [{} for _ in tables]
    if parts:
        params: dict[str, Any] = {f"ids{i}": keys for i, keys in enumerate(firsts) if keys}
        params["iid"] = insert_id
        for tag, key, mine in client.query(" UNION ALL ".join(parts), parameters=params).result_rows:
            owners[int(tag)][key] = owners[int(tag)].get(key, False) or bool(mine)
    return owners


_MAX_ROUNDS = 50  # each round stores or drops at least one block's first item; far more than a race needs


def insert_once(client: Any, tables: Sequence[TableRows]) -> int:
    """Store each item exactly once in its table, also against writers racing on the same items.

    Per round: one query finds what is stored (all tables), one INSERT per (table, stream) writes
    the rest with its token, one query finds which blocks were ours; the items of blocks a racing
    writer's block replaced go round again. A block dropped although its first item is not stored
    (the rows of that token were deleted since, e.g. by a TTL, and the token is still in the
    window) is sent again under a token of its own. Returns the rows this call wrote.
    """
    pending = [list(t.items) for t in tables]
    stale: set[str] = set()  # "table:key" tokens that name rows no longer stored
    written = 0
    for _ in range(_MAX_ROUNDS):
        pending = _fresh(client, tables, pending)
        if not any(pending):
            return written
        insert_id = uuid.uuid4().hex
        firsts: list[dict[str, tuple[str, list[Any]]]] = []  # per table: first key -> (stream, block)
        for t, items in zip(tables, pending):
            blocks: dict[str, list[Any]] = {}
            for item, stream in items:
                blocks.setdefault(stream, []).append(item)
            for block in blocks.values():
                token = f"{t.table}:{t.key(block[0])}"
                if token in stale:
                    token += f":{insert_id}"
                t.write(block, insert_id, {"insert_deduplicate": 1, "insert_deduplication_token": token})
            firsts.append({t.key(block[0]): (stream, block) for stream, block in blocks.items()})
        owners = _owners(client, tables, [list(f) for f in firsts], insert_id)
        pending, lost = [], 0
        for t, f, owner in zip(tables, firsts, owners):
            again = []
            for k, (stream, block) in f.items():
                if owner.get(k):
                    written += len(block)
                    continue
                if k not in owner:
                    stale.add(f"{t.table}:{k}")
                lost += 1
                again += [(item, stream) for item in block]
            pending.append(again)
        if not lost:
            return written
        log.info("%d blocks were not stored by this insert (a racing writer's block came first, or the token "
                 "was stale); checking their items again", lost)  # fmt: skip
    raise RuntimeError(f"insert_once: items still pending after {_MAX_ROUNDS} rounds")
