"""One learning cycle: read what arrived since the watermark, fold it in, publish a snapshot.

``fold`` is pure (snapshot + one window of aggregated rows -> snapshot + drift alarms) and
``recluster_snapshot`` is pure too. ``LearningCycle`` is the thin shell that reads the row store,
writes the snapshot store and the learner log, and hands the snapshot to whoever serves it.

The snapshot carries the watermark, the evidence, the drift detectors' memory and the learned
budget weights, so saving it is the commit point of the cycle: a crash before the save leaves
the previous snapshot live and the watermark unmoved, and the next cycle reads the same window
again (plus what came since), counting each fact once.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

import msgspec
import numpy as np

from feedback.ports import DecisionStats, DriftEvent, LearnerLog, RewardRow, RewardStats, RowStore, SnapshotStore, WindowStats
from learner.budget import BudgetParams, BudgetTarget, dual_update, explore_share, start
from learner.clusters import assign_many, kmeans
from learner.drift import Alarm, DriftParams, observe
from learner.recluster import ReclusterParams, carry_evidence, recluster
from learner.reward import RewardWeights
from learner.snapshot import ClusterDrift, Snapshot, centroid_array, decode_snapshot, encode_snapshot, validate, validate_pool

__all__ = [
    "LearnerParams",
    "LearningCycle",
    "PoolPrior",
    "Window",
    "align",
    "cold_start_clusters",
    "fold",
    "recluster_snapshot",
]

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
    discount: float = 1.0  # evidence kept per cycle, on top of the half-lives
    cold_start_min: int = 64
    usage_pseudo_count: float = 20.0
    half_life_ms: float = 0.0  # evidence halves every this much ingestion time (0: never)
    half_life_rewards: float = 0.0  # ... and every this much new evidence in its cluster (0: never)
    rewards: RewardWeights = RewardWeights()
    drift: DriftParams | None = DriftParams()  # None: no drift detection
    reward_reset: float = 0.1  # evidence kept in a (cluster, model) whose reward fell
    recluster: ReclusterParams = ReclusterParams()
    budgets: tuple[BudgetTarget, ...] = ()
    budget: BudgetParams = BudgetParams()
    explore_min_evidence: float = 0.0  # a model with less evidence is capped (0: no cap)
    explore_share: float = 0.1  # ... to this share of the posterior sample rows


class Window(msgspec.Struct, frozen=True):
    """What one cycle read from the store for ``[since_ms, until_ms)``."""

    since_ms: int
    until_ms: int
    rewards: tuple[RewardStats, ...]
    stale: tuple[RewardRow, ...]  # feedback on decisions of an older clustering, with embeddings
    decisions: tuple[DecisionStats, ...]


def align(snap: Snapshot, pool: PoolPrior) -> Snapshot:
    """The snapshot with its model axis matched to the pool: new models start with no evidence
    (their prior from config), removed ones are dropped."""
    if snap.models == pool.models:
        return snap
    idx = {m: i for i, m in enumerate(snap.models)}

    def remap(rows: tuple, zero: object) -> tuple:
        return tuple(tuple(r[idx[m]] if m in idx else zero for m in pool.models) for r in rows)

    def pick(old: tuple, default: tuple) -> tuple:
        return tuple(old[idx[m]] if m in idx else default[j] for j, m in enumerate(pool.models))

    drift = tuple(
        msgspec.structs.replace(
            d,
            reward_blocks=remap((d.reward_blocks,), ())[0] if d.reward_blocks else (),
            reward_pending=remap((d.reward_pending,), (0.0, 0.0))[0] if d.reward_pending else (),
        )
        for d in snap.drift
    )
    return msgspec.structs.replace(
        snap,
        models=pool.models,
        n=remap(snap.n, 0.0),
        reward_sum=remap(snap.reward_sum, 0.0),
        decisions=remap(snap.decisions, 0),
        prior_mean=pool.prior_mean,
        completion_tokens=pick(snap.completion_tokens, pool.completion_tokens),
        latency_s=pick(snap.latency_s, pool.latency_s),
        drift=drift,
        explore_share=pick(snap.explore_share, (1.0,) * len(pool.models)) if snap.explore_share else (),
    )


def _rows(a: np.ndarray, cast: type = float) -> tuple:
    return tuple(tuple(cast(x) for x in row) for row in a)


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
    return msgspec.structs.replace(
        snap,
        centroids=np.ascontiguousarray(cents, dtype="<f4").tobytes(),
        n=_rows(np.outer(share, snap.n[0])),
        reward_sum=_rows(np.outer(share, snap.reward_sum[0])),
        decisions=tuple((0,) * len(snap.models) for _ in share),
        clustering=snap.clustering + 1,
        drift=(),
    )


def _evidence(snap: Snapshot, window: Window, weights: RewardWeights) -> tuple[np.ndarray, np.ndarray]:
    """The window's feedback as evidence weight and weighted reward per (cluster, model), (k, m)."""
    models = {m: i for i, m in enumerate(snap.models)}
    cents = centroid_array(snap)
    k, m = len(cents), len(snap.models)
    n, s = np.zeros((k, m)), np.zeros((k, m))

    def target(model: str, arm: str, kind: str) -> int | None:
        # an upstream error is the fault of the model the policy chose; the rest, of who answered
        return models.get(arm if kind == "upstream_error" and arm else model)

    for r in window.rewards:
        j = target(r.model, r.arm, r.kind)
        if r.clustering != snap.clustering or j is None or not 0 <= r.cluster < k:
            continue  # stale rows arrive one by one in window.stale
        w = weights.of(r.kind)
        n[r.cluster, j] += w * r.count
        s[r.cluster, j] += w * r.reward_sum
    stale = [(r, target(r.model, r.arm, r.kind)) for r in window.stale if r.clustering != snap.clustering]
    placed = [(r, j) for r, j in stale if j is not None and r.embedding]
    if len(placed) < len(stale):
        log.warning("%d rewards from an old clustering without embeddings were skipped", len(stale) - len(placed))
    if placed:  # decided under older centroids: place them by their embedding
        embs = np.stack([np.frombuffer(r.embedding, dtype="<f4") for r, _ in placed])
        clusters, _ = assign_many(embs, cents)
        for (r, j), c in zip(placed, clusters):
            w = weights.of(r.kind)
            n[c, j] += w
            s[c, j] += w * min(max(r.reward, 0.0), 1.0)
    return n, s


def _budgets(snap: Snapshot, stats: Sequence[DecisionStats], params: LearnerParams) -> tuple:
    have = {b.policy: b for b in snap.budgets}
    out = []
    for target in params.budgets:
        state = have.get(target.policy) or start(target, params.budget)
        state = msgspec.structs.replace(state, target_cost_usd=target.target_cost_usd)
        mine = [st for st in stats if st.policy == target.policy]
        out.append(dual_update(state, sum(st.decisions for st in mine), sum(st.cost_usd for st in mine), params.budget))
    return tuple(out)


def fold(
    snap: Snapshot, window: Window, *, now_ms: int, params: LearnerParams, reason: str = "scheduled"
) -> tuple[Snapshot, list[Alarm]]:
    """Fold one window into a new snapshot (version + 1, watermark = window end).

    Old evidence is discounted (per cycle, by ingestion time elapsed, and by new evidence in its
    cluster), a (cluster, model) whose reward fell keeps only ``reward_reset`` of its old
    evidence, usage estimates move toward the window's means, budgets take a dual step.
    Returns the snapshot and the drift alarms raised (margin alarms call for a re-clustering).
    """
    models = {m: i for i, m in enumerate(snap.models)}
    k, m = len(snap.n), len(snap.models)
    n_new, s_new = _evidence(snap, window, params.rewards)

    decisions = np.array(snap.decisions, dtype=np.int64)
    routed, margin_sum = np.zeros(k), np.zeros(k)
    tok_sum, lat_sum, cnt = np.zeros(m), np.zeros(m), np.zeros(m)
    for st in window.decisions:
        j = models.get(st.model)
        if j is None:
            continue
        if st.clustering == snap.clustering and 0 <= st.cluster < k:
            decisions[st.cluster, j] += st.decisions
            routed[st.cluster] += st.decisions
            margin_sum[st.cluster] += st.margin_sum
        tok_sum[j] += st.completion_tokens
        lat_sum[j] += st.latency_ms / 1000.0
        cnt[j] += st.decisions
    a = params.usage_pseudo_count
    tokens = (a * np.array(snap.completion_tokens) + tok_sum) / (a + cnt)
    latency = (a * np.array(snap.latency_s) + lat_sum) / (a + cnt)

    drift, alarms = snap.drift, []
    if params.drift is not None:
        drift, alarms = observe(snap.drift, routed, margin_sum, n_new, s_new, window.until_ms, params.drift)

    keep = np.full((k, m), params.discount)
    if params.half_life_ms > 0:
        keep *= 0.5 ** (max(window.until_ms - snap.watermark_ms, 0) / params.half_life_ms)
    if params.half_life_rewards > 0:
        keep *= (0.5 ** (n_new.sum(axis=1) / params.half_life_rewards))[:, None]
    for alarm in alarms:
        if alarm.model >= 0:
            keep[alarm.cluster, alarm.model] *= params.reward_reset
    n = np.array(snap.n) * keep + n_new
    s = np.minimum(np.array(snap.reward_sum) * keep + s_new, n)

    share = snap.explore_share
    if params.explore_min_evidence > 0:
        share = explore_share(n.sum(axis=0), params.explore_min_evidence, params.explore_share)
    new = msgspec.structs.replace(
        snap,
        version=snap.version + 1,
        parent=snap.version,
        created_at_ms=now_ms,
        reason=reason,
        n=_rows(n),
        reward_sum=_rows(s),
        decisions=_rows(decisions, int),
        completion_tokens=tuple(float(x) for x in tokens),
        latency_s=tuple(float(x) for x in latency),
        watermark_ms=window.until_ms,
        budgets=_budgets(snap, window.decisions, params),
        drift=drift,
        explore_share=share,
    )
    validate(new)
    return new, alarms


def recluster_snapshot(
    snap: Snapshot, recent: np.ndarray, reference: np.ndarray | None, rng: np.random.Generator,
    params: ReclusterParams, max_splits: int | None = None,
) -> Snapshot:  # fmt: skip
    """A new clustering from recent embeddings (n, d), evidence carried by overlap, detectors reset."""
    old = centroid_array(snap)
    result = recluster(recent, old, rng, params, reference, max_splits)
    carry = lambda a: carry_evidence(np.array(a, dtype=np.float64), result.overlap, old, result.centroids, params.carry)  # noqa: E731
    n = carry(snap.n)
    return msgspec.structs.replace(
        snap,
        reason="drift",
        centroids=np.ascontiguousarray(result.centroids, dtype="<f4").tobytes(),
        n=_rows(n),
        reward_sum=_rows(np.minimum(carry(snap.reward_sum), n)),
        decisions=_rows(np.rint(carry(snap.decisions) / params.carry), int),
        clustering=snap.clustering + 1,
        drift=tuple(ClusterDrift() for _ in range(len(result.centroids))),
    )


def _windows(version: int, window: Window) -> list[WindowStats]:
    out = [
        WindowStats(version, window.since_ms, window.until_ms, st.clustering, st.cluster, st.model, st.policy,
                    st.decisions, st.cost_usd, st.margin_sum, 0.0, 0.0)
        for st in window.decisions
    ]  # fmt: skip
    acc: dict[tuple[int, int, str], list[float]] = {}
    for r in window.rewards:  # feedback is not per policy: its rows have policy ""
        row = acc.setdefault((r.clustering, r.cluster, r.model), [0.0, 0.0])
        row[0] += r.count
        row[1] += r.reward_sum
    out += [WindowStats(version, window.since_ms, window.until_ms, c, k, mdl, "", 0, 0.0, 0.0, v[0], v[1])
            for (c, k, mdl), v in acc.items()]  # fmt: skip
    return out


def _events(before: Snapshot, after: Snapshot, alarms: list[Alarm], at_ms: int) -> list[DriftEvent]:
    margin = [a for a in alarms if a.model < 0]
    reclustered = after.clustering != before.clustering
    out = []
    if margin:
        out.append(DriftEvent(
            after.version, at_ms, before.clustering, "margin", tuple(a.cluster for a in margin), "",
            float(np.mean([a.old_value for a in margin])), float(np.mean([a.new_value for a in margin])),
            "recluster" if reclustered else "none", after.clustering if reclustered else 0,
        ))  # fmt: skip
    out += [
        DriftEvent(after.version, at_ms, before.clustering, "reward", (a.cluster,), before.models[a.model],
                   a.old_value, a.new_value, "reset")
        for a in alarms if a.model >= 0
    ]  # fmt: skip
    return out


class _NoLog:
    def record(self, version: int, windows: Sequence[WindowStats], drift: Sequence[DriftEvent]) -> None:
        pass

    def drift_events(self, limit: int = 100) -> list[DriftEvent]:
        return []

    def windows(self, since_version: int = 0) -> list[WindowStats]:
        return []


def _stack(blobs: list[bytes]) -> np.ndarray:
    return np.stack([np.frombuffer(b, dtype="<f4") for b in blobs]) if blobs else np.zeros((0, 0), np.float32)


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
        learner_log: LearnerLog | None = None,
    ) -> None:
        self._rows = rows
        self._snapshots = snapshots
        self._pool = pool
        self._params = params
        self._rng = rng
        self._publish = publish
        self._before = before
        self._log = learner_log or _NoLog()
        self._lock = threading.Lock()

    def current(self) -> Snapshot | None:
        blob = self._snapshots.latest()
        return align(decode_snapshot(blob), self._pool) if blob else None

    def save(self, snap: Snapshot) -> None:
        validate(snap)
        validate_pool(snap, self._pool.models)
        self._snapshots.save(snap.version, snap.parent, snap.created_at_ms, snap.reason, encode_snapshot(snap))
        self._publish(snap)

    def read(self, snap: Snapshot, until_ms: int) -> Window:
        """The window (snap.watermark_ms, until_ms] from the row store, aggregated."""
        rewards = tuple(self._rows.reward_stats(snap.watermark_ms, until_ms))
        stale: tuple[RewardRow, ...] = ()
        if any(r.clustering != snap.clustering for r in rewards):
            stale = tuple(r for r in self._rows.rewards(snap.watermark_ms, until_ms, snap.clustering)
                          if r.clustering != snap.clustering)  # fmt: skip
        decisions = tuple(self._rows.decision_stats(snap.watermark_ms, until_ms))
        return Window(snap.watermark_ms, until_ms, rewards, stale, decisions)

    def run(self, reason: str = "scheduled") -> Snapshot:
        """One cycle. Raises if there is no snapshot to continue from."""
        with self._lock:
            self._before()
            snap = self.current()
            if snap is None:
                raise RuntimeError("no snapshot to learn from: bootstrap one first")
            p = self._params
            now = self._rows.now_ms()
            until = max(now - p.grace_ms, snap.watermark_ms)
            if len(centroid_array(snap)) == 1 and p.n_clusters > 1:
                embs = self._rows.recent_embeddings(4096)
                if len(embs) >= p.cold_start_min:
                    snap = cold_start_clusters(snap, _stack(embs), p.n_clusters, self._rng)
                    reason = "recluster"
            window = self.read(snap, until)
            new, alarms = fold(snap, window, now_ms=now, params=p, reason=reason)
            margin = [a for a in alarms if a.model < 0]
            if margin and len(centroid_array(new)) > 1:
                recent = self._rows.recent_embeddings(p.recluster.sample)
                if len(recent) >= p.recluster.min_sample:
                    normal = min(a.normal_until_ms for a in margin)
                    ref = self._rows.recent_embeddings(p.recluster.sample, until_ms=normal)
                    new = recluster_snapshot(new, _stack(recent), _stack(ref) if ref else None, self._rng, p.recluster,
                                             max_splits=len(margin))  # fmt: skip
            events = _events(snap, new, alarms, now)
            self._log.record(new.version, _windows(new.version, window), events)
            self.save(new)  # the commit point
            for e in events:
                log.warning("drift (%s) in clusters %s%s: %.3f -> %.3f, %s", e.kind, e.clusters,
                            f" for {e.model}" if e.model else "", e.old_value, e.new_value, e.action)  # fmt: skip
            log.info(
                "learning cycle: snapshot v%d (%s), %d feedback groups, %d decision groups, %d clusters",
                new.version, new.reason, len(window.rewards), len(window.decisions), len(new.n),
            )  # fmt: skip
            return new
