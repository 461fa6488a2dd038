"""The ClickHouse connection: clickhouse-connect on the embedded engine (``chdb:///path``) or a
server (``http(s)://host:port``), the same code for both."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from feedback.chdb_lock import StoreLocked, holder_pid

__all__ = ["connect"]


def connect(dsn: str, database: str = "") -> Any:
    """A clickhouse-connect client for ``chdb:///path`` or ``http(s)://host:port``.

    ``database`` is created if missing (one chDB engine path per process can hold many
    databases). For a server, user and password come from TURNOUT_CLICKHOUSE_USER / _PASSWORD.
    A chDB directory another process holds raises ``StoreLocked`` (``feedback.chdb_lock``).
    """
    import clickhouse_connect

    kwargs: dict[str, Any] = {"dsn": dsn}
    if dsn.startswith("chdb://"):
        path = dsn[len("chdb://") :]
        if path:
            pid = holder_pid(path)
            if pid is not None:  # the engine would print its own error and raise a long traceback
                raise StoreLocked(path, pid)
            Path(path).mkdir(parents=True, exist_ok=True)
    else:
        if os.environ.get("TURNOUT_CLICKHOUSE_USER"):
            kwargs["username"] = os.environ["TURNOUT_CLICKHOUSE_USER"]
        if os.environ.get("TURNOUT_CLICKHOUSE_PASSWORD"):
            kwargs["password"] = os.environ["TURNOUT_CLICKHOUSE_PASSWORD"]
    if database and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise ValueError(f"clickhouse database name {database!r} is not a plain identifier")
    try:
        if database:
            admin = clickhouse_connect.get_client(**kwargs)
            admin.command(f"CREATE DATABASE IF NOT EXISTS {database}")
            kwargs["database"] = database
        return clickhouse_connect.get_client(**kwargs)
    except Exception as exc:
        # the race the check above cannot close: another process locked the directory between
        # the check and the engine's open (two services starting at once)
        path = dsn[len("chdb://") :] if dsn.startswith("chdb://") else ""
        if path and ("Cannot lock file" in str(exc) or holder_pid(path) is not None):
            raise StoreLocked(path, holder_pid(path) or 0) from None
        raise
