"""The operators' dashboard: ``GET /dashboard`` and its data, ``GET /v1/router/history``.

The page (``service/static/``: plain HTML, JS and CSS, no CDN, no build step) polls two JSON
endpoints and draws SVG charts: ``/v1/router/state`` (the live snapshot: posterior means with
credible intervals per cluster) and ``/v1/router/history`` (built here): per time bucket the
share of traffic per (cluster, model), the decisions per prompt language and which models served
each, the cost per request against always sending everything
to the most expensive model, mean margins, with snapshot versions and drift events to mark on
them, circuit breaker states, and what each cluster is about (``service.clusters_about``).

``dashboard_routes(router, sources)`` returns the route handlers; ``service.app.create_app``
adds them. Every source is optional: what is missing shows as "n/a", never as an error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import anyio
import msgspec
from litestar import Request, Response, get

from feedback.history import HistoryStore, Prices, TrafficBucket
from learner.ports import SnapshotInfo, SnapshotStore
from service.clusters_about import ClusterAbout, ClusterTexts, PromptScope
from service.errors import ApiError
from service.routing import Router

if TYPE_CHECKING:
    from learner.ports import DriftEvent  # what the learner log returns

__all__ = ["DashboardSources", "RouterHistory", "clickhouse_sources", "dashboard_routes", "router_history"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
_MAX_BUCKETS = 500
_MAX_WINDOW_S = 30 * 86400.0
_CACHE_MS = 1000
_enc = msgspec.json.Encoder()


class DashboardSources:
    """What the dashboard reads beside the live snapshot; each may be None (shown as n/a).

    ``drift(limit)`` returns recent drift events, newest first; ``breakers()`` maps a model to
    its circuit breaker state (closed, open, half_open); ``about`` describes the clusters.
    """

    def __init__(self, history: HistoryStore | None = None, snapshots: SnapshotStore | None = None,
                 drift: Callable[[int], Sequence[DriftEvent]] | None = None,
                 breakers: Callable[[], dict[str, str]] | None = None,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
                 about: ClusterTexts | None = None, shadow: Callable[[int], Sequence[Any]] | None = None) -> None:  # fmt: skip
        self.history = history
        self.shadow = shadow  # issue 13: leakage and cost saved per cluster since a time (feedback/clickhouse_judge.py)
        self.snapshots = snapshots
        self.drift = drift
        self.breakers = breakers
        self.clock_ms = clock_ms
        self.about = about


def clickhouse_sources(client: Any, snapshots: SnapshotStore | None,
                       breakers: Callable[[], dict[str, str]] | None = None,
                       drift: Callable[[int], Sequence[DriftEvent]] | None = None,
                       examples: Sequence[str] = (), embed: Callable[[list[str]], Any] | None = None,
                       prompts: PromptScope = PromptScope()) -> DashboardSources:  # fmt: skip
    """The dashboard's sources over a ClickHouse client (None: the rows are elsewhere, e.g. in
    memory, and no traffic history is shown). Clusters are described by ``examples`` (embedded
    with ``embed``) and by stored prompts within the scope of ``prompts``."""
    from feedback.clickhouse_history import ClickHouseHistory

    history = ClickHouseHistory(client) if client is not None else None
    return DashboardSources(history=history, snapshots=snapshots, drift=drift, breakers=breakers,
                            about=ClusterTexts(examples, embed, history, prompts))  # fmt: skip


class ClusterTraffic(msgspec.Struct, frozen=True):
    """One cluster's traffic per bucket (``cluster`` -1: all clusters of every clustering)."""

    cluster: int
    decisions: list[int]
    share: dict[str, list[float]]  # model -> its share of the bucket's decisions (0 when none)
    margin: list[float | None]  # mean margin of the bucket's decisions


class LanguageTraffic(msgspec.Struct, frozen=True):
    """The window's decisions of one prompt language ("" not detected), most frequent first."""

    language: str
    decisions: int
    share: float  # of the window's decisions
    models: dict[str, float]  # model -> its share of this language's decisions (models that had some)


class CostSeries(msgspec.Struct, frozen=True):
    answered: list[int]
    cost_per_request_usd: list[float | None]
    counterfactual_per_request_usd: list[float | None]  # always the most expensive model
    total_usd: float
    counterfactual_total_usd: float
    saving: float | None  # 1 - total / counterfactual total


class SnapshotMark(msgspec.Struct, frozen=True):
    version: int
    at_ms: int
    reason: str


class DriftMark(msgspec.Struct, frozen=True):
    at_ms: int
    kind: str
    clusters: list[int]
    model: str
    old_value: float
    new_value: float
    action: str
    version: int


class RouterHistory(msgspec.Struct, frozen=True):
    since_ms: int
    until_ms: int
    bucket_ms: int
    buckets: list[int]  # bucket start times
    models: list[str]
    clustering: int  # the live snapshot's: ``clusters`` are of this clustering
    decisions: int
    overall: ClusterTraffic
    clusters: list[ClusterTraffic]
    cost: CostSeries
    snapshots: list[SnapshotMark]
    drift: list[DriftMark] | None  # None: no drift log wired
    breakers: dict[str, str] | None  # None: no breaker registry wired
    about: list[ClusterAbout] | None = None  # per cluster of the live snapshot; None: not wired
    languages: list[LanguageTraffic] = []
    shadow: list[Any] | None = None  # per cluster, leakage against the reference (ClusterLeakage); None: no shadow


def _traffic(cluster: int, rows: Sequence[TrafficBucket], index: dict[int, int], models: list[str]) -> ClusterTraffic:
    n = len(index)
    decisions = [0] * n
    margin_sum = [0.0] * n
    counts = {m: [0] * n for m in models}
    for r in rows:
        i = index[r.bucket_ms]
        decisions[i] += r.decisions
        margin_sum[i] += r.margin_sum
        counts[r.model][i] += r.decisions
    share = {m: [c[i] / decisions[i] if decisions[i] else 0.0 for i in range(n)] for m, c in counts.items()}
    margin = [margin_sum[i] / decisions[i] if decisions[i] else None for i in range(n)]
    return ClusterTraffic(cluster, decisions, share, margin)


def _languages(rows: Sequence[TrafficBucket]) -> list[LanguageTraffic]:
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        per = counts.setdefault(r.language, {})
        per[r.model] = per.get(r.model, 0) + r.decisions
    total = sum(sum(per.values()) for per in counts.values())
    out = []
    for lang, per in counts.items():
        n = sum(per.values())
        if n:
            models = {m: c / n for m, c in sorted(per.items(), key=lambda kv: (-kv[1], kv[0])) if c}
            out.append(LanguageTraffic(lang, n, n / total, models))
    return sorted(out, key=lambda t: (-t.decisions, t.language))


def router_history(
    rows: Sequence[TrafficBucket],
    *,
    models: Sequence[str],
    clustering: int,
    since_ms: int,
    until_ms: int,
    bucket_ms: int,
    snapshots: Sequence[SnapshotInfo] = (),
    drift: Sequence[DriftEvent] | None = None,
    breakers: dict[str, str] | None = None,
    about: list[ClusterAbout] | None = None,
    shadow: list[Any] | None = None,
) -> RouterHistory:
    """Shape traffic buckets (``since_ms`` a multiple of ``bucket_ms``) into per-bucket series."""
    buckets = list(range(since_ms, until_ms, bucket_ms))
    index = {b: i for i, b in enumerate(buckets)}
    rows = [r for r in rows if r.bucket_ms in index]
    names = list(models) + sorted({r.model for r in rows} - set(models))  # models no longer in the pool
    current = [r for r in rows if r.clustering == clustering]
    cluster_ids = sorted({r.cluster for r in current})
    n = len(buckets)
    answered, cost, cf = [0] * n, [0.0] * n, [0.0] * n
    for r in rows:
        i = index[r.bucket_ms]
        answered[i] += r.answered
        cost[i] += r.cost_usd
        cf[i] += r.max_cost_usd
    total, cf_total = sum(cost), sum(cf)
    return RouterHistory(
        since_ms=since_ms, until_ms=until_ms, bucket_ms=bucket_ms, buckets=buckets, models=names,
        clustering=clustering, decisions=sum(r.decisions for r in rows),
        overall=_traffic(-1, rows, index, names),
        clusters=[_traffic(c, [r for r in current if r.cluster == c], index, names) for c in cluster_ids],
        cost=CostSeries(
            answered=answered,
            cost_per_request_usd=[cost[i] / answered[i] if answered[i] else None for i in range(n)],
            counterfactual_per_request_usd=[cf[i] / answered[i] if answered[i] else None for i in range(n)],
            total_usd=total, counterfactual_total_usd=cf_total,
            saving=1.0 - total / cf_total if cf_total > 0 else None,
        ),
        snapshots=sorted((SnapshotMark(s.version, s.created_at_ms, s.reason) for s in snapshots
                          if since_ms <= s.created_at_ms < until_ms), key=lambda s: s.version),
        drift=None if drift is None else sorted(
            (DriftMark(e.at_ms, e.kind, list(e.clusters), e.model, e.old_value, e.new_value, e.action, e.version)
             for e in drift if since_ms <= e.at_ms < until_ms), key=lambda e: e.at_ms),
        breakers=breakers, about=about, languages=_languages(rows), shadow=shadow,
    )  # fmt: skip


def _number(request: Request, name: str, default: float, kind: type) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be a number", param=name) from None


def _window(now_ms: int, window_s: float, buckets: int) -> tuple[int, int, int]:
    """(since, until, bucket width): whole buckets ending with the one holding ``now_ms``."""
    if not 0 < window_s <= _MAX_WINDOW_S:
        raise ApiError(422, f"window_s must be in (0, {_MAX_WINDOW_S:g}]", param="window_s")
    if not 1 <= buckets <= _MAX_BUCKETS:
        raise ApiError(422, f"buckets must be in [1, {_MAX_BUCKETS}]", param="buckets")
    width = max(1000, -(-int(window_s * 1000) // buckets))
    until = (now_ms // width + 1) * width
    return until - buckets * width, until, width


def dashboard_routes(router: Router, sources: DashboardSources | None,
                     guard: Callable[[Request], Any] | None = None) -> list[Any]:
    """The dashboard's route handlers, reading the live view of ``router`` and ``sources``.

    ``guard(request)`` authenticates a data request (raises ``ApiError``), as for the other
    ``/v1`` routes; the page and its script are static and public.
    """
    sources = sources or DashboardSources()
    page = (STATIC_DIR / "dashboard.html").read_bytes()
    assets = {name: (STATIC_DIR / name).read_bytes() for name in _ASSETS}
    no_cache = {"Cache-Control": "no-cache"}

    @get("/dashboard")
    async def dashboard() -> Response:
        return Response(content=page, media_type="text/html", headers=no_cache)  # Litestar adds "; charset=utf-8"

    @get([f"/dashboard/{name}" for name in _ASSETS])
    async def asset(request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[1]
        return Response(content=assets[name], media_type=_ASSETS[name], headers=no_cache)

    def collect(window_s: float, buckets: int, breakers: dict[str, str] | None) -> RouterHistory:
        since, until, width = _window(sources.clock_ms(), window_s, buckets)
        view = router.view
        pricing = router.pricing
        prices = Prices(pricing.price_in_per_mtok, pricing.price_out_per_mtok)
        rows = sources.history.traffic(since, until, width, prices) if sources.history else []
        return router_history(
            rows, models=view.models, clustering=view.snapshot.clustering, since_ms=since, until_ms=until,
            bucket_ms=width, snapshots=sources.snapshots.list(500) if sources.snapshots else (),
            drift=sources.drift(500) if sources.drift else None,
            breakers=breakers, about=sources.about.about(view.snapshot, since, until) if sources.about else None,
            shadow=list(sources.shadow(since)) if sources.shadow else None,
        )  # fmt: skip

    # many open dashboards cost one query per window and second, not one per page and poll
    cache: dict[tuple[float, int], tuple[int, bytes]] = {}

    @get("/v1/router/history")
    async def history(request: Request) -> Response:
        if guard is not None:
            guard(request)
        key = (_number(request, "window_s", 3600.0, float), int(_number(request, "buckets", 60, int)))
        now = sources.clock_ms()
        hit = cache.get(key)
        if hit is None or now - hit[0] >= _CACHE_MS:
            # breakers belong to the event loop: read them here, the stores in a worker thread
            breakers = sources.breakers() if sources.breakers else None
            body = _enc.encode(await anyio.to_thread.run_sync(collect, key[0], key[1], breakers))
            if len(cache) > 64:
                cache.clear()
            hit = cache[key] = (now, body)
        return Response(content=hit[1], media_type="application/json", headers=no_cache)

    return [dashboard, asset, history]
