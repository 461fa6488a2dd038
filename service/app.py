"""The Litestar application: ``create_app(settings, deps)`` builds it; nothing at import time.

What it returns is the application the server runs: ``service.fastpath.ChatFirst``, which hands
``POST /v1/chat/completions`` to its raw handler before Litestar's routing and passes everything
else to the Litestar app (``.litestar``).

Routes: ``POST /v1/chat/completions``, ``POST /v1/feedback``, ``GET /v1/models``,
``GET /v1/router/state``, ``GET /healthz`` (liveness), ``GET /readyz`` (readiness: 503 once the
process is stopping), ``GET /metrics`` (Prometheus text) and the OpenAPI document at
``/schema/openapi.json``. With API keys configured, the ``/v1`` routes need
``Authorization: Bearer``; ``/healthz``, ``/readyz``, ``/metrics`` and ``/schema`` do not.
The admin API (``/v1/admin/...``, ``service/admin_api.py``) has keys of its own.
"""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any, Callable, Mapping

import anyio
import msgspec
from litestar import Litestar, Request, Response, asgi, get, post

from feedback.ports import EventSink
from service.admin import Admin
from service.admin_api import admin_routes
from service.chat import ChatService, PolicyWeights, PoolModel
from service.dashboard import DashboardSources, dashboard_routes
from service.decisions import DecisionIndex
from service.errors import ApiError, exception_handlers
from service.fastpath import CHAT_PATH, ChatFirst, chat_endpoint, chat_path_item
from service.failover import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from service.feedback_api import FeedbackDesk, parse_feedback
from service.metrics import Registry
from service.openapi import body_operation, openapi_config
from service.routing import Router
from service.schemas import ChatRequest, FeedbackRequest
from service.settings import Settings
from service.state import router_state
from service.tenants import AdminGate, Caller, TenantDirectory
from service.upstream import Upstream

__all__ = ["Deps", "create_app"]

log = logging.getLogger("turnout.app")
_enc = msgspec.json.Encoder()
_CIRCUIT_CODE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class Deps(msgspec.Struct, frozen=True, kw_only=True):
    """What the HTTP layer needs, built by the composition root (``service.runtime``)."""

    chat: ChatService  # POST /v1/chat/completions
    router: Router  # the live snapshot: health, state, gauges, dashboard
    metrics: Registry
    breakers: Mapping[str, CircuitBreaker]  # the failover's, one per model
    decisions: DecisionIndex  # recent decisions, for feedback on them
    feedback: FeedbackDesk
    pool: tuple[PoolModel, ...]
    policies: Mapping[str, PolicyWeights]
    aliases: frozenset[str]  # model names that rules pin (service.rules)
    upstreams: Mapping[str, Upstream]  # closed at shutdown
    sink: EventSink
    tenants: TenantDirectory = msgspec.field(default_factory=lambda: TenantDirectory([]))
    extra_state: Callable[[], dict[str, Any]] = lambda: {}
    dashboard: DashboardSources | None = None  # issue 7: what /dashboard reads (service/dashboard.py)
    admin: Admin | None = None  # issue 11: what /v1/admin/... does (service/admin.py); None: no admin API
    admin_gate: AdminGate = msgspec.field(default_factory=lambda: AdminGate(()))
    # set when the process stops: /readyz answers 503 (service/serving.py)
    draining: threading.Event = msgspec.field(default_factory=threading.Event)
    routes: tuple[Any, ...] = ()  # more route handlers (issue 13: /v1/admin/judge, /v1/admin/shadow)
    on_shutdown: tuple[Callable[[], Any], ...] = ()  # more shutdown hooks (issue 13: the background queue)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=_enc.encode(obj), status_code=status, media_type="application/json")


def _circuits(breakers: Mapping[str, CircuitBreaker]) -> dict[str, dict[str, Any]]:
    return {
        name: {"state": b.state, "retry_in_s": round(b.retry_in_s(), 3), "opened": b.opened}
        for name, b in breakers.items()
    }


def _spill_bytes(sink: EventSink) -> float:
    stats = getattr(sink, "stats", None)
    return float(stats().get("spill_bytes", 0)) if callable(stats) else 0.0


def _register_gauges(deps: Deps) -> None:
    m, router, breakers, sink = deps.metrics, deps.router, deps.breakers, deps.sink

    def posterior_means():
        view = router.view
        for c in range(view.mean.shape[0]):
            for j, model in enumerate(view.models):
                yield (str(c), model), float(view.mean[c, j])

    m.add_gauge("turnout_posterior_mean", "Posterior mean answer quality per cluster and model.",
                ("cluster", "model"), posterior_means)  # fmt: skip
    m.add_gauge("turnout_circuit_state", "Circuit breaker per provider: 0 closed, 1 half-open, 2 open.", ("model",),
                lambda: [((n, ), _CIRCUIT_CODE[b.state]) for n, b in breakers.items()])  # fmt: skip
    m.add_gauge("turnout_circuit_opened", "Times each provider's circuit opened.", ("model",),
                lambda: [((n,), b.opened) for n, b in breakers.items()])  # fmt: skip
    m.add_gauge("turnout_snapshot_version", "Version of the live snapshot.", (),
                lambda: [((), router.view.snapshot.version)])  # fmt: skip
    m.add_gauge("turnout_event_backlog", "Events accepted and not yet stored or acknowledged.", (),
                lambda: [((), getattr(sink, "backlog", 0))])  # fmt: skip
    m.add_gauge("turnout_event_spill_bytes", "Bytes of events spilled to disk while the broker is away.", (),
                lambda: [((), _spill_bytes(sink))])  # fmt: skip
    m.add_gauge("turnout_gc_collections", "Garbage collections of this process by generation (a generation-2 "
                "one pauses every request for as long as it reads the heap).", ("generation",),
                lambda: [((str(g),), s["collections"]) for g, s in enumerate(gc.get_stats())])  # fmt: skip
    m.add_gauge("turnout_gc_frozen_objects", "Objects set aside from garbage collection when serving began "
                "(service/serving.py).", (), lambda: [((), gc.get_freeze_count())])  # fmt: skip


def create_app(settings: Settings, deps: Deps) -> ChatFirst:
    router, pool, policies, tenants = deps.router, deps.pool, deps.policies, deps.tenants
    _register_gauges(deps)
    rejected = deps.metrics.rejected

    def caller_of(source: Request | Mapping[str, str]) -> Caller:
        """The authenticated, rate-limited caller of a request (or of its headers)."""
        headers = source.headers if isinstance(source, Request) else source
        try:
            caller = tenants.authenticate(headers.get("authorization"))
            tenants.throttle(caller)
        except ApiError as exc:
            rejected.inc("unauthorized" if exc.status == 401 else "rate_limited")
            raise
        return caller

    chat_body = body_operation(ChatRequest, {
        "model": {"enum": [*policies, *(m.name for m in pool), *sorted(deps.aliases)]},
        "messages": {"contains": {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"const": "user"}, "content": {"type": "string", "pattern": "\\S"}}}},
    })  # fmt: skip
    chat = chat_endpoint(deps.chat, caller_of, settings.server.max_body_bytes)
    chat_completions = asgi(CHAT_PATH, is_mount=False, copy_scope=False)(chat)

    @post("/v1/feedback", status_code=202, operation_class=body_operation(FeedbackRequest))
    async def feedback(request: Request) -> Response:
        caller = caller_of(request.headers)
        body = parse_feedback(await request.body())
        ref = deps.decisions.cached(body.decision_id)
        if ref is None:
            ref = await anyio.to_thread.run_sync(deps.decisions.lookup, body.decision_id)
        return _json(deps.feedback.accept(body, ref, caller), 202)

    @get("/v1/models")
    async def models(request: Request) -> Response:
        caller = caller_of(request.headers)
        allowed = set(caller.tenant.models) or {m.name for m in pool}
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "turnout", "turnout_kind": "policy"}
                for name in policies]  # fmt: skip
        data += [{"id": m.name, "object": "model", "created": 0, "owned_by": "turnout", "turnout_kind": "model"}
                 for m in pool if m.name in allowed]  # fmt: skip
        return _json({"object": "list", "data": data})

    @get("/healthz")
    async def healthz() -> Response:
        view = router.view
        backlog = getattr(deps.sink, "backlog", 0)
        return _json({"status": "ok", "snapshot_version": view.snapshot.version, "event_backlog": backlog})

    @get("/readyz")
    async def readyz() -> Response:
        if deps.draining.is_set():
            return _json({"status": "draining"}, 503)
        return _json({"status": "ready", "snapshot_version": router.view.snapshot.version})

    @get("/v1/router/state")
    async def state(request: Request) -> Response:
        caller_of(request.headers)
        extra = {"event_backlog": getattr(deps.sink, "backlog", 0), "snapshots_rejected": router.rejected,
                 "circuits": _circuits(deps.breakers)}  # fmt: skip
        extra.update(deps.extra_state())
        return _json(router_state(router.view, extra))

    @get("/metrics", media_type="text/plain; version=0.0.4")
    async def metrics() -> Response:
        # Litestar appends "; charset=utf-8" to text/ types: naming it here sent it twice
        return Response(content=deps.metrics.render(), media_type="text/plain; version=0.0.4")

    async def close_upstreams() -> None:
        for upstream in deps.upstreams.values():
            try:
                await upstream.aclose()
            except Exception:  # shutting down: a provider that fails to close must not stop the rest
                log.warning("closing upstream failed", exc_info=True)

    app = Litestar(
        route_handlers=[chat_completions, feedback, models, healthz, readyz, state, metrics,
                        *dashboard_routes(router, deps.dashboard, caller_of),  # issue 7: /dashboard, /v1/router/history
                        *(admin_routes(deps.admin, deps.admin_gate) if deps.admin else ()),  # issue 11: /v1/admin/...
                        *deps.routes],
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=openapi_config(),
        on_shutdown=[*deps.on_shutdown, close_upstreams],
        logging_config=None,  # logging belongs to the process (service.cli, service.logs), not the app
        debug=False,
    )
    app.openapi_schema.paths[CHAT_PATH] = chat_path_item(chat_body)  # an @asgi route: add its docs
    return ChatFirst(app, chat)
