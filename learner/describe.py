"""What a cluster is about: the texts nearest each centroid.

A cluster is a centroid in embedding space, which says nothing to a person. Described by the
texts nearest it (the configured ``cluster_examples``, or stored prompts where prompt storage is
on), a cluster that mixes topics shows it: its nearest texts come from several topics, and few
of them fall in it. The dashboard and the admin API both call ``describe_clusters``.
"""

from __future__ import annotations

from typing import Sequence

import msgspec
import numpy as np

from learner.embedding import normalize_rows

__all__ = ["ClusterDescription", "Nearby", "describe_clusters"]


class Nearby(msgspec.Struct, frozen=True):
    """A text near a centroid."""

    text: str
    similarity: float  # cosine similarity to the centroid
    assigned: bool  # this centroid is the text's nearest (the router would put it in this cluster)


class ClusterDescription(msgspec.Struct, frozen=True):
    cluster: int
    nearest: list[Nearby]  # at most k, most similar first; those assigned here before the others
    assigned: int  # how many of the (distinct) texts fall in this cluster


def describe_clusters(centroids: np.ndarray, embeddings: np.ndarray, texts: Sequence[str],
                      k: int = 3) -> list[ClusterDescription]:  # fmt: skip
    """Per cluster, the ``k`` texts nearest its centroid, with their cosine similarity.

    centroids: (c, d) float32; embeddings: (n, d) float32, row i the embedding of ``texts[i]``
    (rows need not be unit norm). A text repeated counts once (its first row). Each cluster lists
    the texts assigned to it (nearest centroid) first, most similar first; when fewer than ``k``
    are, the nearest of the others fill the list, marked ``assigned=False``, so a cluster that no
    text falls in still shows what is closest to it.
    """
    cents = normalize_rows(np.asarray(centroids, dtype=np.float32).reshape(len(centroids), -1))
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    keep = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    out = []
    if keep.size == 0 or k <= 0:
        return [ClusterDescription(c, [], 0) for c in range(len(cents))]
    emb = normalize_rows(np.asarray(embeddings, dtype=np.float32)[keep])
    sims = emb @ cents.T  # (n, c)
    home = np.argmax(sims, axis=1)
    for c in range(len(cents)):
        mine = home == c
        # assigned first, then by similarity (descending); lexsort's last key is the primary one
        order = np.lexsort((-sims[:, c], ~mine))[:k]
        nearest = [Nearby(texts[int(keep[i])], float(sims[i, c]), bool(mine[i])) for i in order]
        out.append(ClusterDescription(c, nearest, int(mine.sum())))
    return out
