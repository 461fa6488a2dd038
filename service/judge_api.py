"""The admin API of the judge and shadow routing (docs/judge.md):

    GET /v1/admin/judge    the background queue, budgets, counts, and the judge's calibration
                           against explicit thumbs (?window_s=86400)
    GET /v1/admin/shadow   per cluster: leakage against the reference or candidate (with a Wilson
                           interval), the cost saved against it, and a candidate snapshot's
                           agreement with the routed model (?window_s=86400)

Both behind the admin gate; the reports are ClickHouse SQL (``feedback/clickhouse_judge.py``) run
in a worker thread, present only where this process holds the store (else ``null``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import anyio
import msgspec
from litestar import Request, Response, get

from feedback.clickhouse_judge import calibration, leakage
from service.errors import ApiError
from service.evaluation import Evaluation
from service.settings import Settings
from service.tenants import AdminGate

__all__ = ["admin_gate_of", "judge_deps", "judge_routes", "shadow_report"]

_enc = msgspec.json.Encoder()
_TAGS = ["admin"]


def admin_gate_of(settings: Settings) -> AdminGate:
    return AdminGate(settings.server.admin_key_sha256, [h for t in settings.tenants for h in t.api_key_sha256])


def _window_ms(request: Request) -> int:
    raw = request.query_params.get("window_s", "86400")
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "window_s must be an integer", param="window_s") from None
    if not 1 <= value <= 400 * 86400:
        raise ApiError(422, f"window_s must be in [1, {400 * 86400}]", param="window_s")
    return value * 1000


_QUERIES = threading.Lock()  # one report query at a time on a process's connection


def shadow_report(client: Any) -> Callable[[int], list[Any]]:
    """Leakage per cluster since a time, on ``client``: what the dashboard shows."""

    def report(since_ms: int) -> list[Any]:
        with _QUERIES:
            return leakage(client, since_ms)

    return report


def judge_routes(evaluation: Evaluation | None, client: Any, gate: AdminGate, agree_at: float,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> list:  # fmt: skip
    def query(fn: Callable[..., Any], *args: Any) -> Any:
        with _QUERIES:
            return fn(client, *args)

    def stats() -> dict[str, Any]:  # off in this process: no background work, but the store's reports still hold
        return {"enabled": False} if evaluation is None else {"enabled": True, **evaluation.stats()}

    @get("/v1/admin/judge", tags=_TAGS, summary="The judge: queue, budget, counts, agreement with thumbs")
    async def judge(request: Request) -> Response:
        gate.check(request.headers.get("authorization"))
        since = clock_ms() - _window_ms(request)
        out = stats()
        out["calibration"] = None if client is None else await anyio.to_thread.run_sync(query, calibration, since, agree_at)
        return Response(content=_enc.encode(out), media_type="application/json")

    @get("/v1/admin/shadow", tags=_TAGS, summary="Shadow routing: leakage and cost saved per cluster")
    async def shadow(request: Request) -> Response:
        gate.check(request.headers.get("authorization"))
        since = clock_ms() - _window_ms(request)
        out: dict[str, Any] = {"enabled": stats().get("shadow") is not None, "shadow": stats().get("shadow")}
        out["clusters"] = None if client is None else await anyio.to_thread.run_sync(query, leakage, since)
        return Response(content=_enc.encode(out), media_type="application/json")

    return [judge, shadow]


def judge_deps(evaluation: Evaluation | None, client: Any, gate: AdminGate, agree_at: float = 0.5) -> dict[str, Any]:
    """The ``service.app.Deps`` fields of the evaluation: its admin routes (served with the judge off
    too: the reports read the store, which may hold grades of an earlier run) and its shutdown."""
    routes = tuple(judge_routes(evaluation, client, gate, agree_at))
    return {"routes": routes} if evaluation is None else {"routes": routes, "on_shutdown": (evaluation.aclose,)}
