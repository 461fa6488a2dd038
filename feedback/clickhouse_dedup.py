"""Exactly-once inserts into ClickHouse, also when sink replicas race on the same records.

Kafka delivers at least once, so the same event can reach the row store twice: a batch re-read
after a sink crash, a batch the producer sent again after a lost acknowledgement or a spill
replay, and, during a rebalance, the same uncommitted records held by two sink replicas at
once. ReplacingMergeTree collapses such rows only eventually (at a merge), and the learner reads
by ingestion time, so a copy inserted later would be counted in a later window. Two mechanisms
together make sure a duplicate never becomes a row:

1. **The id check** (``fresh``): before inserting, look up which ids of the batch are stored and
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
more than the inserts of one race; a copy arriving after the window passed is caught by 1.

The check reads the table's sorting key. Ids are UUIDv7 (time-ordered), so the ids of a batch
fall into a few narrow key ranges; a range scan over those is several times cheaper than an
``IN`` list of thousands of literals. Ids that are not UUIDv7, or a batch spread over too long a
time (an old spill replayed), fall back to ``IN``.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable, Sequence, TypeVar

__all__ = ["fresh", "insert_once", "stored_ids"]

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


def stored_ids(client: Any, table: str, column: str, ids: Sequence[str]) -> set[str]:
    """The members of ``ids`` present in ``table.column`` (which should be its sorting key)."""
    if not ids:
        return set()
    ranges = _ranges(sorted(ids))
    if ranges is None:
        sql = f"SELECT {column} FROM {table} WHERE {column} IN {{ids:Array(String)}}"
        params: dict[str, Any] = {"ids": list(ids)}
    else:
        where = " OR ".join(f"({column} >= {{lo{i}:String}} AND {column} <= {{hi{i}:String}})" for i in range(len(ranges)))
        sql = f"SELECT {column} FROM {table} WHERE {where}"
        params = {}
        for i, (lo, hi) in enumerate(ranges):
            params[f"lo{i}"], params[f"hi{i}"] = lo, hi
    wanted = set(ids)
    return {row[0] for row in client.query(sql, parameters=params).result_rows if row[0] in wanted}


def fresh(client: Any, table: str, column: str, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
    """``items`` without those whose key is stored already or repeats an earlier item's key."""
    seen: set[str] = set()
    unique = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            unique.append(item)
    if not unique:
        return unique
    present = stored_ids(client, table, column, list(seen))
    return [item for item in unique if key(item) not in present] if present else unique


Write = Callable[[list[T], str, dict[str, Any]], None]


def insert_once(client: Any, table: str, column: str, items: Sequence[T], key: Callable[[T], str],
                streams: Sequence[str], write: Write[T]) -> int:  # fmt: skip
    """Store each of ``items`` exactly once in ``table``, also against writers racing on the same items.

    ``column`` is the table's sorting key and ``key(item)`` its value; ``streams[i]`` names the
    stream ``items[i]`` was read from (a Kafka topic and partition; items of one stream in its
    order). ``write(block, insert_id, settings)`` inserts one block as one INSERT, with
    ``insert_id`` in every row and ``settings`` on the query. Returns the rows this call wrote.
    """
    pending = list(zip(items, streams, strict=True))
    written = 0
    while True:
        pending = fresh(client, table, column, pending, key=lambda p: key(p[0]))
        if not pending:
            return written
        blocks: dict[str, list[T]] = {}
        for item, stream in pending:
            blocks.setdefault(stream, []).append(item)
        insert_id = uuid.uuid4().hex
        for block in blocks.values():
            write(block, insert_id, {"insert_deduplicate": 1, "insert_deduplication_token": f"{table}:{key(block[0])}"})
        firsts = {key(block[0]): stream for stream, block in blocks.items()}
        won = {row[0] for row in client.query(
            f"SELECT DISTINCT {column} FROM {table} WHERE {column} IN {{ids:Array(String)}} AND insert_id = {{iid:String}}",
            parameters={"ids": list(firsts), "iid": insert_id}).result_rows}  # fmt: skip
        lost = [stream for first, stream in firsts.items() if first not in won]
        written += sum(len(blocks[s]) for s in blocks if s not in lost)
        if not lost:
            return written
        log.info("%s: %d of %d blocks were stored by a racing writer first; checking their events again",
                 table, len(lost), len(blocks))  # fmt: skip
        pending = [(item, stream) for stream in lost for item in blocks[stream]]
