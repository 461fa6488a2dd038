"""What an operator asks of the snapshots and the learner: list, show, roll back, status.

One implementation over the ports (``SnapshotStore``, ``LearnerLog``), used by the admin API of
the running service (``service/admin_api.py``) and by ``turnout snapshot`` when no process holds
the store (``learner/cli.py``); both print or serve the same frozen structs.
"""

from __future__ import annotations

from typing import Sequence

import msgspec
import numpy as np

from learner.ports import DriftEvent, LearnerLog, SnapshotStore, WindowStats
from learner.routing import snapshot_posterior
from learner.snapshot import BudgetState, Snapshot, decode_snapshot, encode_snapshot, rollback_snapshot

__all__ = [
    "CycleSeen",
    "LearnedNow",
    "LearnerStatus",
    "ModelSeen",
    "Rollback",
    "SnapshotDetail",
    "SnapshotList",
    "SnapshotRow",
    "last_window",
    "list_snapshots",
    "load_snapshot",
    "recent_windows",
    "roll_back",
    "snapshot_detail",
]


class SnapshotRow(msgspec.Struct, frozen=True):
    version: int
    parent: int
    created_at_ms: int
    reason: str
    live: bool  # the one this process routes with (always False where no process routes)


class SnapshotList(msgspec.Struct, frozen=True):
    live: int | None  # the live version; None: listed from the store, no service asked
    snapshots: list[SnapshotRow]  # newest first


class DriftState(msgspec.Struct, frozen=True):
    cluster: int
    margin_blocks: int
    baseline: float  # mean margin of the first blocks
    last: float  # mean margin of the last block


class SnapshotDetail(msgspec.Struct, frozen=True):
    """One snapshot as an operator reads it: posteriors and traffic per (cluster, model)."""

    version: int
    parent: int
    reason: str
    created_at_ms: int
    watermark_ms: int
    clustering: int
    clusters: int
    dim: int
    models: list[str]
    mean: list[list[float]]  # (k, m) posterior mean answer quality
    decisions: list[list[int]]  # (k, m) decisions routed
    budgets: list[BudgetState]
    explore_share: list[float]  # (m,) or empty: the share of sample rows a model may win
    drift: list[DriftState]  # clusters whose margin detector holds blocks
    drift_events: list[DriftEvent]  # what the learner did when it published this version
    live: bool = False


class Rollback(msgspec.Struct, frozen=True):
    version: int  # the new snapshot
    routes_as: int  # the version it routes as
    parent: int  # the latest before it


class LearnedNow(msgspec.Struct, frozen=True):
    """What one learning cycle asked for by an operator ended on."""

    version: int  # the snapshot the cycle ended on
    watermark_ms: int
    published: bool  # False: nothing new arrived, the live snapshot stays


class ModelSeen(msgspec.Struct, frozen=True):
    decisions: int
    feedback: float  # evidence weight of the feedback folded in
    reward_mean: float | None  # mean reward of that feedback; None: none


class CycleSeen(msgspec.Struct, frozen=True):
    """What the last learning cycle that published read: its window and what was in it."""

    version: int
    since_ms: int
    until_ms: int
    decisions: int
    feedback: float
    models: dict[str, ModelSeen]


class LearnerStatus(msgspec.Struct, frozen=True):
    learner_here: bool  # does this process run learning cycles on a schedule?
    interval_s: float
    live_version: int
    watermark_ms: int  # what the live snapshot has read up to (ingestion time)
    last_cycle_at_ms: int | None  # the last cycle attempted by this process
    last_cycle_version: int  # the snapshot it ended on
    last_error: str
    consecutive_failures: int
    next_cycle_at_ms: int | None  # None: no cycle scheduled here
    cycles: int  # cycles of this process that published a snapshot
    idle_cycles: int  # ... and that found nothing new
    last_window: CycleSeen | None
    drift_events: list[DriftEvent]  # newest first


def load_snapshot(snapshots: SnapshotStore, version: int) -> Snapshot:
    """Raises ``LookupError`` for a version not stored, ``SnapshotError`` for one that does not validate."""
    blob = snapshots.get(version) if 1 <= version < 2**63 else None  # versions start at 1, stored as UInt64
    if blob is None:
        raise LookupError(f"snapshot v{version} does not exist")
    return decode_snapshot(blob)


def list_snapshots(snapshots: SnapshotStore, limit: int, live: int | None = None) -> SnapshotList:
    rows = [SnapshotRow(i.version, i.parent, i.created_at_ms, i.reason, i.version == live)
            for i in snapshots.list(limit)]  # fmt: skip
    return SnapshotList(live, rows)


def snapshot_detail(snap: Snapshot, events: Sequence[DriftEvent], live: int | None = None) -> SnapshotDetail:
    """The detail of ``snap``; ``events``: drift events of any version (those of ``snap`` are kept)."""
    alpha, beta = snapshot_posterior(snap)
    mean = alpha / (alpha + beta)
    drift = [DriftState(c, len(d.margin_blocks), float(np.mean(d.margin_blocks[:8])), float(d.margin_blocks[-1]))
             for c, d in enumerate(snap.drift) if d.margin_blocks]  # fmt: skip
    return SnapshotDetail(
        version=snap.version, parent=snap.parent, reason=snap.reason, created_at_ms=snap.created_at_ms,
        watermark_ms=snap.watermark_ms, clustering=snap.clustering, clusters=len(snap.n), dim=snap.dim,
        models=list(snap.models), mean=[[float(x) for x in row] for row in mean],
        decisions=[list(row) for row in snap.decisions], budgets=list(snap.budgets),
        explore_share=list(snap.explore_share), drift=drift,
        drift_events=[e for e in events if e.version == snap.version], live=snap.version == live,
    )  # fmt: skip


def roll_back(snapshots: SnapshotStore, version: int, now_ms: int) -> Snapshot:
    """Save a new snapshot that routes as ``version`` did, on top of the latest, and return it.

    Raises ``LookupError`` when ``version`` (or any snapshot) is missing. The caller publishes it
    (a service swaps it in; others poll it); the learner continues from it.
    """
    target = load_snapshot(snapshots, version)
    latest_blob = snapshots.latest()
    if latest_blob is None:
        raise LookupError("no snapshots")
    snap = rollback_snapshot(target, decode_snapshot(latest_blob), now_ms)
    snapshots.save(snap.version, snap.parent, snap.created_at_ms, snap.reason, encode_snapshot(snap))
    return snap


def last_window(windows: Sequence[WindowStats]) -> CycleSeen | None:
    """What the newest version among ``windows`` read (``LearnerLog.windows`` rows)."""
    if not windows:
        return None
    version = max(w.version for w in windows)
    rows = [w for w in windows if w.version == version]
    acc: dict[str, list[float]] = {}
    for w in rows:
        a = acc.setdefault(w.model, [0, 0.0, 0.0])
        a[0] += w.decisions
        a[1] += w.rewards
        a[2] += w.reward_sum
    models = {m: ModelSeen(int(a[0]), a[1], a[2] / a[1] if a[1] > 0 else None) for m, a in sorted(acc.items())}
    return CycleSeen(version, rows[0].since_ms, rows[0].until_ms, sum(m.decisions for m in models.values()),
                     sum(m.feedback for m in models.values()), models)  # fmt: skip


def recent_windows(learner_log: LearnerLog, live_version: int, look_back: int = 50) -> list[WindowStats]:
    """The learner log's windows of the last ``look_back`` versions up to the live one."""
    return [w for w in learner_log.windows(max(0, live_version - look_back)) if w.version <= live_version]
