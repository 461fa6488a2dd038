"""Off-policy evaluation of a candidate on the decisions a deployment logged in its store.

One code path for ``turnout ope`` (the store opened by the command) and the admin API of the
running service (``POST /v1/admin/ope``, computed by the process that holds the store): read
the logged decisions with feedback (``simulations.logs``), ask the candidate snapshot at the
candidate's cost weight what it would have done with each (the service's own decision), and
estimate its value (``simulations.ope``).
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from learner.snapshot import decode_snapshot
from simulations.logs import candidate_target, read_decisions, to_logged
from simulations.ope import OpeReport, estimate

__all__ = ["Candidate", "evaluate_candidate"]


class Candidate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What to evaluate, on which logged decisions, and how to report it."""

    snapshot: int | None = None  # candidate snapshot version; None: the latest
    cost_weight: float | None = None  # None: the deployment's router.cost_weight
    exclude_models: tuple[str, ...] = ()  # models removed from the candidate's pool
    since_ms: int = 0  # logged decisions in [since_ms, until_ms) (ingestion time)
    until_ms: int | None = None  # None: now
    tenant: str = ""  # only this tenant's decisions ("" : all)
    clip: float | None = None  # cap importance weights at this value
    level: float = 0.95  # interval level
    min_ess: float = 100.0  # warn below this effective sample size

    def check(self) -> None:
        """Raise ``ValueError`` naming the field that is out of range."""
        if self.snapshot is not None and not 1 <= self.snapshot < 2**63:
            raise ValueError(f"snapshot must be a version >= 1, got {self.snapshot}")
        if self.cost_weight is not None and not (math.isfinite(self.cost_weight) and self.cost_weight >= 0):
            raise ValueError(f"cost_weight must be a finite number >= 0, got {self.cost_weight:g}")
        if self.clip is not None and not (self.clip > 0):
            raise ValueError(f"clip must be > 0, got {self.clip:g}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {self.level:g}")
        if not self.min_ess >= 0:
            raise ValueError(f"min_ess must be >= 0, got {self.min_ess:g}")
        if self.until_ms is not None and self.until_ms <= self.since_ms:
            raise ValueError("until must be after since")


def evaluate_candidate(client: Any, snapshots: Any, deployment: Any, candidate: Candidate, now_ms: int) -> OpeReport:
    """The candidate's estimated value on the decisions logged through ``client`` (a ClickHouse
    client); ``snapshots`` a ``SnapshotStore``; ``deployment`` a ``simulations.replay.Deployment``
    (prices, router settings, cost weight). Raises ``ValueError`` saying what is missing or wrong.
    """
    candidate.check()
    blob = snapshots.get(candidate.snapshot) if candidate.snapshot else snapshots.latest()
    if blob is None:
        raise ValueError(f"no snapshot {candidate.snapshot or '(latest)'} in the store")
    snap = decode_snapshot(blob)
    until = now_ms if candidate.until_ms is None else candidate.until_ms
    logs = read_decisions(client, candidate.since_ms, until, candidate.tenant)
    if not logs.arms:
        raise ValueError("no routed decisions with feedback in that time range")
    if deployment.pool_prices is None or deployment.pool_prices.models != snap.models:
        raise ValueError(f"snapshot v{snap.version} routes {', '.join(snap.models)}, the configured pool differs: "
                         f"pass the --config the service runs with")  # fmt: skip
    weight = deployment.cost_weight if candidate.cost_weight is None else candidate.cost_weight
    target = candidate_target(logs, snap, deployment.pool_prices, deployment.routing, weight,
                              deployment.latency_weight, exclude=candidate.exclude_models,
                              cascades=deployment.cascades)  # fmt: skip
    logged = to_logged(logs, snap.models, target)
    return estimate(logged, clip=candidate.clip, level=candidate.level, min_ess=candidate.min_ess)
