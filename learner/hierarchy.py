"""A hierarchy over the clusters, and the Beta posteriors it shrinks along.

Routing clusters (the leaves) are grouped into coarser groups, and every group hangs from one
root, so there are three levels: root -> groups -> leaves. Evidence is kept per leaf; a group's
evidence is the sum of its leaves', the root's the sum of all. The posterior of model m at a
node is its parent's posterior mean, as a prior of strength kappa, updated with the node's own
evidence:

    root:   a = s0 * p_m + S_m,                  b = s0 * (1 - p_m) + N_m - S_m
    node:   a = kappa * mu_parent,m + S_node,m,    b = kappa * (1 - mu_parent,m) + N_node,m - S_node,m

So a leaf with little evidence routes as its group does, and a group with little evidence as the
whole pool does: many fine clusters cost little exploration, and a wrong cluster count is cheap.
kappa is fixed, or (``shrink <= 0``) estimated per level and model from the data by the method of
moments: the spread of the nodes' means around their parents' beyond what sampling noise explains
is the between-node variance tau^2, and a Beta prior of strength mu (1 - mu) / tau^2 - 1 has that
variance. Nodes that do not differ lean hard on their parent; nodes that differ, hardly.

References: Gelman et al., Bayesian Data Analysis, ch. 5 (hierarchical Beta-binomial, method of
moments); DerSimonian & Laird, Meta-analysis in clinical trials (1986).
"""

from __future__ import annotations

import numpy as np

from learner.clusters import kmeans

__all__ = ["group_leaves", "hierarchical_posterior", "levels"]

_KAPPA_MIN, _KAPPA_MAX = 2.0, 1000.0


def group_leaves(centroids: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, branching: int) -> tuple[int, ...]:
    """Groups over the leaves: the parent index of every node, leaves first, then groups, then the root.

    centroids: (k, d) unit-norm leaf centroids; sizes: (k,) prompts per leaf (weights).
    About sqrt(k) groups, each of leaves near one another (k-means over the centroids, each
    repeated by its weight share); with fewer than ``branching`` + 1 leaves there are no groups.
    Returns parents: (k + g + 1,) with the root's parent -1.
    """
    k = len(centroids)
    if k <= branching:
        return tuple([k] * k + [-1])
    g = max(2, min(k - 1, int(round(np.sqrt(k)))))
    w = np.maximum(np.asarray(sizes, dtype=np.float64), 1.0)
    reps = np.maximum(1, np.round(8 * k * w / w.sum())).astype(int)
    groups = kmeans(np.repeat(np.asarray(centroids, dtype=np.float32), reps, axis=0), g, rng)
    labels = np.argmax(np.asarray(centroids, dtype=np.float32) @ groups.T, axis=1)
    used = np.unique(labels)
    if len(used) < 2:
        return tuple([k] * k + [-1])
    remap = {int(u): i for i, u in enumerate(used)}
    root = k + len(used)
    return tuple([k + remap[int(c)] for c in labels] + [root] * len(used) + [-1])


def levels(parents: tuple[int, ...] | np.ndarray, k: int) -> np.ndarray:
    """Depth of every node (root 0). parents: (N,) as ``group_leaves`` returns; an empty
    tuple means leaves directly under one root."""
    if len(parents) == 0:
        return np.concatenate([np.ones(k, dtype=np.int64), [0]])
    p = np.asarray(parents)
    depth = np.zeros(len(p), dtype=np.int64)
    for i in range(len(p)):
        d, j = 0, i
        while p[j] >= 0:
            j = p[j]
            d += 1
        depth[i] = d
    return depth


def _node_evidence(x: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """Leaf rows (k, m) -> every node's (N, m): a node sums its children."""
    k = len(x)
    out = np.zeros((len(parents), x.shape[1]))
    out[:k] = x
    depth = levels(parents, k)
    for d in range(int(depth.max()), 0, -1):
        nodes = np.flatnonzero(depth == d)
        np.add.at(out, parents[nodes], out[nodes])
    return out


def _kappa(n: np.ndarray, s: np.ndarray, prior: np.ndarray, fallback: float) -> np.ndarray:
    """Method-of-moments prior strength per model from nodes' evidence around their prior means.

    n, s, prior: (nodes, m). E[(s/n - p)^2] = tau^2 + p (1 - p) / n, so
    tau^2 = sum_i n_i [(s_i/n_i - p_i)^2 - p_i (1 - p_i) / n_i] / sum_i n_i. Models seen in fewer
    than two nodes keep ``fallback``. Returns (m,).
    """
    out = np.full(n.shape[1], float(fallback))
    seen = n > 0
    enough = seen.sum(axis=0) >= 2
    if not enough.any():
        return out
    mean = np.divide(s, n, out=np.zeros_like(s), where=seen)
    p = np.clip(prior, 1e-3, 1 - 1e-3)
    dev = np.where(seen, n * (mean - p) ** 2 - p * (1 - p), 0.0)
    total = n.sum(axis=0)
    tau2 = np.maximum(dev.sum(axis=0), 0.0) / np.maximum(total, 1e-12)
    pbar = np.divide((n * p).sum(axis=0), total, out=np.full(n.shape[1], 0.5), where=total > 0)
    with np.errstate(divide="ignore"):
        k = np.where(tau2 > 0, pbar * (1 - pbar) / np.maximum(tau2, 1e-300) - 1.0, _KAPPA_MAX)
    # Nodes can only be shown to agree to within their own sampling noise, p (1 - p) / n: a
    # between-node variance below that of a node of average evidence is not evidence of
    # agreement, it is too little data. So kappa stays at most that evidence (a model seen 11
    # times over 4 clusters borrows at most ~3 calls' worth, not the cap's 1000, and is explored).
    k = np.minimum(k, total / len(n))
    return np.where(enough, np.clip(k, _KAPPA_MIN, _KAPPA_MAX), out)


def hierarchical_posterior(
    n: np.ndarray,
    s: np.ndarray,
    parents: tuple[int, ...] | np.ndarray,
    prior_mean: np.ndarray,
    prior_strength: float,
    shrink: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Beta posteriors of the leaves.

    n, s: (k, m) evidence weight and summed reward per (leaf, model); parents: (N,) the
    hierarchy (empty: leaves directly under the root); prior_mean: (m,) in (0, 1);
    ``shrink`` > 0 is kappa at every level, <= 0 estimates it per level from the data.
    Returns alpha, beta: (k, m) float64.
    """
    n = np.asarray(n, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    k = n.shape[0]
    par = np.asarray(parents if len(parents) else [k] * k + [-1], dtype=np.int64)
    nn, ss = _node_evidence(n, par), _node_evidence(s, par)
    depth = levels(par, k)
    mu = np.zeros_like(nn)
    alpha = np.zeros_like(nn)
    beta = np.zeros_like(nn)
    p = np.clip(np.asarray(prior_mean, dtype=np.float64), 1e-3, 1 - 1e-3)
    root = int(np.flatnonzero(par < 0)[0])
    alpha[root] = prior_strength * p + ss[root]
    beta[root] = prior_strength * (1 - p) + nn[root] - ss[root]
    mu[root] = alpha[root] / (alpha[root] + beta[root])
    fixed = shrink if shrink > 0 else 5.0
    for d in range(1, int(depth.max()) + 1):
        nodes = np.flatnonzero(depth == d)
        prior = mu[par[nodes]]
        kappa = _kappa(nn[nodes], ss[nodes], prior, fixed) if shrink <= 0 else np.full(n.shape[1], fixed)
        alpha[nodes] = kappa * prior + ss[nodes]
        beta[nodes] = kappa * (1 - prior) + nn[nodes] - ss[nodes]
        mu[nodes] = alpha[nodes] / (alpha[nodes] + beta[nodes])
    return np.maximum(alpha[:k], 1e-6), np.maximum(beta[:k], 1e-6)
