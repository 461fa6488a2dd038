"""Structured logs: one JSON object a line, with the decision id when a record is about one.

Code logs with ``extra={"decision_id": ..., "tenant": ..., "model": ...}``; this formatter
lifts those fields to the top level. Keys and prompts are never passed to a logger.
"""

from __future__ import annotations

import logging
import time

import msgspec

__all__ = ["JsonFormatter", "use_json_logs"]

_FIELDS = ("decision_id", "tenant", "key_id", "model", "status", "fallbacks", "latency_ms")
_enc = msgspec.json.Encoder(enc_hook=str)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in _FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                out[field] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _enc.encode(out).decode()


def use_json_logs() -> None:
    """Switch the root logger's handlers to JSON lines."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())
