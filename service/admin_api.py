"""The admin API's routes, ``/v1/admin/...``: thin handlers over ``service.admin.Admin``.

    GET  /v1/admin/snapshots                      newest first, the live one marked (?limit=20)
    GET  /v1/admin/snapshots/{version}            one snapshot: posteriors, traffic, budgets, drift
    POST /v1/admin/snapshots/{version}/rollback   a new snapshot that routes as {version}; live here at once
    GET  /v1/admin/learner                        last and next cycle, watermark, what the last cycle saw, drift
    POST /v1/admin/learner/cycle                  one learning cycle now (``turnout learn --once``)
    POST /v1/admin/ope                            off-policy evaluation of a candidate on the logged decisions
    GET  /v1/admin/config                         the effective configuration, secrets redacted
    GET  /v1/admin/clusters                       what each cluster is about (?window_s=3600 of stored prompts)

Every route needs an admin key when keys are configured (``service.tenants.AdminGate``); store
reads and writes run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import anyio
import msgspec
from litestar import Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec

from learner.admin import LearnedNow, LearnerStatus, Rollback, SnapshotDetail, SnapshotList
from learner.snapshot import SnapshotError
from service.admin import Admin
from service.bodies import decode_body
from service.clusters_about import ClusterAbout
from service.errors import ApiError
from service.openapi import body_operation
from service.tenants import AdminGate

__all__ = ["admin_routes"]

_enc = msgspec.json.Encoder()
_TAGS = ["admin"]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=_enc.encode(obj), status_code=status, media_type="application/json")


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer", param=name) from None
    if not low <= value <= high:
        raise ApiError(422, f"{name} must be in [{low}, {high}]", param=name)
    return value


def _spec(struct: Any, what: str) -> dict[int, ResponseSpec]:
    return {200: ResponseSpec(data_container=struct, description=what, generate_examples=False)}


def admin_routes(admin: Admin, gate: AdminGate, clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> list:
    """The route handlers of the admin API over ``admin``, each behind ``gate``."""

    def guard(request: Request) -> None:
        gate.check(request.headers.get("authorization"))

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        return await anyio.to_thread.run_sync(fn, *args)

    @get("/v1/admin/snapshots", tags=_TAGS, summary="Snapshots, newest first, the live one marked",
         responses=_spec(SnapshotList, "the snapshot history"))  # fmt: skip
    async def snapshots(request: Request) -> Response:
        guard(request)
        return _json(await off_loop(admin.snapshots, _int(request, "limit", 20, 1, 10_000)))

    async def _on_version(request: Request, op: Callable[[int], Any]) -> Response:
        """``op`` on the snapshot version of the path; an unknown or unreadable version is a 404."""
        guard(request)
        try:
            return _json(await off_loop(op, request.path_params["version"]))
        except (LookupError, SnapshotError) as exc:
            raise ApiError(404, str(exc).strip("'\""), param="version", code="not_found") from None

    @get("/v1/admin/snapshots/{version:int}", tags=_TAGS, summary="One snapshot: posteriors, traffic, budgets, drift",
         responses=_spec(SnapshotDetail, "the snapshot"))  # fmt: skip
    async def snapshot(request: Request) -> Response:
        return await _on_version(request, admin.snapshot)

    @post("/v1/admin/snapshots/{version:int}/rollback", tags=_TAGS, status_code=200,
          summary="Publish a new snapshot that routes as {version} did; live in this process at once",
          responses=_spec(Rollback, "the new snapshot"))  # fmt: skip
    async def rollback(request: Request) -> Response:
        return await _on_version(request, admin.rollback)

    @get("/v1/admin/learner", tags=_TAGS, summary="The learner: last and next cycle, watermark, last window, drift",
         responses=_spec(LearnerStatus, "the learner's status"))  # fmt: skip
    async def learner(request: Request) -> Response:
        guard(request)
        return _json(await off_loop(admin.status))

    @post("/v1/admin/learner/cycle", tags=_TAGS, status_code=200, summary="Run one learning cycle now",
          responses=_spec(LearnedNow, "the snapshot the cycle ended on"))  # fmt: skip
    async def cycle(request: Request) -> Response:
        guard(request)
        return _json(await off_loop(admin.learn))

    routes = [snapshots, snapshot, rollback, learner, cycle]
    if admin.ope is not None and admin.candidate is not None:
        evaluate, candidate = admin.ope, admin.candidate
        decoder = msgspec.json.Decoder(candidate)

        @post("/v1/admin/ope", tags=_TAGS, status_code=200, operation_class=body_operation(candidate),
              summary="Off-policy evaluation (IPS, SNIPS, DR) of a candidate on the logged decisions")  # fmt: skip
        async def ope(request: Request) -> Response:
            guard(request)
            body = decode_body(decoder, await request.body() or b"{}", "candidate")
            try:
                return _json(await off_loop(evaluate, body))
            except ValueError as exc:
                raise ApiError(422, str(exc), code="invalid_value") from None

        routes.append(ope)

    @get("/v1/admin/config", tags=_TAGS, summary="The effective configuration, secrets redacted")
    async def config(request: Request) -> Response:
        guard(request)
        return _json(admin.config())

    @get("/v1/admin/clusters", tags=_TAGS, summary="What each cluster of the live snapshot is about",
         responses=_spec(list[ClusterAbout], "per cluster, the nearest examples and stored prompts"))  # fmt: skip
    async def clusters(request: Request) -> Response:
        guard(request)
        window_ms = _int(request, "window_s", 3600, 1, 90 * 86400) * 1000
        now = clock_ms()
        return _json(await off_loop(admin.clusters, now - window_ms, now + 1))

    return [*routes, config, clusters]
