"""The effective configuration as an operator may see it: every setting, no secret.

What the process runs with (file, ``TURNOUT_`` overrides, defaults, ``--data-dir``), with key
digests (tenants' and admin), any password in the ClickHouse DSN, and the values of the
providers' key variables left out: of a key variable, only its name and whether it is set.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import msgspec

from service.settings import Settings

__all__ = ["REDACTED", "effective_config"]

REDACTED = "<redacted>"


def _dsn(dsn: str) -> str:
    """The DSN without the password of its user part (``http://user:secret@host`` -> ``user:<redacted>``)."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{REDACTED}@{host}"))


def _digests(digests: list[str]) -> str | list[str]:
    return f"{REDACTED} ({len(digests)} keys)" if digests else []


def effective_config(settings: Settings, env: Mapping[str, str]) -> dict[str, Any]:
    """``settings`` as JSON-ready builtins with secrets redacted; ``env``: where key variables live."""
    out: dict[str, Any] = msgspec.to_builtins(settings)
    out["server"]["admin_key_sha256"] = _digests(out["server"]["admin_key_sha256"])
    out["storage"]["clickhouse_dsn"] = _dsn(out["storage"]["clickhouse_dsn"])
    for tenant in out["tenants"]:
        tenant["api_key_sha256"] = _digests(tenant["api_key_sha256"])
    for model in out["models"]:
        var = model.get("api_key_env", "")
        model["api_key_set"] = bool(var and env.get(var))  # the variable's name is no secret, its value is
    return out
