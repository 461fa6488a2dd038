"""``POST /v1/chat/completions`` as a raw ASGI handler: the request path without framework work.

The handler reads the body and sends the answer itself. Measured in-process, a Litestar ``@post``
handler costs about 100 us a request before doing anything, an ``@asgi`` handler about 13 us;
at a few hundred requests a second on two cores that difference is the headroom. ``ChatFirst``
goes one step further: it is the application the server runs, and hands this one route its
requests before Litestar's routing and middleware see them (the rest, and any request of this
route it does not take, go through Litestar, which routes to the same handler). Its OpenAPI
operation is added by ``chat_path_item`` (Litestar documents only ``@post``-style handlers).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Callable

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, PathItem

from service.bodies import decode_body
from service.chat import Answer, ChatService, StreamAnswer
from service.errors import ApiError, error_of
from service.tenants import Caller

__all__ = ["CHAT_PATH", "ChatFirst", "chat_endpoint", "chat_path_item"]

CHAT_PATH = "/v1/chat/completions"
# the Host values Litestar accepts (litestar/_asgi/utils.py): any other goes to Litestar, which refuses it
_HOST = re.compile(rb"\A[0-9A-Za-z!$&'()*+,;=\-._~:\[\]@%]*\Z", re.IGNORECASE)


class _StreamFlag(msgspec.Struct):
    stream: bool = False


_stream_flag = msgspec.json.Decoder(_StreamFlag)


async def _read_body(receive: Any, limit: int, declared: str | None) -> bytes | None:
    """The whole body, or None if the client left before sending it."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body too large: more than {limit} bytes", code="request_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body too large: more than {limit} bytes", code="request_too_large")
        chunks.append(chunk)
        if not msg.get("more_body"):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _raw_headers(media_type: bytes, headers: dict[str, str], length: int | None = None) -> list[tuple[bytes, bytes]]:
    out = [(b"content-type", media_type)]
    if length is not None:
        out.append((b"content-length", str(length).encode()))
    out += [(k.encode(), v.encode()) for k, v in headers.items()]
    return out


async def _send_json(send: Any, answer: Answer) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": _raw_headers(b"application/json", answer.headers, len(answer.body))})  # fmt: skip
    await send({"type": "http.response.body", "body": answer.body})


async def _send_stream(send: Any, receive: Any, answer: StreamAnswer) -> None:
    """Send SSE frames as they come; stop (and close the upstream stream) if the client leaves."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    headers = _raw_headers(b"text/event-stream", {**answer.headers, "cache-control": "no-cache"})
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for frame in answer.chunks:
            if watcher.done():
                break
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        watcher.cancel()
        await answer.chunks.aclose()  # type: ignore[attr-defined]


def chat_endpoint(chat: ChatService, caller_of: Callable[[dict[str, str]], Caller], max_body_bytes: int) -> Any:
    """The ASGI callable for ``/v1/chat/completions``."""

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            raise ApiError(405, "use POST for /v1/chat/completions", headers={"allow": "POST"})
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        caller = caller_of(headers)
        raw = await _read_body(receive, max_body_bytes, headers.get("content-length"))
        if raw is None:
            return
        if b'"stream"' in raw:
            try:
                wants_stream = decode_body(_stream_flag, raw, "request body").stream
            except ApiError:
                wants_stream = False  # complete() reports the error precisely
            if wants_stream:
                return await _send_stream(send, receive, await chat.stream(raw, caller, headers, started))
        await _send_json(send, await chat.complete(raw, caller, headers, started))

    return endpoint


class ChatFirst:
    """The ASGI application: ``POST /v1/chat/completions`` straight to ``endpoint``, the rest to ``litestar``.

    Litestar's routing, Host check and exception middleware cost 35-60 us of CPU a request, 8-10%
    of a chat request's CPU in-process (measured interleaved in one process on a loaded 2-core
    machine). Here they are a few lines for the one hot route: the exact path without a root path
    and with a Host header Litestar accepts (anything else goes through Litestar), and an error
    raised before the answer starts becomes the answer Litestar's handlers give (``error_of``).
    """

    def __init__(self, litestar: Any, endpoint: Callable[[Any, Any, Any], Any]) -> None:
        self.litestar = litestar
        self._endpoint = endpoint

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != CHAT_PATH or scope.get("root_path") or not _host_ok(scope):
            return await self.litestar(scope, receive, send)
        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._endpoint(scope, receive, sending)
        except Exception as exc:
            if started:  # too late for an error answer: the server closes the connection
                raise
            status, body, headers = error_of(exc)
            await send({"type": "http.response.start", "status": status,
                        "headers": _raw_headers(b"application/json", headers, len(body))})  # fmt: skip
            await send({"type": "http.response.body", "body": body})


def _host_ok(scope: Any) -> bool:
    for name, value in scope["headers"]:
        if name == b"host":
            return _HOST.match(value) is not None
    return True


def chat_path_item(request_operation: type[Operation]) -> PathItem:
    """The OpenAPI description of the route, with the request body of ``request_operation``."""
    json = {"application/json": OpenAPIMediaType()}
    operation = request_operation(
        operation_id="CreateChatCompletion",
        summary="Create a chat completion (OpenAI-compatible); model may be a policy such as 'auto'",
        tags=["chat"],
        responses={
            "200": OpenAPIResponse(description="A chat.completion, or server-sent chat.completion.chunk events "
                                   "when stream is true", content={**json, "text/event-stream": OpenAPIMediaType()}),
            "400": OpenAPIResponse(description="Invalid request or no model may serve it", content=json),
            "401": OpenAPIResponse(description="Missing or unknown API key", content=json),
            "404": OpenAPIResponse(description="Unknown model", content=json),
            "413": OpenAPIResponse(description="Request body too large", content=json),
            "422": OpenAPIResponse(description="Request body of the wrong shape", content=json),
            "429": OpenAPIResponse(description="Rate limit of the key exceeded (see Retry-After)", content=json),
            "502": OpenAPIResponse(description="Every candidate model failed", content=json),
            "503": OpenAPIResponse(description="Every candidate model unavailable (see Retry-After)", content=json),
        },
    )  # fmt: skip
    return PathItem(post=operation)
