"""Clusters in embedding space: nearest-centroid assignment with a confidence margin, k-means.

Embeddings and centroids are unit-norm, so cosine similarity is a dot product.
"""

from __future__ import annotations

import numpy as np

__all__ = ["assign", "assign_many", "coherence", "kmeans"]


def assign(embedding: np.ndarray, centroids: np.ndarray) -> tuple[int, float]:
    """Nearest centroid of one embedding and its margin.

    embedding: (d,) float32 unit norm; centroids: (k, d) float32 unit norm.
    The margin is top-1 minus top-2 cosine similarity (with one centroid, its similarity):
    near 0 means the prompt sits between clusters, so the routing there is less certain.
    """
    sims = centroids @ embedding
    if sims.shape[0] == 1:
        return 0, float(sims[0])
    # the top two on Python floats (exact copies of the float32 similarities; k is small), unless
    # the top is tied or a value is NaN: then numpy's partition decides, as it always did
    values = sims.tolist()
    first = max(values)
    a = values.index(first)
    second = max(values[:a] + values[a + 1 :])
    total = first + second + sum(values)
    if second != first and total == total:
        return a, float(sims[a] - sims[values.index(second)])
    top2 = np.argpartition(-sims, 1)[:2]
    a, b = (top2[0], top2[1]) if sims[top2[0]] >= sims[top2[1]] else (top2[1], top2[0])
    return int(a), float(sims[a] - sims[b])


def assign_many(embeddings: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised ``assign``: embeddings (n, d) -> clusters (n,) int64, margins (n,) float32."""
    sims = embeddings @ centroids.T
    if centroids.shape[0] == 1:
        return np.zeros(len(embeddings), dtype=np.int64), sims[:, 0].astype(np.float32)
    order = np.argsort(-sims, axis=1)[:, :2]
    rows = np.arange(len(embeddings))
    top1 = sims[rows, order[:, 0]]
    top2 = sims[rows, order[:, 1]]
    return order[:, 0].astype(np.int64), (top1 - top2).astype(np.float32)


def coherence(x: np.ndarray, centroids: np.ndarray) -> float:
    """The spherical k-means objective: mean cosine of each point (n, d) to its nearest centroid."""
    return float((np.asarray(x, dtype=np.float32) @ np.asarray(centroids, dtype=np.float32).T).max(axis=1).mean())


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 30, starts: int = 1
) -> np.ndarray:
    """Spherical k-means with k-means++ seeding, the best (by ``coherence``) of ``starts`` runs.

    x: (n, d) unit-norm float32. Returns centroids (min(k, n_distinct), d), unit norm.
    One run can end in a poor local optimum (two topics under one centre, one topic split in
    two); a few seeded restarts, kept by the objective, make that rare.
    References: Arthur & Vassilvitskii, k-means++ (2007); Dhillon & Modha, spherical k-means (2001).
    """
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("kmeans needs at least one point")
    best, score = None, -np.inf
    for _ in range(max(1, starts)):
        c = _kmeans_once(x, k, rng, iters)
        s = coherence(x, c) if starts > 1 else 0.0
        if s > score:
            best, score = c, s
    return best


def _kmeans_once(x: np.ndarray, k: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    n = len(x)
    k = max(1, min(k, n))
    centers = [x[rng.integers(n)]]
    dist = 1.0 - x @ centers[0]
    for _ in range(1, k):
        weights = np.clip(dist, 0.0, None) ** 2
        total = weights.sum()
        if total <= 1e-12:
            break
        idx = rng.choice(n, p=weights / total)
        centers.append(x[idx])
        dist = np.minimum(dist, 1.0 - x @ x[idx])
    c = np.stack(centers).astype(np.float32)
    for _ in range(iters):
        labels = np.argmax(x @ c.T, axis=1)
        new = np.zeros_like(c)
        np.add.at(new, labels, x)
        empty = np.linalg.norm(new, axis=1) < 1e-9
        new[empty] = c[empty]
        new /= np.maximum(np.linalg.norm(new, axis=1, keepdims=True), 1e-12)
        if np.allclose(new, c, atol=1e-6):
            c = new
            break
        c = new
    return c.astype(np.float32)
