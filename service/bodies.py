"""Request bodies, decoded in one place: whatever the decoder cannot take is a 4xx that says why.

msgspec refuses a body in three ways: ``DecodeError`` (not JSON, invalid UTF-8, a lone UTF-16
surrogate), ``ValidationError`` (the wrong shape, a missing field, a number out of range) and,
for a body nested deeper than the interpreter's recursion limit, ``RecursionError``. Each POST
route decodes through ``decode_body``, so none of them can turn a client's bytes into a 500.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from service.errors import ApiError

__all__ = ["decode_body", "validation_error"]

T = TypeVar("T")

_LONE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_AT = re.compile(r" - at `(\$[^`]*)`$")
_FIELD = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]+)`")


def _param(message: str) -> str | None:
    """The JSON path a msgspec message points at; for a missing or unknown field, the field's own
    path (``$.model``, ``$.messages[0].role``) rather than the object that lacks or holds it."""
    at = _AT.search(message)
    path = at.group(1) if at else "$"
    field = _FIELD.match(message)
    if field:
        return f"{path}.{field.group(1)}"
    return path if at else None


def validation_error(exc: msgspec.MsgspecError, what: str) -> ApiError:
    """Map a msgspec failure to 400 (not JSON) or 422 (wrong shape; ``param`` names the field)."""
    if isinstance(exc, msgspec.ValidationError):
        msg = str(exc)
        return ApiError(422, f"invalid {what}: {msg}", param=_param(msg), code="invalid_value")
    return ApiError(400, f"{what} is not valid JSON: {exc}", code="invalid_json")


def _truncated(raw: bytes) -> str:
    if not raw.strip():
        return "the body is empty (send a JSON object)"
    if _LONE_SURROGATE.search(raw):  # msgspec reports an unpaired \ud800-\udfff escape as truncation
        return ("it holds a \\uD800-\\uDFFF escape that is not part of a surrogate pair, which is not a "
                "character; or it ends before the JSON value does")
    return "it ends before the JSON value does (truncated)"


def decode_body(decoder: msgspec.json.Decoder[T], raw: bytes, what: str) -> T:
    """``decoder.decode(raw)``, or an ``ApiError`` (400 or 422) naming what is wrong with the body."""
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        if str(exc) == "Input data was truncated":  # msgspec's word for three different mistakes
            raise ApiError(400, f"{what} is not valid JSON: {_truncated(raw)}", code="invalid_json") from None
        raise validation_error(exc, what) from None
    except msgspec.MsgspecError as exc:
        raise validation_error(exc, what) from None
    except RecursionError:
        raise ApiError(400, f"{what} is nested too deeply to decode", code="invalid_json") from None
    except Exception as exc:  # any other refusal of the decoder is about the bytes it was given
        raise ApiError(400, f"{what} cannot be decoded: {type(exc).__name__}: {exc}", code="invalid_json") from None
