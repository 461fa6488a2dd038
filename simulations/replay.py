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
from learner.clusters import assign_many, kmeans
from learner.costs import estimate_tokens, price_per_token
from learner.policy import update_stats
from simulations.online import Evidence, OnlineRouter, PolicyConfig, resid_stats
from simulations.outcomes import Outcomes

__all__ = ["ReplayConfig", "ReplayRun", "fit_warm_start", "replay"]


class ReplayConfig(PolicyConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The router's configuration (``PolicyConfig``) and how the prompts are streamed."""

    passes: int = 1
    feedback: Literal["bandit", "full"] = "bandit"  # full: every model's outcome is revealed (a bound)


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


def _tokens(outcomes: Outcomes) -> np.ndarray:
    return np.array([estimate_tokens(p) for p in outcomes.prompts], dtype=np.float64)


def fit_warm_start(
    outcomes: Outcomes, embeddings: np.ndarray, n_clusters: int, rng: np.random.Generator,
    max_clusters: int = 8, weight: float = 1.0,
) -> Evidence:  # fmt: skip
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
    tokens = _tokens(outcomes)
    per_token = price_per_token(tokens, outcomes.costs)
    resid, count = resid_stats(k, m, labels[rows], arms, outcomes.costs[rows, arms], tokens[rows], per_token)
    return Evidence(outcomes.models, cents, n, s, resid, count)


def replay(
    outcomes: Outcomes,
    embeddings: np.ndarray,
    config: ReplayConfig,
    warm: Evidence | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayRun:
    """Route ``config.passes`` shuffled passes over the outcomes online, with bandit feedback.

    embeddings: (n, d) unit-norm float32, row i the embedding of ``outcomes.prompts[i]``
    (computed in one batch before the loop: embedding is a pure function of the text).
    The price sheet (USD per prompt token) is read off the file's bills, standing for the
    provider price list a team configures; the completion part of each cost is learned online.
    """
    cfg = config
    n, m = outcomes.scores.shape
    rng = np.random.default_rng(cfg.seed)
    order = np.concatenate([rng.permutation(n) for _ in range(max(1, cfg.passes))])
    row_rng = np.random.default_rng([cfg.seed, 1])
    tokens = _tokens(outcomes)
    per_prompt = m if cfg.feedback == "full" else 1  # records per prompt: clustering schedules count prompts
    rcfg = msgspec.structs.replace(cfg, cold_start=cfg.cold_start * per_prompt, learn_every=cfg.learn_every * per_prompt,
                                   recluster_until=cfg.recluster_until * per_prompt)  # fmt: skip
    router = OnlineRouter(rcfg, outcomes.models, embeddings.shape[1], price_per_token(tokens, outcomes.costs), warm)
    total = len(order)
    arms = np.zeros(total, dtype=np.int64)
    clusters = np.zeros(total, dtype=np.int64)
    props = np.zeros(total)
    rewards = np.zeros(total)
    paid = np.zeros(total)
    scores, billed, available = outcomes.scores, outcomes.costs, outcomes.available
    for t, i in enumerate(order):
        row = int(row_rng.integers(cfg.thompson_samples))
        arm, p, c = router.decide(embeddings[i], tokens[i], available[i], row, billed[i])
        arms[t], clusters[t], props[t] = arm, c, p[arm]
        rewards[t], paid[t] = scores[i, arm], billed[i, arm]
        if cfg.feedback == "full":
            for j in np.flatnonzero(available[i]):
                router.record(embeddings[i], int(j), c, scores[i, j], billed[i, j], tokens[i])
        else:
            router.record(embeddings[i], arm, c, rewards[t], paid[t], tokens[i])
        if progress is not None and ((t + 1) % 256 == 0 or t + 1 == total):
            progress(256 if (t + 1) % 256 == 0 else (t + 1) % 256)
    return ReplayRun(order, arms, clusters, props, rewards, paid, float(router.weight), router.k)
