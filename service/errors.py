"""Errors as OpenAI-style JSON bodies: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from service.schemas import ErrorBody, ErrorDetail

__all__ = ["ApiError", "error_body", "error_of", "exception_handlers"]

log = logging.getLogger("turnout.http")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error"}  # fmt: skip
_enc = msgspec.json.Encoder()


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return _enc.encode(ErrorBody(ErrorDetail(message=message, type=kind, param=param, code=code)))


def error_of(exc: Exception) -> tuple[int, bytes, dict[str, str]]:
    """The status, JSON body and headers an exception is answered with (an unexpected one is logged)."""
    if isinstance(exc, ApiError):
        return exc.status, error_body(exc.status, exc.message, exc.param, exc.code), exc.headers
    if isinstance(exc, HTTPException):
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if status == 413:
            detail = f"request body too large: {detail}"
        return status, error_body(status, detail), getattr(exc, "headers", None) or {}
    log.exception("unhandled error: %s", exc)
    return 500, error_body(500, "internal error"), {}


def _not_found(request: Request) -> str:
    path = request.url.path
    if path.startswith("/v1/admin/snapshots/"):  # the one route that takes a number
        return f"no route {request.method} {path}: a snapshot is named by its version, an integer: /v1/admin/snapshots/3"
    return f"no route {request.method} {path} (the routes: GET /schema/openapi.json)"


def _handler(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code == 404 and exc.detail == "Not Found":
        exc = ApiError(404, _not_found(request))
    elif isinstance(exc, HTTPException) and exc.status_code == 405:
        allow = (getattr(exc, "headers", None) or {}).get("allow", "")
        exc = ApiError(405, f"{request.method} is not served on {request.url.path}" + (f": use {allow}" if allow else ""),
                       headers={"allow": allow} if allow else None)  # fmt: skip
    status, body, headers = error_of(exc)
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


exception_handlers = {ApiError: _handler, HTTPException: _handler, Exception: _handler}
