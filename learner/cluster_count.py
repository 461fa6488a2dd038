"""How many clusters the prompts form, chosen from the data by the silhouette.

Every cluster splits the evidence: each model must be tried in each cluster before the policy
can tell them apart there, so a cluster that does not separate prompts costs exploration and
gains nothing. The silhouette prefers few, well separated clusters.

References: Rousseeuw, Silhouettes (1987).
"""

from __future__ import annotations

import numpy as np

from learner.clusters import kmeans

__all__ = ["choose_k", "silhouette"]


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette of a labelling under cosine distance. x: (n, d) unit norm; labels: (n,) int."""
    labels = np.asarray(labels)
    ks = np.unique(labels)
    if len(ks) < 2:
        return 0.0
    dist = 1.0 - np.asarray(x, dtype=np.float64) @ np.asarray(x, dtype=np.float64).T
    onehot = labels[:, None] == ks[None, :]  # (n, k)
    sizes = onehot.sum(axis=0)
    mean_to = dist @ onehot / np.maximum(sizes, 1)  # (n, k) mean distance to each cluster
    own = np.searchsorted(ks, labels)
    rows = np.arange(len(labels))
    own_size = sizes[own]
    a = mean_to[rows, own] * own_size / np.maximum(own_size - 1, 1)  # exclude the point itself
    other = np.where(onehot, np.inf, mean_to)
    b = other.min(axis=1)
    s = np.where(own_size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def choose_k(
    x: np.ndarray, k_max: int, rng: np.random.Generator, min_silhouette: float = 0.05, sample: int = 1500
) -> tuple[int, np.ndarray, dict[int, float]]:
    """The number of clusters in 1..k_max with the best silhouette, and its centroids.

    x: (n, d) unit norm. A subsample of ``sample`` points scores each k; one cluster is kept
    when no split reaches ``min_silhouette``. Returns (k, centroids (k, d), {k: silhouette}).
    """
    x = np.asarray(x, dtype=np.float32)
    sub = x if len(x) <= sample else x[rng.choice(len(x), sample, replace=False)]
    scores: dict[int, float] = {}
    best_k, best_c, best_s = 1, None, min_silhouette
    for k in range(2, max(2, min(k_max, len(sub) - 1)) + 1):
        cents = kmeans(sub, k, rng)
        if len(cents) < k:
            break
        s = silhouette(sub, np.argmax(sub @ cents.T, axis=1))
        scores[k] = s
        if s > best_s:
            best_k, best_c, best_s = k, cents, s
    if best_c is None:
        best_c = kmeans(x, 1, rng)
    return best_k, best_c, scores
