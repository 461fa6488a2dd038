"""The cost-quality plane: non-decreasing convex hulls, AIQ, and RouteLLM's APGR and CPT.

A point is (mean cost per request in USD, mean quality). A family of points (single models,
a router at several cost weights, the oracle at several cost weights) reaches every point of
its non-decreasing convex hull by mixing its members at random, and no more; spending beyond
its best point buys nothing, so the hull is flat from there on.

References: Hu et al., RouterBench (arXiv 2403.12031), AIQ; Ong et al., RouteLLM
(arXiv 2406.18665), APGR and CPT.
"""

from __future__ import annotations

import numpy as np

__all__ = ["aiq", "apgr", "cpt", "gap_share", "hull", "hull_at"]


def hull(points: np.ndarray) -> np.ndarray:
    """Non-decreasing upper convex hull of points (n, 2) -> vertices (h, 2), by increasing cost.

    It starts at the cheapest point (the best of those at that cost) and ends at the cheapest
    point of highest quality.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(p) == 0:
        raise ValueError("hull of no points")
    p = p[np.lexsort((-p[:, 1], p[:, 0]))]  # by cost, best quality first among equal costs
    best = int(np.argmax(p[:, 1]))  # first index of the highest quality = its cheapest point
    p = p[: best + 1]
    out: list[np.ndarray] = []
    for q in p:
        if out and q[0] == out[-1][0]:
            continue
        while len(out) >= 2:
            (x1, y1), (x2, y2) = out[-2], out[-1]
            if (x2 - x1) * (q[1] - y1) - (y2 - y1) * (q[0] - x1) >= 0:  # out[-1] is not above the chord
                out.pop()
            else:
                break
        out.append(q)
    return np.array(out)


def hull_at(vertices: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """The hull's quality at ``cost`` (flat to the right of its last vertex, and to the left of its first)."""
    return np.interp(cost, vertices[:, 0], vertices[:, 1])


def aiq(vertices: np.ndarray, lo: float, hi: float) -> float:
    """Mean of the hull's quality over the cost range [lo, hi] (exact area / width)."""
    if hi <= lo:
        return float(hull_at(vertices, np.array([lo]))[0])
    xs = vertices[:, 0]
    grid = np.unique(np.concatenate([[lo, hi], xs[(xs > lo) & (xs < hi)]]))
    ys = hull_at(vertices, grid)
    return float(np.sum((ys[1:] + ys[:-1]) * np.diff(grid)) / 2.0 / (hi - lo))


def gap_share(router: float, zero: float, oracle: float) -> float:
    """Share of the zero-router-to-oracle gap captured: 0 is the mix of single models, 1 the oracle."""
    gap = oracle - zero
    return float((router - zero) / gap) if gap > 1e-12 else 0.0


def _pgr_curve(strong_share: np.ndarray, quality: np.ndarray, weak_q: float, strong_q: float) -> np.ndarray:
    """Hull vertices of (share of calls to the strong model, performance gap recovered).

    The trivial routers (all weak, all strong) are always available, so they join the points.
    """
    gap = strong_q - weak_q
    pgr = (np.asarray(quality) - weak_q) / gap if abs(gap) > 1e-12 else np.zeros(len(quality))
    pts = np.column_stack([np.concatenate([strong_share, [0.0, 1.0]]), np.concatenate([pgr, [0.0, 1.0]])])
    return hull(pts)


def apgr(strong_share: np.ndarray, quality: np.ndarray, weak_q: float, strong_q: float) -> float:
    """Average performance gap recovered over strong-call shares in [0, 1] (RouteLLM)."""
    return aiq(_pgr_curve(strong_share, quality, weak_q, strong_q), 0.0, 1.0)


def cpt(strong_share: np.ndarray, quality: np.ndarray, weak_q: float, strong_q: float, target: float) -> float:
    """Call-performance threshold: the least share of strong calls reaching ``target`` PGR (RouteLLM)."""
    v = _pgr_curve(strong_share, quality, weak_q, strong_q)
    reach = np.flatnonzero(v[:, 1] >= target - 1e-12)
    if len(reach) == 0:
        return 1.0
    j = int(reach[0])
    if j == 0:
        return float(v[0, 0])
    (x1, y1), (x2, y2) = v[j - 1], v[j]
    return float(x1 + (target - y1) * (x2 - x1) / (y2 - y1))
