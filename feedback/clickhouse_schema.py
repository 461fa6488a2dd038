"""The ClickHouse schema: numbered migrations (``deploy/clickhouse/NNN_name.sql``) and retention.

``prepare`` is what every process that owns a connection runs at start: the migrations not yet
applied, then the configured TTLs, each changing only what differs (both idempotent, so
replicas starting together are harmless).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

__all__ = ["MIGRATIONS_DIR", "apply_retention", "migrate", "prepare"]

log = logging.getLogger("turnout.clickhouse")

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "clickhouse"


def _statements(sql: str) -> list[str]:
    sql = re.sub(r"--[^\n]*", "", sql)
    return [s.strip() for s in sql.split(";") if s.strip()]


def migrate(client: Any, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the numbered ``NNN_name.sql`` files not yet applied, in order. Returns their names."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
        "applied_at DateTime DEFAULT now()) ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations").result_rows}
    applied = []
    for path in sorted(directory.glob("[0-9][0-9][0-9]_*.sql")):
        version = int(path.name[:3])
        if version in done:
            continue
        for stmt in _statements(path.read_text()):
            client.command(stmt)
        client.insert("schema_migrations", [[version, path.name]], column_names=["version", "name"])
        applied.append(path.name)
        log.info("applied migration %s", path.name)
    return applied


_RETENTION_COLUMNS = {"decisions": "ts", "feedback": "ts", "dead_letters": "received_at"}


def apply_retention(client: Any, days: Mapping[str, int]) -> dict[str, int]:
    """Give each table a TTL of ``days`` on its time column (0: none), changing only what differs.

    days: table -> days, for the tables with a time column (decisions, feedback, dead_letters).
    Returns the tables changed, with their new days. A changed TTL applies to existing rows at
    the next merge (ClickHouse's ``materialize_ttl_after_modify``).
    """
    changed = {}
    for table, d in days.items():
        column = _RETENTION_COLUMNS[table]
        if d < 0:
            raise ValueError(f"retention for {table} must be >= 0 days, got {d}")
        ddl = client.query("SELECT create_table_query FROM system.tables WHERE database = currentDatabase() "
                           "AND name = {t:String}", parameters={"t": table}).result_rows[0][0]  # fmt: skip
        now = re.search(r" TTL toDateTime\(\w+\) \+ toIntervalDay\((\d+)\)", ddl)
        current = int(now.group(1)) if now else (-1 if " TTL " in ddl else 0)
        if current == d:
            continue
        if d > 0:
            client.command(f"ALTER TABLE {table} MODIFY TTL toDateTime({column}) + INTERVAL {int(d)} DAY")
        else:
            client.command(f"ALTER TABLE {table} REMOVE TTL")
        changed[table] = d
        log.info("retention of %s: %s", table, f"{d} days" if d else "forever")
    return changed


def prepare(client: Any, retention: Mapping[str, int]) -> tuple[list[str], dict[str, int]]:
    """Migrate, then apply retention. Returns (migrations applied, tables whose TTL changed)."""
    return migrate(client), apply_retention(client, retention)
