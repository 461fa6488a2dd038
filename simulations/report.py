"""What a replay achieved: the router, each single model and the oracle in the cost-quality plane.

``evaluate`` turns replay runs (one per cost weight) into a ``ReplayReport``: mean quality and
cost of everything, the three non-decreasing convex hulls (single models, i.e. the "zero
router"; oracle; router), AIQ over the single models' cost range, the share of the
zero-to-oracle gap the router captures, and RouteLLM's APGR / CPT when the pool has two models.
"""

from __future__ import annotations

from typing import Sequence

import msgspec
import numpy as np

from simulations.frontier import aiq, apgr, cpt, gap_share, hull, hull_at
from simulations.outcomes import Outcomes
from simulations.replay import ReplayRun

__all__ = [
    "Point", "ReplayReport", "break_even", "evaluate", "gap_share_by_part", "markdown", "oracle_point", "sweep_weights",
]  # fmt: skip


class Point(msgspec.Struct, frozen=True):
    name: str
    cost_usd: float
    quality: float
    cost_weight: float | None = None


class TwoModel(msgspec.Struct, frozen=True):
    weak: str
    strong: str
    apgr: float
    cpt50: float
    cpt80: float


class ReplayReport(msgspec.Struct, frozen=True):
    prompts: int
    routed: int
    models: tuple[str, ...]
    single: tuple[Point, ...]
    oracle: tuple[Point, ...]  # the oracle at each router cost weight
    router: tuple[Point, ...]  # one per cost weight replayed
    hull_zero: tuple[tuple[float, float], ...]
    hull_oracle: tuple[tuple[float, float], ...]
    hull_router: tuple[tuple[float, float], ...]
    cost_range: tuple[float, float]
    aiq_zero: float
    aiq_oracle: float
    aiq_router: float
    gap_share: float  # of AIQ: (router - zero) / (oracle - zero)
    gap_share_at_cost: tuple[float, ...]  # per router point, against the hulls at its cost
    two_model: TwoModel | None = None
    router_last_pass: tuple[Point, ...] = ()  # with several passes: the last pass alone (learned, less exploring)
    n_clusters: tuple[int, ...] = ()
    seconds: float = 0.0
    settings: dict[str, object] = {}  # the deployment settings and replay options this ran with


def _choices(outcomes: Outcomes, weight: float) -> np.ndarray:
    """The per-prompt oracle's pick at a cost weight: best score - weight * cost, cheapest on ties."""
    s = np.where(outcomes.available, outcomes.scores, -np.inf)
    c = np.where(outcomes.available, outcomes.costs, 0.0)
    scale = max(float(np.nanmax(outcomes.costs)), 1e-12)
    return np.argmax(s - weight * c - 1e-9 * c / scale, axis=1)


def oracle_point(outcomes: Outcomes, weight: float) -> tuple[float, float]:
    """(mean cost, mean quality) of the per-prompt oracle at ``weight``."""
    a = _choices(outcomes, weight)
    r = np.arange(len(a))
    return float(outcomes.costs[r, a].mean()), float(outcomes.scores[r, a].mean())


def single_points(outcomes: Outcomes) -> list[Point]:
    return [
        Point(name, float(np.nanmean(outcomes.costs[:, j])), float(np.nanmean(outcomes.scores[:, j])))
        for j, name in enumerate(outcomes.models)
    ]


SWEEP = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)  # multiples of the break-even weight


def break_even(outcomes: Outcomes) -> float:
    """The cost weight at which the best single model and the cheapest one have equal utility
    (quality difference / cost difference); 0 when the best is the cheapest or costs are alike."""
    pts = single_points(outcomes)
    best = max(pts, key=lambda p: (p.quality, -p.cost_usd))
    cheap = min(pts, key=lambda p: (p.cost_usd, -p.quality))
    dc = best.cost_usd - cheap.cost_usd
    return (best.quality - cheap.quality) / dc if dc > 1e-15 and best.quality > cheap.quality else 0.0


def sweep_weights(outcomes: Outcomes) -> np.ndarray:
    """The cost weights of a sweep: u x (0, 0.1, 0.3, 1, 3, 10), u the break-even weight; only 0
    when models are priced alike."""
    u = break_even(outcomes)
    return np.array([0.0]) if u <= 0 else u * np.array(SWEEP)


def gap_share_by_part(outcomes: Outcomes, runs: Sequence[tuple[float, ReplayRun]], parts: int = 4) -> tuple[float, ...]:
    """The share of the AIQ gap over each of ``parts`` consecutive stretches of the stream: the
    learning curve. Each stretch is scored like a file of its own prompts (its single models, its
    oracle), so the first shows what exploring cost and the last what was learned. The runs must
    have routed the same prompts in the same order (one shuffle, several cost weights)."""
    order = runs[0][1].rows
    if any(len(r.rows) != len(order) or (r.rows != order).any() for _, r in runs):
        raise ValueError("the runs routed different prompts or orders: one shuffle is needed")
    out = []
    for k in range(parts):
        lo, hi = k * len(order) // parts, (k + 1) * len(order) // parts
        cut = [(w, msgspec.structs.replace(
            r, rows=np.arange(hi - lo), arms=r.arms[lo:hi], clusters=r.clusters[lo:hi],
            propensities=r.propensities[lo:hi], rewards=r.rewards[lo:hi], costs=r.costs[lo:hi],
            cheap=None if r.cheap is None else r.cheap[lo:hi],
            escalated=None if r.escalated is None else r.escalated[lo:hi])) for w, r in runs]  # fmt: skip
        out.append(evaluate(outcomes.take(order[lo:hi]), cut).gap_share)
    return tuple(out)


def evaluate(outcomes: Outcomes, runs: Sequence[tuple[float, ReplayRun]], seconds: float = 0.0) -> ReplayReport:
    """Compare runs (cost weight as configured, run) with the single models and the oracle."""
    single = single_points(outcomes)
    pts = np.array([[p.cost_usd, p.quality] for p in single])
    lo, hi = float(pts[:, 0].min()), float(pts[:, 0].max())
    cheapest = pts[int(np.argmin(pts[:, 0]))]
    scale = break_even(outcomes) or 1.0 / max(float(pts[:, 0].mean()), 1e-12)
    grid = np.unique(np.concatenate([scale * np.geomspace(1e-3, 1e3, 41), [0.0], [w for w, _ in runs]]))
    orc_pts = np.array([oracle_point(outcomes, w) for w in grid])
    router = [Point("router", r.mean_cost, r.mean_quality, w) for w, r in runs]
    r_pts = np.array([[p.cost_usd, p.quality] for p in router])
    h_zero, h_orc = hull(pts), hull(orc_pts)
    # a team can always send traffic to the cheapest model, so the router's family includes it
    h_router = hull(np.vstack([r_pts, cheapest]))
    a_zero, a_orc, a_router = aiq(h_zero, lo, hi), aiq(h_orc, lo, hi), aiq(h_router, lo, hi)
    at_cost = tuple(
        gap_share(p.quality, float(hull_at(h_zero, np.array([p.cost_usd]))[0]),
                  float(hull_at(h_orc, np.array([p.cost_usd]))[0]))
        for p in router
    )  # fmt: skip
    two = None
    if len(outcomes.models) == 2:
        strong = int(np.argmax(pts[:, 1]))
        weak = 1 - strong
        share = np.array([float((r.arms == strong).mean()) for _, r in runs])
        q = r_pts[:, 1]
        wq, sq = float(pts[weak, 1]), float(pts[strong, 1])
        two = TwoModel(outcomes.models[weak], outcomes.models[strong], apgr(share, q, wq, sq),
                       cpt(share, q, wq, sq, 0.5), cpt(share, q, wq, sq, 0.8))  # fmt: skip
    oracle = tuple(Point("oracle", *oracle_point(outcomes, w), w) for w, _ in runs)
    n = len(outcomes)
    last = tuple(Point("router, last pass", float(r.costs[-n:].mean()), float(r.rewards[-n:].mean()), w)
                 for w, r in runs if len(r.rewards) > n)  # fmt: skip
    return ReplayReport(
        prompts=len(outcomes),
        routed=sum(len(r.arms) for _, r in runs),
        models=outcomes.models,
        single=tuple(single),
        oracle=oracle,
        router=tuple(router),
        hull_zero=tuple(map(tuple, h_zero.tolist())),
        hull_oracle=tuple(map(tuple, h_orc.tolist())),
        hull_router=tuple(map(tuple, h_router.tolist())),
        cost_range=(lo, hi),
        aiq_zero=a_zero,
        aiq_oracle=a_orc,
        aiq_router=a_router,
        # models priced alike (the cost range is a point): the share of the quality gap between the
        # best single model and the oracle, at the router's own points
        gap_share=gap_share(a_router, a_zero, a_orc) if hi - lo > 1e-9 * max(hi, 1e-12) else float(np.mean(at_cost)),
        gap_share_at_cost=at_cost,
        two_model=two,
        router_last_pass=last,
        n_clusters=tuple(r.n_clusters for _, r in runs),
        seconds=seconds,
    )


def _usd(x: float) -> str:
    return f"{x * 1000:.4f}"


def markdown(report: ReplayReport) -> str:
    """The report as Markdown: a table of points, then the frontier summary."""
    lines = ["| policy | cost weight | mean quality | mean cost (mUSD) | gap share at cost |", "|---|---:|---:|---:|---:|"]
    for p, g in zip(report.router, report.gap_share_at_cost):
        lines.append(f"| router | {p.cost_weight:g} | {p.quality:.4f} | {_usd(p.cost_usd)} | {g:+.3f} |")
    for p in report.router_last_pass:
        lines.append(f"| router, last pass | {p.cost_weight:g} | {p.quality:.4f} | {_usd(p.cost_usd)} | |")
    for p in report.oracle:
        lines.append(f"| oracle | {p.cost_weight:g} | {p.quality:.4f} | {_usd(p.cost_usd)} | |")
    for p in sorted(report.single, key=lambda p: p.cost_usd):
        lines.append(f"| {p.name} | | {p.quality:.4f} | {_usd(p.cost_usd)} | |")
    lines += [
        "",
        f"prompts {report.prompts}, routed {report.routed}, clusters {', '.join(map(str, report.n_clusters))}",
        f"AIQ over {_usd(report.cost_range[0])}..{_usd(report.cost_range[1])} mUSD: zero router {report.aiq_zero:.4f}, "
        f"oracle {report.aiq_oracle:.4f}, router {report.aiq_router:.4f}",
        f"share of the zero-to-oracle AIQ gap captured: {report.gap_share:+.3f}",
    ]
    if report.two_model is not None:
        t = report.two_model
        lines.append(f"two models (weak {t.weak}, strong {t.strong}): APGR {t.apgr:.3f}, "
                     f"CPT(50%) {t.cpt50:.3f}, CPT(80%) {t.cpt80:.3f}")  # fmt: skip
    if report.seconds:
        lines.append(f"{report.routed} prompts routed in {report.seconds:.1f} s")
    if report.settings:
        lines += ["", "settings:"] + [f"  {k}: {_flat(v)}" for k, v in report.settings.items()]
    return "\n".join(lines)


def _flat(v: object) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_flat(x)}" for k, x in v.items())
    return str(v)
