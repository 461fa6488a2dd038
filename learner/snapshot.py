"""The router's state as a frozen, versioned value: centroids, evidence, parameters.

A snapshot is everything the request path needs to route and everything the next learning
cycle needs to continue (its evidence and its watermark). It is validated before it is
published; the service swaps it in atomically and keeps the last good one otherwise.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np

__all__ = [
    "BudgetState",
    "ClusterDrift",
    "Snapshot",
    "SnapshotError",
    "centroid_array",
    "decode_snapshot",
    "encode_snapshot",
    "initial_snapshot",
    "rollback_snapshot",
    "usage_table",
    "validate",
    "validate_pool",
]

Reason = Literal["initial", "scheduled", "drift", "manual", "rollback", "recluster"]


class SnapshotError(ValueError):
    """A snapshot that must not be published: the message says which field is wrong."""


class BudgetState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A policy's learned cost weight, steered each cycle toward a target mean cost per request."""

    policy: str
    cost_weight: float  # what the router uses for this policy instead of the configured weight
    target_cost_usd: float  # target mean cost per request
    realised_cost_usd: float = 0.0  # mean cost per request in the last window with traffic
    decisions: int = 0  # requests counted under this budget so far


class ClusterDrift(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The drift detectors' memory for one cluster (see ``learner.drift``).

    Margins and rewards arrive as sums per window; they are pooled into blocks of a minimum
    size, and the last blocks form a rolling window the detectors are replayed over.
    """

    margin_blocks: tuple[float, ...] = ()  # mean margin per block, oldest first
    margin_until_ms: tuple[int, ...] = ()  # when each block was complete (the window's end)
    margin_pending: tuple[float, float] = (0.0, 0.0)  # decisions and margin sum not yet a block
    reward_blocks: tuple[tuple[float, ...], ...] = ()  # (m,) per model: mean reward per block
    reward_pending: tuple[tuple[float, float], ...] = ()  # (m,) per model: evidence weight, reward sum


class Snapshot(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int
    parent: int
    created_at_ms: int
    reason: Reason
    models: tuple[str, ...]
    dim: int
    centroids: bytes  # (k, dim) float32 little-endian, unit-norm rows
    n: tuple[tuple[float, ...], ...]  # (k, m) evidence weight
    reward_sum: tuple[tuple[float, ...], ...]  # (k, m) summed reward
    decisions: tuple[tuple[int, ...], ...]  # (k, m) decisions routed
    prior_mean: tuple[float, ...]  # (m,) prior quality (tier)
    completion_tokens: tuple[float, ...]  # (m,) expected completion tokens per call
    latency_s: tuple[float, ...]  # (m,) expected latency per call
    prior_strength: float = 2.0
    shrink_strength: float = 5.0
    watermark_ms: int = 0
    clustering: int = 0  # bumps whenever centroids change; cluster ids are only valid within one
    budgets: tuple[BudgetState, ...] = ()  # learned cost weights of policies with a budget
    drift: tuple[ClusterDrift, ...] = ()  # (k,) or empty: detector memory per cluster
    explore_share: tuple[float, ...] = ()  # (m,) or empty: share of sample rows a model may win
    # usage per (cluster, model), for the cost estimate (learner.routing); empty: none yet
    calls: tuple[tuple[float, ...], ...] = ()  # (k, m) calls that were billed
    bill_sum: tuple[tuple[float, ...], ...] = ()  # (k, m) USD billed
    completion_sum: tuple[tuple[float, ...], ...] = ()  # (k, m) completion tokens
    escalations: tuple[tuple[float, ...], ...] = ()  # (k, m) a cascade's calls that escalated (learner.cascade)
    seen: int = 0  # decisions routed since the first snapshot
    clustered_at: int = 0  # ``seen`` when the current clustering was built from traffic


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Snapshot)


def encode_snapshot(snapshot: Snapshot) -> bytes:
    return _enc.encode(snapshot)


def decode_snapshot(blob: bytes) -> Snapshot:
    """Decode and validate; raises ``SnapshotError`` naming the problem."""
    try:
        snap = _dec.decode(blob)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"undecodable snapshot: {exc}") from exc
    validate(snap)
    return snap


def centroid_array(snapshot: Snapshot) -> np.ndarray:
    """Centroids as a read-only (k, dim) float32 array."""
    arr = np.frombuffer(snapshot.centroids, dtype="<f4").reshape(-1, snapshot.dim)
    return arr


def usage_table(snap: Snapshot, name: str) -> np.ndarray:
    """``calls``, ``bill_sum``, ``completion_sum`` or ``escalations`` as a (k, m) float64 array (zeros when empty)."""
    rows = getattr(snap, name)
    return np.array(rows, dtype=np.float64) if rows else np.zeros((len(snap.n), len(snap.models)))


def validate(snap: Snapshot) -> None:
    """Raise ``SnapshotError`` unless shapes agree and every value is finite and in range."""
    m = len(snap.models)
    if m == 0:
        raise SnapshotError("models: the pool is empty")
    if len(set(snap.models)) != m:
        raise SnapshotError("models: duplicate model names")
    if snap.dim <= 0 or len(snap.centroids) % (4 * snap.dim) != 0:
        raise SnapshotError(f"centroids: {len(snap.centroids)} bytes is not a multiple of dim={snap.dim}")
    k = len(snap.centroids) // (4 * snap.dim)
    if k == 0:
        raise SnapshotError("centroids: no clusters")
    cents = centroid_array(snap)
    if not np.isfinite(cents).all():
        raise SnapshotError("centroids: non-finite values")
    for name in ("n", "reward_sum", "decisions"):
        rows = getattr(snap, name)
        if len(rows) != k or any(len(r) != m for r in rows):
            raise SnapshotError(f"{name}: expected shape ({k}, {m})")
    n = np.array(snap.n, dtype=np.float64)
    s = np.array(snap.reward_sum, dtype=np.float64)
    if not (np.isfinite(n).all() and np.isfinite(s).all()):
        raise SnapshotError("n/reward_sum: non-finite values")
    if (n < 0).any() or (s < -1e-9).any() or (s > n + 1e-6).any():
        raise SnapshotError("reward_sum: must satisfy 0 <= reward_sum <= n")
    for name in ("prior_mean", "completion_tokens", "latency_s"):
        v = np.array(getattr(snap, name), dtype=np.float64)
        if v.shape != (m,) or not np.isfinite(v).all() or (v < 0).any():
            raise SnapshotError(f"{name}: expected {m} finite non-negative values")
    if not all(0.0 < p < 1.0 for p in snap.prior_mean):
        raise SnapshotError("prior_mean: values must be in (0, 1)")
    if snap.prior_strength <= 0 or not np.isfinite(snap.shrink_strength):
        raise SnapshotError("prior_strength: must be positive; shrink_strength: finite (<= 0: from the data)")
    if snap.version < 0 or snap.parent < 0 or snap.parent > snap.version:
        raise SnapshotError("version/parent: parent must not be newer than version")
    _validate_learning(snap, k, m)


def _validate_learning(snap: Snapshot, k: int, m: int) -> None:
    for name in ("calls", "bill_sum", "completion_sum", "escalations"):
        rows = getattr(snap, name)
        if not rows:
            continue
        v = np.array(rows, dtype=np.float64)
        if v.shape != (k, m) or not np.isfinite(v).all() or (v < 0).any():
            raise SnapshotError(f"{name}: expected ({k}, {m}) finite non-negative values")
    if snap.seen < 0 or snap.clustered_at < 0:
        raise SnapshotError("seen/clustered_at: must not be negative")
    if len({b.policy for b in snap.budgets}) != len(snap.budgets):
        raise SnapshotError("budgets: duplicate policy")
    for b in snap.budgets:
        if not (np.isfinite(b.cost_weight) and b.cost_weight >= 0 and b.target_cost_usd > 0):
            raise SnapshotError(f"budgets: policy {b.policy!r} needs a finite weight >= 0 and a target > 0")
    if snap.drift and len(snap.drift) != k:
        raise SnapshotError(f"drift: expected {k} clusters")
    for d in snap.drift:
        if d.reward_blocks and len(d.reward_blocks) != m or d.reward_pending and len(d.reward_pending) != m:
            raise SnapshotError(f"drift: expected reward windows for {m} models")
        values = [*d.margin_blocks, *d.margin_pending, *(v for r in d.reward_blocks for v in r),
                  *(v for r in d.reward_pending for v in r)]  # fmt: skip
        if not np.isfinite(np.array(values, dtype=np.float64)).all():
            raise SnapshotError("drift: non-finite values")
    if snap.explore_share and (
        len(snap.explore_share) != m or not all(0.0 < x <= 1.0 for x in snap.explore_share)
    ):
        raise SnapshotError(f"explore_share: expected {m} values in (0, 1]")


def validate_pool(snap: Snapshot, models: tuple[str, ...]) -> None:
    """Raise ``SnapshotError`` unless every model of the pool is in the snapshot."""
    missing = [name for name in models if name not in snap.models]
    if missing:
        raise SnapshotError(f"models: the pool's {', '.join(missing)} missing from the snapshot")


def initial_snapshot(
    *,
    models: tuple[str, ...],
    centroids: np.ndarray,
    prior_mean: tuple[float, ...],
    completion_tokens: tuple[float, ...],
    latency_s: tuple[float, ...],
    prior_strength: float,
    shrink_strength: float,
    created_at_ms: int,
) -> Snapshot:
    """Version 1: no evidence yet, centroids from examples (or one cluster for everything)."""
    cents = np.ascontiguousarray(centroids, dtype="<f4")
    k, m = cents.shape[0], len(models)
    snap = Snapshot(
        version=1,
        parent=0,
        created_at_ms=created_at_ms,
        reason="initial",
        models=models,
        dim=int(cents.shape[1]),
        centroids=cents.tobytes(),
        n=tuple((0.0,) * m for _ in range(k)),
        reward_sum=tuple((0.0,) * m for _ in range(k)),
        decisions=tuple((0,) * m for _ in range(k)),
        prior_mean=tuple(float(p) for p in prior_mean),
        completion_tokens=tuple(float(t) for t in completion_tokens),
        latency_s=tuple(float(t) for t in latency_s),
        prior_strength=prior_strength,
        shrink_strength=shrink_strength,
        clustering=1,
    )
    validate(snap)
    return snap


def rollback_snapshot(target: Snapshot, latest: Snapshot, now_ms: int) -> Snapshot:
    """A new version that routes as ``target`` did, on top of ``latest``.

    The watermark stays the latest's: what the learner has read is not read again (the rollback
    undoes what was learned from it, on purpose). If the centroids differ, the clustering gets a
    new generation, since decisions were logged under the latest one's cluster ids meanwhile;
    the drift detectors then start afresh.
    """
    same = target.clustering == latest.clustering
    snap = msgspec.structs.replace(
        target,
        version=latest.version + 1,
        parent=latest.version,
        created_at_ms=now_ms,
        reason="rollback",
        watermark_ms=latest.watermark_ms,
        clustering=latest.clustering if same else latest.clustering + 1,
        drift=target.drift if same else (),
    )
    validate(snap)
    return snap
