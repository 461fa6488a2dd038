"""The Litestar application: ``create_app(settings, deps)`` builds it; nothing at import time."""

from __future__ import annotations

import logging
from typing import Any, Callable

import anyio
import msgspec
from litestar import Litestar, Request, Response, get, post

from feedback.ports import EventSink
from service.chat import ChatService
from service.errors import ApiError, exception_handlers
from service.settings import Settings
from service.state import router_state

__all__ = ["Deps", "create_app"]

log = logging.getLogger("turnout.app")
_enc = msgspec.json.Encoder()


class Deps:
    """What the HTTP layer needs, built by the composition root (``service.runtime``)."""

    def __init__(self, chat: ChatService, sink: EventSink, extra_state: Callable[[], dict[str, Any]] | None = None) -> None:
        self.chat = chat
        self.sink = sink
        self.extra_state = extra_state or (lambda: {})


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=_enc.encode(obj), status_code=status, media_type="application/json")


def create_app(settings: Settings, deps: Deps) -> Litestar:
    chat = deps.chat

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request) -> Response:
        raw = await request.body()
        if b'"stream"' in raw:
            try:
                wants_stream = msgspec.json.decode(raw, type=_StreamFlag).stream
            except msgspec.MsgspecError:
                wants_stream = False
            if wants_stream:
                return await chat.stream(raw)
        return await chat.complete(raw)

    @post("/v1/feedback", status_code=202)
    async def feedback(request: Request) -> Response:
        body = chat.parse_feedback(await request.body())
        ref = chat.decisions.cached(body.decision_id)
        if ref is None:
            ref = await anyio.to_thread.run_sync(chat.decisions.lookup, body.decision_id)
        return _json(chat.feedback(body, ref), 202)

    @get("/v1/models")
    async def models() -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "turnout", "turnout_kind": "policy"}
                for name in chat.policies]  # fmt: skip
        data += [{"id": m.name, "object": "model", "created": 0, "owned_by": "turnout", "turnout_kind": "model"}
                 for m in chat.pool]  # fmt: skip
        return _json({"object": "list", "data": data})

    @get("/healthz")
    async def healthz() -> Response:
        view = chat.router.view
        backlog = getattr(deps.sink, "backlog", 0)
        return _json({"status": "ok", "snapshot_version": view.snapshot.version, "event_backlog": backlog})

    @get("/v1/router/state")
    async def state() -> Response:
        extra = {"event_backlog": getattr(deps.sink, "backlog", 0), "snapshots_rejected": chat.router.rejected}
        extra.update(deps.extra_state())
        return _json(router_state(chat.router.view, extra))

    return Litestar(
        route_handlers=[chat_completions, feedback, models, healthz, state],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=None,
        debug=False,
    )


class _StreamFlag(msgspec.Struct):
    stream: bool = False


