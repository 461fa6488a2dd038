"""Errors as OpenAI-style JSON bodies: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from service.schemas import ErrorBody, ErrorDetail

__all__ = ["ApiError", "exception_handlers", "error_response"]

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


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    body = ErrorBody(ErrorDetail(message=message, type=kind, param=param, code=code))
    return Response(content=_enc.encode(body), status_code=status, media_type="application/json", headers=headers)


def _api_error(_: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)


def _http_error(_: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if status == 413:
        detail = f"request body too large: {detail}"
    return error_response(status, detail, headers=getattr(exc, "headers", None))


def _internal_error(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error: %s", exc)
    return error_response(500, "internal error")


exception_handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
