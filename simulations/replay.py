"""Replay of real outcomes: route every prompt online and learn only what the chosen model did.

The protocol is the product's (issue 5): shuffle the prompts with the seed; for each prompt in
turn, embed its text, route it with Turnout's policy as configured, then reveal *only the
chosen model's* score and cost (bandit feedback); fold what was revealed into the evidence
every ``learn_every`` prompts, as the learner would. The ``task`` field is never read here.

The policy is the core's: ``learner.policy`` (hierarchical Beta posterior, a matrix of
posterior draws per snapshot version, ``choose`` on one uniformly drawn row, exact
propensities), ``learner.clusters`` (nearest centroid, k-means cold start as in
``learner.cycle``). The levers this module switches on (cost estimates per token, priors from
prices, a data-chosen cluster count, dominated-model elimination, tempering) are pure
functions of ``learner/`` too, so the service can take what works.
"""

from __future__ import annotations

from typing import Callable, Literal

import msgspec
import numpy as np

from learner.cluster_count import choose_k
from learner.clusters import assign, assign_many, kmeans
from learner.costs import completion_cost, estimate_costs, price_per_token, prompt_tokens
from learner.dominance import dominated
from learner.policy import choose, credible_interval, draw_samples, posterior, update_stats
from learner.priors import temper, tier_from_prices
from simulations.outcomes import Outcomes

__all__ = ["ReplayConfig", "ReplayRun", "WarmStart", "fit_warm_start", "pace", "replay"]


class ReplayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the router is configured for a replay. Defaults are the service's defaults."""

    cost_weight: float = 25.0  # quality points one US dollar is worth
    budget_usd: float | None = None  # target mean cost per request: the cost weight is paced to it
    n_clusters: int = 4  # 0: chosen from the data (silhouette) at cold start
    max_clusters: int = 8  # the most clusters n_clusters=0 may choose
    cold_start: int = 64  # prompts seen before the first clustering (learner.cold_start_min)
    recluster_growth: float = 0.0  # > 1: cluster again when the prompts seen grow by this factor
    recluster_until: int = 4096  # ... until this many prompts were seen
    prior_strength: float = 2.0
    shrink_strength: float = 5.0
    prior: Literal["flat", "prices"] = "flat"  # prior quality: one tier for all, or from prices
    tier: float = 0.6  # the flat prior's quality
    costs: Literal["tokens", "mean", "exact"] = "tokens"  # how the cost of a call is estimated
    thompson_samples: int = 1024
    learn_every: int = 1
    eliminate: float = 0.0  # credible level of dominated-model elimination; 0 keeps every model
    temper: float = 1.0  # posterior concentration factor (> 1 explores less)
    passes: int = 1
    seed: int = 0


class WarmStart(msgspec.Struct, frozen=True):
    """Evidence fitted with full information on another outcome set (every model's score seen).

    centroids: (k, d); n, s, resid_sum, count: (k, m) on ``models``.
    """

    models: tuple[str, ...]
    centroids: np.ndarray
    n: np.ndarray
    s: np.ndarray
    resid_sum: np.ndarray
    count: np.ndarray


class ReplayRun(msgspec.Struct, frozen=True):
    """What happened to each routed prompt, in routing order: all arrays (T,)."""

    rows: np.ndarray  # index into the outcomes
    arms: np.ndarray
    clusters: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    cost_weight: float  # the final cost weight (paced when a budget is set)
    n_clusters: int

    @property
    def mean_quality(self) -> float:
        return float(self.rewards.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.costs.mean())


def pace(weight: float, mean_cost: float, budget_usd: float, gain: float) -> float:
    """One multiplicative step of the cost weight toward a spending target (a dual update).

    Spending above the budget raises the price of cost; below it, lowers it. ``gain`` is the
    step size in log space per unit of relative error.
    """
    err = float(np.clip(mean_cost / budget_usd - 1.0, -1.0, 1.0))
    return float(np.clip(weight * np.exp(gain * err), 1e-3, 1e9))


def _resid_stats(k: int, m: int, clusters, arms, costs, tokens, per_token) -> tuple[np.ndarray, np.ndarray]:
    resid = np.zeros((k, m))
    count = np.zeros((k, m))
    np.add.at(resid, (clusters, arms), costs - tokens * per_token[arms])
    np.add.at(count, (clusters, arms), 1.0)
    return resid, count


def fit_warm_start(
    outcomes: Outcomes, embeddings: np.ndarray, n_clusters: int, rng: np.random.Generator,
    max_clusters: int = 8, weight: float = 1.0,
) -> WarmStart:  # fmt: skip
    """Centroids and evidence from an offline evaluation with full information.

    embeddings: (n, d) of the outcome prompts. ``n_clusters`` 0 chooses the count from the data.
    Every available (prompt, model) outcome counts as one observation of ``weight``.
    """
    if n_clusters <= 0:
        _, cents, _ = choose_k(embeddings, max_clusters, rng)
    else:
        cents = kmeans(embeddings, n_clusters, rng)
    labels, _ = assign_many(embeddings, cents)
    k, m = len(cents), len(outcomes.models)
    rows, arms = np.nonzero(outcomes.available)
    n, s = update_stats(np.zeros((k, m)), np.zeros((k, m)), labels[rows], arms, outcomes.scores[rows, arms],
                        weights=np.full(len(rows), weight))  # fmt: skip
    tokens = np.array([prompt_tokens(p) for p in outcomes.prompts], dtype=np.float64)
    per_token = price_per_token(tokens, outcomes.costs)
    resid, count = _resid_stats(k, m, labels[rows], arms, outcomes.costs[rows, arms], tokens[rows], per_token)
    return WarmStart(outcomes.models, cents, n, s, resid, count)


def _align(warm: WarmStart, models: tuple[str, ...]) -> WarmStart:
    idx = [warm.models.index(m) if m in warm.models else -1 for m in models]

    def pick(a: np.ndarray) -> np.ndarray:
        out = np.zeros((a.shape[0], len(models)))
        for j, i in enumerate(idx):
            if i >= 0:
                out[:, j] = a[:, i]
        return out

    return WarmStart(models, warm.centroids, pick(warm.n), pick(warm.s), pick(warm.resid_sum), pick(warm.count))


class _Learner:
    """The router's state during a replay: centroids, evidence, cost statistics, sample matrices."""

    def __init__(self, cfg: ReplayConfig, m: int, dim: int, prior_mean: np.ndarray, per_token: np.ndarray,
                 warm: WarmStart | None) -> None:  # fmt: skip
        self.cfg = cfg
        self.m = m
        self.prior_mean = prior_mean
        self.per_token = per_token
        if warm is not None:
            self.centroids = np.ascontiguousarray(warm.centroids, dtype=np.float32)
            self.base = (warm.n, warm.s, warm.resid_sum, warm.count)
            self.clustered = True
        else:
            self.centroids = np.full((1, dim), 1.0 / np.sqrt(dim), dtype=np.float32)
            self.base = tuple(np.zeros((1, m)) for _ in range(4))
            self.clustered = cfg.n_clusters == 1
        self.n, self.s, self.resid, self.count = (a.copy() for a in self.base)
        self.mean_cost = np.zeros(m)  # running mean of billed cost per model ("mean" estimates)
        self.calls = np.zeros(m)
        self.version = 0
        self._refresh()

    @property
    def k(self) -> int:
        return len(self.centroids)

    def recluster(self, emb: np.ndarray, rng: np.random.Generator) -> None:
        """Cold start (as ``learner.cycle.cold_start_clusters``): k-means on what was seen."""
        if self.cfg.n_clusters <= 0:
            _, cents, _ = choose_k(emb, self.cfg.max_clusters, rng)
        else:
            cents = kmeans(emb, self.cfg.n_clusters, rng)
        self.centroids = np.ascontiguousarray(cents, dtype=np.float32)
        self.base = tuple(np.zeros((self.k, self.m)) for _ in range(4))
        self.clustered = True

    def refold(self, emb, arms, rewards, costs, tokens) -> None:
        """All evidence again, every past decision placed by its embedding under the current centroids."""
        clusters, _ = assign_many(emb, self.centroids) if len(emb) else (np.zeros(0, np.int64), None)
        self.n, self.s = update_stats(self.base[0], self.base[1], clusters, arms, rewards)
        r, c = _resid_stats(self.k, self.m, clusters, arms, costs, tokens, self.per_token)
        self.resid, self.count = self.base[2] + r, self.base[3] + c
        self._refresh()

    def fold(self, clusters, arms, rewards, costs, tokens) -> None:
        self.n, self.s = update_stats(self.n, self.s, clusters, arms, rewards)
        r, c = _resid_stats(self.k, self.m, clusters, arms, costs, tokens, self.per_token)
        self.resid += r
        self.count += c
        for a, cost in zip(arms, costs):
            self.calls[a] += 1
            self.mean_cost[a] += (cost - self.mean_cost[a]) / self.calls[a]
        self._refresh()

    def _refresh(self) -> None:
        cfg = self.cfg
        alpha, beta = posterior(self.n, self.s, self.prior_mean, cfg.prior_strength, cfg.shrink_strength)
        if cfg.temper != 1.0:
            alpha, beta = temper(alpha, beta, cfg.temper)
        self.alpha, self.beta = alpha, beta
        self.completion = completion_cost(self.per_token, self.resid, self.count)
        if cfg.eliminate > 0:
            self.lower, self.upper = credible_interval(alpha, beta, cfg.eliminate)
        self.version += 1
        self._samples: dict[int, np.ndarray] = {}

    def samples(self, c: int) -> np.ndarray:
        """The cluster's matrix of posterior draws for this version (S, m), drawn when first needed."""
        got = self._samples.get(c)
        if got is None:
            rng = np.random.default_rng([self.cfg.seed, self.version, c])
            got = draw_samples(self.alpha[c : c + 1], self.beta[c : c + 1], self.cfg.thompson_samples, rng)[0]
            self._samples[c] = got
        return got

    def costs(self, c: int, tokens: float, exact: np.ndarray) -> np.ndarray:
        mode = self.cfg.costs
        if mode == "tokens":
            return estimate_costs(tokens, self.per_token, self.completion[c])
        if mode == "mean":
            return self.mean_cost.copy()
        return np.nan_to_num(exact, nan=0.0)


def replay(
    outcomes: Outcomes,
    embeddings: np.ndarray,
    config: ReplayConfig,
    warm: WarmStart | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayRun:
    """Route ``config.passes`` shuffled passes over the outcomes online, with bandit feedback.

    embeddings: (n, d) unit-norm float32, row i the embedding of ``outcomes.prompts[i]``
    (computed in one batch before the loop: embedding is a pure function of the text).
    """
    cfg = config
    n, m = outcomes.scores.shape
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(n) for _ in range(max(1, cfg.passes))])
    row_rng = np.random.default_rng([cfg.seed, 1])
    cluster_rng = np.random.default_rng([cfg.seed, 2])
    tokens = np.array([prompt_tokens(p) for p in outcomes.prompts], dtype=np.float64)
    per_token = price_per_token(tokens, outcomes.costs)
    if cfg.prior == "prices":
        prior_mean = tier_from_prices(per_token)
    else:
        prior_mean = np.full(m, cfg.tier)
    if warm is not None:
        warm = _align(warm, outcomes.models)
    state = _Learner(cfg, m, embeddings.shape[1], prior_mean, per_token, warm)

    t_total = len(order)
    arms = np.zeros(t_total, dtype=np.int64)
    clusters = np.zeros(t_total, dtype=np.int64)
    props = np.zeros(t_total)
    rewards = np.zeros(t_total)
    paid = np.zeros(t_total)
    weight = cfg.cost_weight if cfg.budget_usd is None else 0.05 / cfg.budget_usd
    spent_ema = cfg.budget_usd or 0.0
    folded = 0
    next_cluster = max(1, cfg.cold_start) if not state.clustered else t_total + 1
    scores, billed, available = outcomes.scores, outcomes.costs, outcomes.available
    for t, i in enumerate(order):
        c, _ = assign(embeddings[i], state.centroids)
        est = state.costs(c, tokens[i], billed[i])
        penalty = weight * est
        allowed = available[i]
        if cfg.eliminate > 0:
            allowed = allowed & ~dominated(state.lower[c], state.upper[c], penalty, allowed)
        row = int(row_rng.integers(cfg.thompson_samples))
        arm, p = choose(state.samples(c), penalty, allowed, row)
        arms[t], clusters[t], props[t] = arm, c, p[arm]
        rewards[t], paid[t] = scores[i, arm], billed[i, arm]
        if cfg.budget_usd is not None:
            spent_ema += (paid[t] - spent_ema) / 50.0
        seen = t + 1
        if seen >= next_cluster:
            state.recluster(embeddings[order[:seen]], cluster_rng)
            state.refold(embeddings[order[:seen]], arms[:seen], rewards[:seen], paid[:seen], tokens[order[:seen]])
            folded = seen
            grown = int(seen * cfg.recluster_growth)
            next_cluster = grown if cfg.recluster_growth > 1 and grown <= cfg.recluster_until else t_total + 1
        elif seen - folded >= cfg.learn_every:
            sl = slice(folded, seen)
            state.fold(clusters[sl], arms[sl], rewards[sl], paid[sl], tokens[order[sl]])
            folded = seen
            if cfg.budget_usd is not None:
                weight = pace(weight, spent_ema, cfg.budget_usd, 0.02 * cfg.learn_every)
        if progress is not None and (seen % 256 == 0 or seen == t_total):
            progress(256 if seen % 256 == 0 else seen % 256)
    return ReplayRun(order, arms, clusters, props, rewards, paid, float(weight), state.k)
