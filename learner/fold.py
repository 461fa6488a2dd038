"""The pure half of learning: one window of aggregated rows folded into a new snapshot.

``fold`` discounts old evidence, adds the window's feedback (weighted by kind; rewards of an older
clustering re-placed by their embedding), fades a model whose reward fell, updates usage
estimates, takes the budget step, feeds the drift detectors and sets the exploration cap.
``recluster_snapshot`` and ``cold_start_clusters`` replace the centroids and carry the evidence.
No I/O: ``learner.cycle`` reads the store, calls these, and saves what they return.
"""

from __future__ import annotations

import logging
from typing import Sequence

import msgspec
import numpy as np

from learner.budget import BudgetParams, BudgetTarget, budget_covers, dual_update, explore_share, start
from learner.clusters import assign_many, coherence, kmeans
from learner.drift import Alarm, DriftParams, observe
from learner.ports import DecisionStats, RewardRow, RewardStats
from learner.recluster import ReclusterParams, carry_evidence, recluster
from learner.reward import RewardWeights
from learner.snapshot import ClusterDrift, Snapshot, centroid_array, usage_table, validate

__all__ = [
    "LearnerParams",
    "PoolPrior",
    "Window",
    "align",
    "rebuild_clusters",
    "fold",
    "recluster_snapshot",
]

log = logging.getLogger("turnout.learner")

_STARTS = 8  # k-means runs per clustering of the traffic, the best kept


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
    cold_start_min: int = 64  # decisions before the first clustering from traffic
    recluster_growth: float = 2.0  # cluster the traffic again each time it grows by this factor (0: never)
    recluster_until: int = 4096  # ... until this many decisions were routed
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
        # usage tables follow the model axis too (a cascade or a model added to the pool)
        **{name: remap(getattr(snap, name), 0.0) for name in ("calls", "bill_sum", "completion_sum", "escalations")
           if getattr(snap, name)},
        prior_mean=pool.prior_mean,
        completion_tokens=pick(snap.completion_tokens, pool.completion_tokens),
        latency_s=pick(snap.latency_s, pool.latency_s),
        drift=drift,
        explore_share=pick(snap.explore_share, (1.0,) * len(pool.models)) if snap.explore_share else (),
    )


def _rows(a: np.ndarray, cast: type = float) -> tuple:
    return tuple(tuple(cast(x) for x in row) for row in a)


def rebuild_clusters(
    snap: Snapshot, embeddings: np.ndarray, rewards: Sequence[RewardRow], n_clusters: int,
    rng: np.random.Generator, weights: RewardWeights,
) -> Snapshot:  # fmt: skip
    """Replace the clustering by k-means of the traffic's embeddings, as evidence grows.

    embeddings: (n, dim) float32, recent prompts; rewards: every reward folded so far (the
    window before the watermark), each with its decision's embedding, so the evidence is
    refolded exactly onto the new clusters. A reward without an embedding is spread over the
    new clusters as its old cluster's prompts are; usage tables and decision counts follow
    the same overlap, so global totals are kept.

    The new clustering is the best of ``_STARTS`` k-means runs, and it replaces the live one
    only if it explains the same prompts better (higher ``coherence``): a re-clustering as
    traffic grows must not trade a clean split of the topics for a worse local optimum. When
    the live one stays, only ``clustered_at`` moves (the next growth step is judged afresh).
    """
    old = centroid_array(snap)
    cents = np.ascontiguousarray(kmeans(embeddings, n_clusters, rng, starts=_STARTS), dtype=np.float32)
    clustered_at = max(snap.seen, len(embeddings), 1)  # the traffic it was built from
    if coherence(embeddings, old) >= coherence(embeddings, cents):
        log.info("re-clustering: the live clustering explains the traffic as well (%.4f >= %.4f), kept",
                 coherence(embeddings, old), coherence(embeddings, cents))  # fmt: skip
        return msgspec.structs.replace(snap, clustered_at=clustered_at)
    old_lab, _ = assign_many(embeddings, old)
    new_lab, _ = assign_many(embeddings, cents)
    overlap = np.zeros((len(old), len(cents)))
    np.add.at(overlap, (old_lab, new_lab), 1.0)
    rows = overlap.sum(axis=1, keepdims=True)
    share = np.divide(overlap, rows, out=np.full_like(overlap, 1.0 / len(cents)), where=rows > 0)
    models = {m: i for i, m in enumerate(snap.models)}
    k, m = len(cents), len(snap.models)
    n, s = np.zeros((k, m)), np.zeros((k, m))
    placed = [(r, _target(models, r)) for r in rewards]
    placed = [(r, j) for r, j in placed if j is not None]
    embedded = [(r, j) for r, j in placed if r.embedding]
    if embedded:
        clusters, _ = assign_many(np.stack([np.frombuffer(r.embedding, dtype="<f4") for r, _ in embedded]), cents)
        for (r, j), c in zip(embedded, clusters):
            w = weights.of(r.kind)
            n[c, j] += w
            s[c, j] += w * min(max(r.reward, 0.0), 1.0)
    lost = 0
    for r, j in placed:
        if r.embedding:
            continue
        if r.clustering != snap.clustering or not 0 <= r.cluster < len(old):
            lost += 1
            continue
        w = weights.of(r.kind)
        n[:, j] += w * share[r.cluster]
        s[:, j] += w * min(max(r.reward, 0.0), 1.0) * share[r.cluster]
    if lost:
        log.warning("re-clustering: %d rewards of an older clustering without embeddings were left out", lost)
    carry = lambda a: share.T @ np.asarray(a, dtype=np.float64)  # noqa: E731
    return msgspec.structs.replace(
        snap,
        centroids=cents.astype("<f4").tobytes(),
        n=_rows(n),
        reward_sum=_rows(np.minimum(s, n)),
        decisions=_rows(np.rint(carry(snap.decisions)), int),
        calls=_rows(carry(usage_table(snap, "calls"))),
        bill_sum=_rows(carry(usage_table(snap, "bill_sum"))),
        completion_sum=_rows(carry(usage_table(snap, "completion_sum"))),
        escalations=_rows(carry(usage_table(snap, "escalations"))),
        clustering=snap.clustering + 1,
        clustered_at=clustered_at,
        drift=(),
    )


def _target(models: dict[str, int], r: RewardRow | RewardStats) -> int | None:
    # an upstream error is the fault of the model the policy chose; the rest, of who answered
    return models.get(r.arm if r.kind == "upstream_error" and r.arm else r.model)


def _evidence(snap: Snapshot, window: Window, weights: RewardWeights) -> tuple[np.ndarray, np.ndarray]:
    """The window's feedback as evidence weight and weighted reward per (cluster, model), (k, m)."""
    models = {m: i for i, m in enumerate(snap.models)}
    cents = centroid_array(snap)
    k, m = len(cents), len(snap.models)
    n, s = np.zeros((k, m)), np.zeros((k, m))

    for r in window.rewards:
        j = _target(models, r)
        if r.clustering != snap.clustering or j is None or not 0 <= r.cluster < k:
            continue  # stale rows arrive one by one in window.stale
        w = weights.of(r.kind)
        n[r.cluster, j] += w * r.count
        s[r.cluster, j] += w * r.reward_sum
    stale = [(r, _target(models, r)) for r in window.stale if r.clustering != snap.clustering]
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
        mine = [st for st in stats if budget_covers(target.policy, st.policy, st.tenant)]
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
    calls, bills, completion, escalations = (
        usage_table(snap, name) for name in ("calls", "bill_sum", "completion_sum", "escalations"))
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
            calls[st.cluster, j] += st.decisions
            escalations[st.cluster, j] += st.escalations
            bills[st.cluster, j] += st.cost_usd
            completion[st.cluster, j] += st.completion_tokens
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
    if params.half_life_ms > 0 and snap.watermark_ms > 0:  # (a first window has no old evidence)
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
        calls=_rows(calls),
        bill_sum=_rows(bills),
        completion_sum=_rows(completion),
        escalations=_rows(escalations),
        seen=snap.seen + int(cnt.sum()),
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
        calls=_rows(carry(usage_table(snap, "calls")) / params.carry),
        bill_sum=_rows(carry(usage_table(snap, "bill_sum")) / params.carry),
        completion_sum=_rows(carry(usage_table(snap, "completion_sum")) / params.carry),
        escalations=_rows(carry(usage_table(snap, "escalations")) / params.carry),
        clustering=snap.clustering + 1,
        drift=tuple(ClusterDrift() for _ in range(len(result.centroids))),
    )
