"""One learning cycle: read what arrived since the watermark, fold it in, publish a snapshot.

``fold`` is pure (snapshot + rows -> snapshot). ``LearningCycle`` is the thin shell that reads
the row store, writes the snapshot store and hands the snapshot to whoever serves it. The
snapshot carries the watermark, so saving it is the commit point of the cycle: a crash before
the save leaves the previous snapshot live and the watermark unmoved, and the next cycle
reads the same window again.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

import msgspec
import numpy as np

from feedback.ports import DecisionStats, RewardRow, RowStore, SnapshotStore
from learner.clusters import assign_many, kmeans
from learner.policy import update_stats
from learner.snapshot import Snapshot, centroid_array, decode_snapshot, encode_snapshot, validate

__all__ = ["LearnerParams", "LearningCycle", "PoolPrior", "align", "cold_start_clusters", "fold"]

log = logging.getLogger("turnout.learner")


class PoolPrior(msgspec.Struct, frozen=True):
    """What config says of the pool: names, prior quality (tier), expected tokens and latency."""

    models: tuple[str, ...]
    prior_mean: tuple[float, ...]
    completion_tokens: tuple[float, ...]
    latency_s: tuple[float, ...]


class LearnerParams(msgspec.Struct, frozen=True):
    n_clusters: int = 4
    grace_ms: int = 2000
    discount: float = 1.0
    cold_start_min: int = 64
    usage_pseudo_count: float = 20.0


def align(snap: Snapshot, pool: PoolPrior) -> Snapshot:
    """The snapshot with its model axis matched to the pool: new models start with no evidence
    (their prior from config), removed ones are dropped."""
    if snap.models == pool.models:
        return snap
    idx = {m: i for i, m in enumerate(snap.models)}

    def remap(rows: tuple, zero: float | int) -> tuple:
        return tuple(tuple(r[idx[m]] if m in idx else zero for m in pool.models) for r in rows)

    def pick(old: tuple, default: tuple) -> tuple:
        return tuple(old[idx[m]] if m in idx else default[j] for j, m in enumerate(pool.models))

    return msgspec.structs.replace(
        snap,
        models=pool.models,
        n=remap(snap.n, 0.0),
        reward_sum=remap(snap.reward_sum, 0.0),
        decisions=remap(snap.decisions, 0),
        prior_mean=pool.prior_mean,
        completion_tokens=pick(snap.completion_tokens, pool.completion_tokens),
        latency_s=pick(snap.latency_s, pool.latency_s),
    )


def cold_start_clusters(
    snap: Snapshot, embeddings: np.ndarray, n_clusters: int, rng: np.random.Generator
) -> Snapshot:
    """Replace a single catch-all cluster by k-means clusters of the first requests' embeddings.

    embeddings: (n, dim) float32. Evidence of the old cluster is spread over the new ones in
    proportion to how many of the embeddings each received, so global totals are kept.
    """
    cents = kmeans(embeddings, n_clusters, rng)
    labels, _ = assign_many(embeddings, cents)
    share = np.bincount(labels, minlength=len(cents)) / len(labels)
    n0 = np.array(snap.n[0])
    s0 = np.array(snap.reward_sum[0])
    return msgspec.structs.replace(
        snap,
        centroids=np.ascontiguousarray(cents, dtype="<f4").tobytes(),
        n=tuple(tuple(float(x) for x in n0 * w) for w in share),
        reward_sum=tuple(tuple(float(x) for x in s0 * w) for w in share),
        decisions=tuple((0,) * len(snap.models) for _ in share),
        clustering=snap.clustering + 1,
    )


def fold(
    snap: Snapshot,
    rewards: Sequence[RewardRow],
    stats: Sequence[DecisionStats],
    *,
    until_ms: int,
    now_ms: int,
    discount: float,
    usage_pseudo_count: float,
    reason: str = "scheduled",
) -> Snapshot:
    """Fold rewards and decision statistics of (watermark, until_ms] into a new snapshot."""
    models = {m: i for i, m in enumerate(snap.models)}
    cents = centroid_array(snap)
    keep = [r for r in rewards if r.model in models]
    clusters = np.array([r.cluster for r in keep], dtype=np.int64)
    stale = [i for i, r in enumerate(keep) if r.clustering != snap.clustering]
    if stale:  # decided under older centroids: place them by their embedding
        with_emb = [i for i in stale if keep[i].embedding]
        if with_emb:
            embs = np.stack([np.frombuffer(keep[i].embedding, dtype="<f4") for i in with_emb])
            clusters[with_emb], _ = assign_many(embs, cents)
        lost = set(stale) - set(with_emb)
        if lost:
            log.warning("%d rewards from an old clustering without embeddings were skipped", len(lost))
            mask = np.array([i not in lost for i in range(len(keep))], dtype=bool)
            keep = [r for i, r in enumerate(keep) if mask[i]]
            clusters = clusters[mask]
    clusters = np.clip(clusters, 0, len(cents) - 1)
    arms = np.array([models[r.model] for r in keep], dtype=np.int64)
    rew = np.array([r.reward for r in keep], dtype=np.float64)
    n, s = update_stats(np.array(snap.n), np.array(snap.reward_sum), clusters, arms, rew, discount=discount)

    dec = np.array(snap.decisions, dtype=np.int64)
    tokens = np.array(snap.completion_tokens, dtype=np.float64)
    latency = np.array(snap.latency_s, dtype=np.float64)
    tok_sum = np.zeros(len(models))
    lat_sum = np.zeros(len(models))
    cnt = np.zeros(len(models))
    for st in stats:
        if st.model not in models:
            continue
        j = models[st.model]
        if st.clustering == snap.clustering and 0 <= st.cluster < len(dec):
            dec[st.cluster, j] += st.decisions
        tok_sum[j] += st.completion_tokens
        lat_sum[j] += st.latency_ms / 1000.0
        cnt[j] += st.decisions
    tokens = (usage_pseudo_count * tokens + tok_sum) / (usage_pseudo_count + cnt)
    latency = (usage_pseudo_count * latency + lat_sum) / (usage_pseudo_count + cnt)

    new = msgspec.structs.replace(
        snap,
        version=snap.version + 1,
        parent=snap.version,
        created_at_ms=now_ms,
        reason=reason,
        n=tuple(tuple(float(x) for x in row) for row in n),
        reward_sum=tuple(tuple(float(x) for x in row) for row in np.minimum(s, n)),
        decisions=tuple(tuple(int(x) for x in row) for row in dec),
        completion_tokens=tuple(float(x) for x in tokens),
        latency_s=tuple(float(x) for x in latency),
        watermark_ms=until_ms,
    )
    validate(new)
    return new


class LearningCycle:
    """The I/O shell of learning: ports in, one snapshot out per ``run``. Thread-safe."""

    def __init__(
        self,
        rows: RowStore,
        snapshots: SnapshotStore,
        pool: PoolPrior,
        params: LearnerParams,
        rng: np.random.Generator,
        publish: Callable[[Snapshot], None] = lambda s: None,
        before: Callable[[], None] = lambda: None,
    ) -> None:
        self._rows = rows
        self._snapshots = snapshots
        self._pool = pool
        self._params = params
        self._rng = rng
        self._publish = publish
        self._before = before
        self._lock = threading.Lock()

    def current(self) -> Snapshot | None:
        blob = self._snapshots.latest()
        return align(decode_snapshot(blob), self._pool) if blob else None

    def save(self, snap: Snapshot) -> None:
        validate(snap)
        self._snapshots.save(snap.version, snap.parent, snap.created_at_ms, snap.reason, encode_snapshot(snap))
        self._publish(snap)

    def run(self, reason: str = "scheduled") -> Snapshot:
        """One cycle. Raises if there is no snapshot to continue from."""
        with self._lock:
            self._before()
            snap = self.current()
            if snap is None:
                raise RuntimeError("no snapshot to learn from: bootstrap one first")
            now = self._rows.now_ms()
            until = max(now - self._params.grace_ms, snap.watermark_ms)
            if len(centroid_array(snap)) == 1 and self._params.n_clusters > 1:
                embs = self._rows.recent_embeddings(4096)
                if len(embs) >= self._params.cold_start_min:
                    x = np.stack([np.frombuffer(e, dtype="<f4") for e in embs])
                    snap = cold_start_clusters(snap, x, self._params.n_clusters, self._rng)
                    reason = "recluster"
            rewards = self._rows.rewards(snap.watermark_ms, until, snap.clustering)
            stats = self._rows.decision_stats(snap.watermark_ms, until)
            new = fold(
                snap,
                rewards,
                stats,
                until_ms=until,
                now_ms=now,
                discount=self._params.discount,
                usage_pseudo_count=self._params.usage_pseudo_count,
                reason=reason,
            )
            self.save(new)
            log.info(
                "learning cycle: snapshot v%d (%s), %d rewards, %d decision groups",
                new.version, reason, len(rewards), len(stats),
            )  # fmt: skip
            return new
