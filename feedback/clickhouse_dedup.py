"""Idempotent inserts into ClickHouse: which ids of a batch are stored already.

Kafka delivers at least once, so the same event can reach the row store twice: a batch re-read
after a sink crash, a batch the producer sent again after a lost acknowledgement or a spill
replay. ReplacingMergeTree collapses such rows only eventually (at a merge), and the learner
reads by ingestion time, so a copy inserted later would be counted in a later window. Hence the
row store checks, under its lock and before inserting, which ids are present and inserts only
the others: a duplicate never becomes a row.

The check reads the table's sorting key. Ids are UUIDv7 (time-ordered), so the ids of a batch
fall into a few narrow key ranges; a range scan over those is several times cheaper than an
``IN`` list of thousands of literals. Ids that are not UUIDv7, or a batch spread over too long a
time (an old spill replayed), fall back to ``IN``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

__all__ = ["fresh", "stored_ids"]

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
