"""Contextual Thompson sampling over (cluster, model) Beta posteriors of answer quality.

The posterior of model m in cluster c is shrunk toward m's global posterior (pooled over all
clusters, itself shrunk toward a prior from the model's tier), so a new or rare cluster starts
from what the model does everywhere else instead of from nothing:

    global:   a_m = s0 * p_m + sum_c S_cm,      b_m = s0 * (1 - p_m) + sum_c (N_cm - S_cm)
    cluster:  a_cm = k * mu_m + S_cm,           b_cm = k * (1 - mu_m) + N_cm - S_cm

with mu_m = a_m / (a_m + b_m), ``s0 = prior_strength``, ``k = shrink_strength``.

Sampling is done against an immutable matrix of posterior draws (``draw_samples``): a decision
takes one row, chosen by a uniform index passed in, and picks the model of highest utility
``quality - penalty`` in that row. Because the policy *is* "a uniformly drawn row of this
matrix", the logged propensity (the share of rows in which the chosen model wins for this
request) is the exact probability of the decision, with no estimation error between the policy
and what off-policy evaluation is told about it.

References: Thompson (1933); Chapelle & Li, An Empirical Evaluation of Thompson Sampling (2011);
Gelman et al., Bayesian Data Analysis ch. 5 (hierarchical Beta-binomial).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = [
    "choose",
    "credible_interval",
    "draw_samples",
    "expected_cost_usd",
    "posterior",
    "update_stats",
]


def posterior(
    n: np.ndarray,
    s: np.ndarray,
    prior_mean: np.ndarray,
    prior_strength: float,
    shrink_strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical Beta posterior parameters.

    n, s: (k, m) evidence weight and summed reward per (cluster, model);
    prior_mean: (m,) prior quality per model in (0, 1). Returns alpha, beta: (k, m) float64.
    """
    n = np.asarray(n, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    p = np.clip(np.asarray(prior_mean, dtype=np.float64), 1e-3, 1 - 1e-3)
    a_glob = prior_strength * p + s.sum(axis=0)
    b_glob = prior_strength * (1.0 - p) + (n - s).sum(axis=0)
    mu = a_glob / (a_glob + b_glob)
    alpha = shrink_strength * mu[None, :] + s
    beta = shrink_strength * (1.0 - mu)[None, :] + (n - s)
    return np.maximum(alpha, 1e-6), np.maximum(beta, 1e-6)


def draw_samples(
    alpha: np.ndarray, beta: np.ndarray, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Posterior draws of quality: alpha, beta (k, m) -> samples (k, n_samples, m) float32."""
    k, m = alpha.shape
    draws = rng.beta(
        np.broadcast_to(alpha[:, None, :], (k, n_samples, m)),
        np.broadcast_to(beta[:, None, :], (k, n_samples, m)),
    )
    return draws.astype(np.float32)


def expected_cost_usd(
    prompt_tokens: float,
    completion_tokens: np.ndarray,
    price_in_per_mtok: np.ndarray,
    price_out_per_mtok: np.ndarray,
) -> np.ndarray:
    """Cost of answering with each model, known from prices before the call: (m,) USD."""
    return (prompt_tokens * price_in_per_mtok + completion_tokens * price_out_per_mtok) / 1e6


def choose(
    samples: np.ndarray, penalty: np.ndarray, allowed: np.ndarray, row: int
) -> tuple[int, np.ndarray]:
    """One Thompson-sampling decision in one cluster.

    samples: (S, m) quality draws of the cluster; penalty: (m,) utility subtracted per model
    (cost_weight * cost + latency_weight * latency); allowed: (m,) bool, at least one True;
    row: the uniform draw in [0, S) that picks the posterior sample.
    Returns the chosen model index and the propensities of every model, (m,) summing to 1.
    """
    utility = samples - penalty[None, :].astype(np.float32)
    if not allowed.all():
        utility = np.where(allowed[None, :], utility, -np.inf)
    winners = np.argmax(utility, axis=1)
    propensities = np.bincount(winners, minlength=samples.shape[1]) / samples.shape[0]
    return int(winners[row]), propensities


def update_stats(
    n: np.ndarray,
    s: np.ndarray,
    clusters: np.ndarray,
    arms: np.ndarray,
    rewards: np.ndarray,
    weights: np.ndarray | None = None,
    discount: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fold new observations into the sufficient statistics.

    n, s: (k, m); clusters, arms: (r,) int; rewards: (r,) in [0, 1]; weights: (r,) >= 0.
    Old evidence is first multiplied by ``discount`` in (0, 1] (1 keeps everything).
    Returns new arrays; inputs are not modified.
    """
    w = np.ones(len(rewards)) if weights is None else np.asarray(weights, dtype=np.float64)
    n2 = np.asarray(n, dtype=np.float64) * discount
    s2 = np.asarray(s, dtype=np.float64) * discount
    np.add.at(n2, (clusters, arms), w)
    np.add.at(s2, (clusters, arms), w * np.clip(rewards, 0.0, 1.0))
    return n2, s2


def credible_interval(
    alpha: np.ndarray, beta: np.ndarray, level: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval of Beta(alpha, beta), elementwise."""
    tail = (1.0 - level) / 2.0
    return stats.beta.ppf(tail, alpha, beta), stats.beta.ppf(1.0 - tail, alpha, beta)
