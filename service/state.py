"""The live snapshot as JSON for operators: ``GET /v1/router/state``."""

from __future__ import annotations

from typing import Any

import numpy as np

from learner.routing import credible_interval
from learner.snapshot import usage_table
from learner.routing import View as RouterView

__all__ = ["router_state"]


def router_state(view: RouterView, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    snap = view.snapshot
    lo, hi = credible_interval(view.alpha, view.beta, 0.9)
    n = np.array(snap.n)
    dec = np.array(snap.decisions)
    calls, escalated = usage_table(snap, "calls"), usage_table(snap, "escalations")
    clusters = []
    for c in range(len(view.centroids)):
        clusters.append({
            "id": c,
            "decisions": int(dec[c].sum()),
            "models": {
                m: {
                    "mean": round(float(view.mean[c, j]), 4),
                    "ci90": [round(float(lo[c, j]), 4), round(float(hi[c, j]), 4)],
                    "evidence": round(float(n[c, j]), 3),
                    "decisions": int(dec[c, j]),
                }
                for j, m in enumerate(snap.models)
            },
            # a cascade's column above is its arm; here what its cost hangs on: how often it escalates
            "cascades": [
                {"name": snap.models[a.column], "escalation_rate": round(float(view.escalation[c, i]), 4),
                 "calls": round(float(calls[c, a.column]), 3), "escalated": round(float(escalated[c, a.column]), 3),
                 "cheap": snap.models[a.cheap], "strong": snap.models[a.strong]}
                for i, a in enumerate(view.cascades)
            ],
        })  # fmt: skip
    state = {
        "version": snap.version,
        "parent": snap.parent,
        "created_at_ms": snap.created_at_ms,
        "reason": snap.reason,
        "clustering": snap.clustering,
        "watermark_ms": snap.watermark_ms,
        "models": list(snap.models),
        "expected_completion_tokens": dict(zip(snap.models, snap.completion_tokens)),
        "clusters": clusters,
    }
    state.update(extra or {})
    return state
