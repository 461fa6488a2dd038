"""Turnout's router and learner folded into one in-process object, for offline runs.

The service splits this across processes (``service.routing`` decides on an immutable
snapshot; ``learner.cycle`` folds feedback into the next one). Offline, the same core calls run
in one loop: ``decide`` is ``Router.decide`` (nearest centroid, the cluster's matrix of
posterior draws for the current version, ``learner.policy.choose`` on one uniformly drawn
row, exact propensities); ``record`` + the periodic fold are ``LearningCycle.run``
(``learner.policy.update_stats``, k-means cold start, decisions placed by their embedding).
Nothing here re-implements the policy: the levers measured in ``docs/simulations.md`` are pure
functions of ``learner/`` switched on by ``PolicyConfig``.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np

from learner.cluster_count import choose_k
from learner.budget import BudgetParams, BudgetTarget, dual_update
from learner.budget import start as budget_start
from learner.clusters import assign, assign_many, kmeans
from learner.costs import completion_cost, estimate_costs
from learner.dominance import bounds, dominated
from learner.policy import choose, draw_samples, posterior, update_stats
from learner.priors import shrink_from_data, temper, tier_from_prices

__all__ = ["Evidence", "OnlineRouter", "PolicyConfig", "resid_stats"]


class PolicyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The router's configuration for an offline run. Defaults are the service's defaults."""

    cost_weight: float = 25.0  # quality points one US dollar is worth
    budget_usd: float | None = None  # target mean cost per request: the cost weight is paced to it
    budget_window: int = 100  # decisions per dual step of the paced weight (a learner cycle's window)
    n_clusters: int = 4  # 0: chosen from the data (silhouette) at each clustering
    max_clusters: int = 8  # the most clusters n_clusters=0 may choose
    cold_start: int = 64  # prompts seen before the first clustering (learner.cold_start_min)
    recluster_growth: float = 0.0  # > 1: cluster again when the prompts seen grow by this factor
    recluster_until: int = 4096  # ... until this many prompts were seen
    prior_strength: float = 2.0
    shrink_strength: float = 5.0  # 0: per model, from the spread of its cluster means (empirical Bayes)
    prior: Literal["flat", "prices"] = "flat"  # prior quality: one tier for all, or from prices
    tier: float = 0.6  # the flat prior's quality
    costs: Literal["tokens", "mean", "exact"] = "tokens"  # how the cost of a call is estimated
    thompson_samples: int = 1024
    learn_every: int = 1
    discount: float = 1.0  # old evidence is multiplied by this at each fold (learner.discount)
    eliminate: float = 0.0  # credible level of dominated-model elimination; 0 keeps every model
    temper: float = 1.0  # posterior concentration factor (> 1 explores less)
    seed: int = 0


class Evidence(msgspec.Struct, frozen=True):
    """Centroids and evidence to start from (a warm start). centroids (k, d); the rest (k, m)."""

    models: tuple[str, ...]
    centroids: np.ndarray
    n: np.ndarray
    s: np.ndarray
    resid_sum: np.ndarray
    count: np.ndarray

    def aligned(self, models: tuple[str, ...]) -> "Evidence":
        """The same evidence on another model axis (models it lacks start empty)."""
        idx = [self.models.index(m) if m in self.models else -1 for m in models]

        def pick(a: np.ndarray) -> np.ndarray:
            out = np.zeros((a.shape[0], len(models)))
            for j, i in enumerate(idx):
                if i >= 0:
                    out[:, j] = a[:, i]
            return out

        return Evidence(models, self.centroids, pick(self.n), pick(self.s), pick(self.resid_sum), pick(self.count))


def resid_stats(k: int, m: int, clusters, arms, costs, tokens, per_token) -> tuple[np.ndarray, np.ndarray]:
    """Billed cost beyond the prompt part, summed per (cluster, model), and bill counts: (k, m) each."""
    resid = np.zeros((k, m))
    count = np.zeros((k, m))
    np.add.at(resid, (clusters, arms), np.asarray(costs) - np.asarray(tokens) * per_token[arms])
    np.add.at(count, (clusters, arms), 1.0)
    return resid, count


def _update(n, s, clusters, arms, rewards, discount) -> tuple[np.ndarray, np.ndarray]:
    """``update_stats`` where a NaN reward (no feedback) carries no weight."""
    seen = ~np.isnan(rewards)
    return update_stats(n, s, clusters, arms, np.where(seen, rewards, 0.0), weights=seen.astype(np.float64),
                        discount=discount)  # fmt: skip


class _History:
    """Growable columns of what was decided and revealed (for refolds after a re-clustering)."""

    def __init__(self, dim: int) -> None:
        self.size = 0
        self.emb = np.zeros((256, dim), dtype=np.float32)
        self.cols = {name: np.zeros(256) for name in ("arm", "cluster", "reward", "cost", "tokens")}

    def append(self, emb: np.ndarray, arm: int, cluster: int, reward: float, cost: float, tokens: float) -> None:
        if self.size == len(self.emb):
            self.emb = np.concatenate([self.emb, np.zeros_like(self.emb)])
            self.cols = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self.cols.items()}
        i = self.size
        self.emb[i] = emb
        for name, v in (("arm", arm), ("cluster", cluster), ("reward", reward), ("cost", cost), ("tokens", tokens)):
            self.cols[name][i] = v
        self.size += 1

    def col(self, name: str, start: int = 0) -> np.ndarray:
        return self.cols[name][start : self.size]


class OnlineRouter:
    """Decide, record what the chosen model revealed, learn every ``learn_every`` records.

    per_token: (m,) USD per prompt token of each model (the price sheet). ``warm`` starts from
    fitted centroids and evidence instead of one catch-all cluster.
    """

    def __init__(self, config: PolicyConfig, models: tuple[str, ...], dim: int, per_token: np.ndarray,
                 warm: Evidence | None = None) -> None:  # fmt: skip
        cfg = self.cfg = config
        self.models = models
        m = self.m = len(models)
        self.per_token = np.asarray(per_token, dtype=np.float64)
        self.prior_mean = tier_from_prices(self.per_token) if cfg.prior == "prices" else np.full(m, cfg.tier)
        self.weight = cfg.cost_weight
        self._budget = None
        if cfg.budget_usd is not None:  # the learner's dual ascent (learner.budget), one step per window
            self._budget = budget_start(BudgetTarget("offline", cfg.budget_usd, 0.05 / cfg.budget_usd), BudgetParams())
            self.weight = self._budget.cost_weight
        self._window = [0, 0.0]  # decisions and summed cost since the last dual step
        self._hist = _History(dim)
        self._folded = 0
        self._rng = np.random.default_rng([cfg.seed, 2])
        if warm is not None:
            warm = warm.aligned(models)
            self.centroids = np.ascontiguousarray(warm.centroids, dtype=np.float32)
            self._base = (warm.n, warm.s, warm.resid_sum, warm.count)
            self._next_cluster = None
        else:
            self.centroids = np.full((1, dim), 1.0 / np.sqrt(dim), dtype=np.float32)
            self._base = tuple(np.zeros((1, m)) for _ in range(4))
            self._next_cluster = None if cfg.n_clusters == 1 else max(1, cfg.cold_start)
        self.n, self.s, self.resid, self.count = (a.copy() for a in self._base)
        self.mean_cost = np.zeros(m)  # running mean of billed cost per model (costs="mean")
        self.calls = np.zeros(m)
        self.version = 0
        self._refresh()

    @property
    def k(self) -> int:
        return len(self.centroids)

    def decide(self, embedding: np.ndarray, tokens: float, allowed: np.ndarray, row: int,
               exact_costs: np.ndarray | None = None) -> tuple[int, np.ndarray, int]:  # fmt: skip
        """(arm, propensities (m,), cluster) for one prompt; ``row`` is the uniform draw in [0, S)."""
        c, _ = assign(embedding, self.centroids)
        if self.cfg.costs == "tokens":
            est = estimate_costs(tokens, self.per_token, self.completion[c])
        elif self.cfg.costs == "mean":
            est = self.mean_cost
        else:
            est = np.nan_to_num(exact_costs, nan=0.0)
        penalty = self.weight * est
        if self.cfg.eliminate > 0:
            lower, upper = bounds(self.alpha[c], self.beta[c], self.cfg.eliminate)
            allowed = allowed & ~dominated(lower, upper, penalty, allowed)
        arm, props = choose(self._samples(c), penalty, allowed, row)
        return arm, props, c

    def set_prices(self, per_token: np.ndarray) -> None:
        """A new price sheet (a provider changed its prices, a model joined)."""
        self.per_token = np.asarray(per_token, dtype=np.float64).copy()
        if self.cfg.prior == "prices":
            self.prior_mean = tier_from_prices(self.per_token)
        self._refresh()

    def record(self, embedding: np.ndarray, arm: int, cluster: int, reward: float | None, cost: float,
               tokens: float) -> None:  # fmt: skip
        """What the chosen model revealed (``reward`` None: the bill but no feedback); learns every
        ``learn_every`` records."""
        self._hist.append(embedding, arm, cluster, np.nan if reward is None else reward, cost, tokens)
        if self._budget is not None:
            self._window[0] += 1
            self._window[1] += cost
            if self._window[0] >= self.cfg.budget_window:
                self._budget = dual_update(self._budget, self._window[0], self._window[1], BudgetParams())
                self.weight = self._budget.cost_weight
                self._window = [0, 0.0]
        seen = self._hist.size
        if self._next_cluster is not None and seen >= self._next_cluster:
            self._recluster()
            grown = int(seen * self.cfg.recluster_growth)
            ok = self.cfg.recluster_growth > 1 and grown <= self.cfg.recluster_until
            self._next_cluster = grown if ok else None
        elif seen - self._folded >= self.cfg.learn_every:
            self._fold()

    def _recluster(self) -> None:
        """Cluster what was seen (as ``learner.cycle`` cold start) and refold every decision by its embedding."""
        h = self._hist
        emb = h.emb[: h.size]
        if self.cfg.n_clusters <= 0:
            _, cents, _ = choose_k(emb, self.cfg.max_clusters, self._rng)
        else:
            cents = kmeans(emb, self.cfg.n_clusters, self._rng)
        self.centroids = np.ascontiguousarray(cents, dtype=np.float32)
        self._base = tuple(np.zeros((self.k, self.m)) for _ in range(4))
        clusters, _ = assign_many(emb, self.centroids)
        arms = h.col("arm").astype(np.int64)
        self.n, self.s = _update(self._base[0], self._base[1], clusters, arms, h.col("reward"), 1.0)
        r, c = resid_stats(self.k, self.m, clusters, arms, h.col("cost"), h.col("tokens"), self.per_token)
        self.resid, self.count = r, c
        self._folded = h.size
        self.calls = np.zeros(self.m)
        self.mean_cost = np.zeros(self.m)
        self._count_bills(arms, h.col("cost"))
        self._refresh()

    def _fold(self) -> None:
        h, start = self._hist, self._folded
        arms = h.col("arm", start).astype(np.int64)
        clusters = h.col("cluster", start).astype(np.int64)
        self.n, self.s = _update(self.n, self.s, clusters, arms, h.col("reward", start), self.cfg.discount)
        r, c = resid_stats(self.k, self.m, clusters, arms, h.col("cost", start), h.col("tokens", start), self.per_token)
        self.resid += r
        self.count += c
        self._folded = h.size
        self._count_bills(arms, h.col("cost", start))
        self._refresh()

    def _count_bills(self, arms: np.ndarray, costs: np.ndarray) -> None:
        for a, cost in zip(arms, costs):
            self.calls[a] += 1
            self.mean_cost[a] += (cost - self.mean_cost[a]) / self.calls[a]

    def _refresh(self) -> None:
        cfg = self.cfg
        if cfg.shrink_strength > 0:
            alpha, beta = posterior(self.n, self.s, self.prior_mean, cfg.prior_strength, cfg.shrink_strength)
        else:  # one posterior call per model, each with its own strength
            k = shrink_from_data(self.n, self.s, default=5.0)
            cols = [posterior(self.n[:, j : j + 1], self.s[:, j : j + 1], self.prior_mean[j : j + 1],
                              cfg.prior_strength, float(k[j])) for j in range(self.m)]  # fmt: skip
            alpha = np.concatenate([a for a, _ in cols], axis=1)
            beta = np.concatenate([b for _, b in cols], axis=1)
        if cfg.temper != 1.0:
            alpha, beta = temper(alpha, beta, cfg.temper)
        self.alpha, self.beta = alpha, beta
        self.completion = completion_cost(self.per_token, self.resid, self.count)
        self.version += 1
        self._drawn: dict[int, np.ndarray] = {}

    def _samples(self, c: int) -> np.ndarray:
        """The cluster's matrix of posterior draws for this version (S, m), drawn when first needed."""
        got = self._drawn.get(c)
        if got is None:
            rng = np.random.default_rng([self.cfg.seed, self.version, c])
            got = draw_samples(self.alpha[c : c + 1], self.beta[c : c + 1], self.cfg.thompson_samples, rng)[0]
            self._drawn[c] = got
        return got
