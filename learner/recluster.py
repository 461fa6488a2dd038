"""Re-clustering when traffic moves: mini-batch k-means from the old centroids, split and merge.

The old centroids are the starting point, so clusters that still fit keep their place (and
their evidence). Then splits, mini-batch refinement of all centres, and merges:

- **split**: a group of prompts the centroids explain poorly (a new topic sitting between old
  clusters) gets a centroid of its own. Seeds are drawn with k-means++ weights, every other one
  among the worst-explained ``tail`` of the points (a topic of a few percent of the traffic is
  rarely drawn from all of them), and refined by a few Lloyd steps; the new cluster is kept
  when it takes at least ``min_size`` prompts, they gain at least ``split_gain`` cosine similarity over their
  old nearest centroid, its centre is apart from the others (``split_cos``), and, given a
  reference sample from before the drift, it is where traffic moved: its share of the recent
  prompts is at least ``growth`` times its share of the reference. Geometry alone cannot tell
  a new topic from a stable group of look-alike prompts (one template of an old topic) that the
  centroids never explained well; only the second is already in the reference.
- **merge**: centroids closer than ``merge_cos`` become one; clusters left with fewer than
  ``min_size`` prompts (a topic that went away) are dissolved into their neighbours.

Evidence moves by assignment overlap: each old cluster's evidence is shared among the new
clusters in proportion to the old cluster's recent prompts each one takes, weighted by how close
the two centres are (evidence about prompts near one centre says little about prompts near a
distant one), then discounted by ``carry``. What is not carried is replaced by the hierarchical
prior (each model's global posterior), so a new cluster starts from what models do everywhere.

References: Sculley, Web-Scale K-Means Clustering (WWW 2010); Dhillon & Modha, Concept
Decompositions Using Clustering (2001); Arthur & Vassilvitskii, k-means++ (2007).
"""

from __future__ import annotations

import msgspec
import numpy as np

__all__ = ["ReclusterParams", "Reclustering", "carry_evidence", "minibatch_kmeans", "recluster"]


class ReclusterParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    sample: int = 4096  # recent embeddings read from the store
    min_sample: int = 256  # fewer than this: do not re-cluster
    max_clusters: int = 16
    min_size: int = 32  # prompts a cluster needs in the sample to exist
    split_gain: float = 0.25  # mean similarity the prompts of a new cluster must gain
    split_cos: float = 0.5  # ... and its centre must be at most this similar to any other
    growth: float = 3.0  # ... and its share of traffic must have grown this much since the reference
    merge_cos: float = 0.9
    seeds: int = 12  # split candidates tried per round (half of them seeded in the tail)
    tail: float = 0.05  # the worst-explained share of the prompts the tail seeds are drawn from
    split_sample: int = 2048  # candidates are judged on at most this many of the prompts
    batch: int = 256
    iters: int = 60  # mini-batches per refinement
    carry: float = 0.5  # share of carried evidence kept


class Reclustering(msgspec.Struct, frozen=True):
    centroids: np.ndarray  # (k', d) float32, unit norm
    overlap: np.ndarray  # (k, k') recent prompts assigned to old cluster i and new cluster j
    splits: int
    merges: int


def _normalize(c: np.ndarray) -> np.ndarray:
    return (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _labels(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.argmax(x @ c.T, axis=1)


def _sums(x: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (k, d) and counts (k,) of x (n, d) under labels (n,)."""
    counts = np.bincount(lab, minlength=k)
    sums = np.zeros((k, x.shape[1]), dtype=np.float32)
    nz = counts > 0
    if nz.any():
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nz]
        sums[nz] = np.add.reduceat(x[np.argsort(lab, kind="stable")], starts, axis=0)
    return sums, counts.astype(np.float64)


def minibatch_kmeans(x: np.ndarray, centers: np.ndarray, rng: np.random.Generator, *, batch: int, iters: int) -> np.ndarray:
    """Spherical mini-batch k-means (Sculley's per-centre learning rate 1/count) from ``centers``.

    x: (n, d) unit norm; centers: (k, d). Returns (k, d) float32 unit norm.
    """
    c = np.array(centers, dtype=np.float32)
    counts = np.zeros(len(c))
    for _ in range(iters):
        b = x[rng.integers(len(x), size=min(batch, len(x)))]
        sums, hits = _sums(b, _labels(b, c), len(c))
        counts += hits
        moved = hits > 0
        eta = (hits[moved] / counts[moved])[:, None]
        c[moved] = (1.0 - eta) * c[moved] + eta * (sums[moved] / hits[moved][:, None])
        c = _normalize(c)
    return c


def _lloyd(x: np.ndarray, c: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        sums, _ = _sums(x, _labels(x, c), len(c))
        keep = np.linalg.norm(sums, axis=1) > 1e-9
        c = c.copy()
        c[keep] = _normalize(sums[keep])
    return c


def _try_split(x: np.ndarray, c: np.ndarray, rng: np.random.Generator, p: ReclusterParams,
               reference: np.ndarray | None) -> np.ndarray | None:  # fmt: skip
    """The best new centroid for poorly explained points, or None if none is worth a cluster."""
    best = (0.0, None)
    top1 = (x @ c.T).max(axis=1)
    w = np.clip(1.0 - top1, 0.0, None) ** 2
    if w.sum() <= 1e-12:
        return None
    # every other seed comes from the worst-explained tail: a new topic of a few percent of the
    # traffic sits there, while D^2 weights over all points favour the bulk of ordinary prompts
    tail = np.where(top1 <= np.quantile(top1, p.tail), w, 0.0)
    if tail.sum() <= 1e-12:
        tail = w
    for i in range(p.seeds):
        weights = tail if i % 2 == 0 else w
        seed = x[rng.choice(len(x), p=weights / weights.sum())]
        cand = _lloyd(x, np.vstack([c, seed[None, :]]), 5)
        members = _labels(x, cand) == len(c)
        if members.sum() < p.min_size:
            continue
        gain = float((x[members] @ cand[-1] - top1[members]).mean())
        total = gain * members.sum()
        apart = float((cand[:-1] @ cand[-1]).max()) <= p.split_cos
        if gain < p.split_gain or not apart or total <= best[0]:
            continue
        if reference is not None and len(reference):
            before = float(np.mean(_labels(reference, cand) == len(c)))
            if members.mean() < p.growth * before + 1e-9:
                continue
        best = (total, cand)
    return best[1]


def _merge(x: np.ndarray, c: np.ndarray, p: ReclusterParams) -> tuple[np.ndarray, int]:
    merges = 0
    while len(c) > 1:
        sizes = np.bincount(_labels(x, c), minlength=len(c))
        sims = c @ c.T
        np.fill_diagonal(sims, -np.inf)
        a, b = np.unravel_index(np.argmax(sims), sims.shape)
        if sims[a, b] >= p.merge_cos:
            merged = _normalize((sizes[a] * c[a] + sizes[b] * c[b] + 1e-6 * (c[a] + c[b]))[None, :])
            c = np.vstack([np.delete(c, [a, b], axis=0), merged])
        elif sizes.min() < p.min_size:
            c = np.delete(c, int(np.argmin(sizes)), axis=0)
        else:
            break
        merges += 1
    return c, merges


def recluster(x: np.ndarray, old: np.ndarray, rng: np.random.Generator, params: ReclusterParams,
              reference: np.ndarray | None = None, max_splits: int | None = None) -> Reclustering:  # fmt: skip
    """Re-cluster recent embeddings x (n, d) starting from the old centroids (k, d).

    reference: (r, d) embeddings from before the drift (None: splits need no growth);
    max_splits: new clusters at most (the learner allows one per cluster whose margins decayed,
    so a new topic gets a centre rather than one per template; None: up to ``max_clusters``).
    """
    x = np.asarray(x, dtype=np.float32)
    old = np.asarray(old, dtype=np.float32)
    # splits first, judged against what the old centroids explain: refining them first would
    # let an old centre drift halfway toward a new topic and hide it
    c, splits = old, 0
    xs = x if len(x) <= params.split_sample else x[rng.choice(len(x), params.split_sample, replace=False)]
    limit = params.max_clusters if max_splits is None else min(params.max_clusters, len(old) + max_splits)
    while len(c) < limit:
        cand = _try_split(xs, c, rng, params, reference)
        if cand is None:
            break
        c = np.vstack([c, cand[-1:]])
        splits += 1
    c = minibatch_kmeans(x, c, rng, batch=params.batch, iters=params.iters)
    c, merges = _merge(x, c, params)
    c = _lloyd(x, c, 3)
    overlap = np.zeros((len(old), len(c)))
    np.add.at(overlap, (_labels(x, old), _labels(x, c)), 1.0)
    return Reclustering(c, overlap, splits, merges)


def carry_evidence(evidence: np.ndarray, overlap: np.ndarray, old: np.ndarray, new: np.ndarray, carry: float) -> np.ndarray:
    """Evidence (k, m) of the old clusters -> (k', m) for the new ones.

    overlap: (k, k') recent prompts in old cluster i and new cluster j; old, new: centroids.
    An old cluster's evidence is shared among the new clusters by the share of its prompts
    each takes, weighted by the cosine of the two centres (clipped at 0), times ``carry``.
    """
    rows = overlap.sum(axis=1, keepdims=True)
    share = np.divide(overlap, rows, out=np.zeros_like(overlap), where=rows > 0)
    weight = share * np.clip(np.asarray(old) @ np.asarray(new).T, 0.0, 1.0) * carry
    return weight.T @ np.asarray(evidence, dtype=np.float64)
