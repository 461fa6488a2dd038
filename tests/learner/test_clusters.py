"""Nearest-centroid assignment with margins, and spherical k-means. Seeded and exact."""

from __future__ import annotations

import numpy as np

from learner.clusters import assign, assign_many, kmeans
from learner.embedding import normalize_rows


def test_assign_nearest_and_margin():
    c = normalize_rows(np.array([[1.0, 0.0], [0.0, 1.0]]))
    e = normalize_rows(np.array([[0.9, 0.1]]))[0]
    k, margin = assign(e, c)
    assert k == 0
    assert np.isclose(margin, float(c[0] @ e - c[1] @ e))
    mid = normalize_rows(np.array([[1.0, 1.0]]))[0]
    assert abs(assign(mid, c)[1]) < 1e-6  # between two clusters: no confidence


def test_assign_is_exactly_numpys_partition_of_the_similarities():
    # the top two are found on Python floats; ties and NaN go to np.argpartition as before
    def partitioned(e, c):
        sims = c @ e
        top2 = np.argpartition(-sims, 1)[:2]
        a, b = (top2[0], top2[1]) if sims[top2[0]] >= sims[top2[1]] else (top2[1], top2[0])
        return int(a), float(sims[a] - sims[b])

    rng = np.random.default_rng(4)
    for k in (2, 3, 7, 40):
        c = normalize_rows(rng.normal(size=(k, 16)))
        tied = c.copy()
        tied[1] = tied[0]
        for cents in (c, tied, np.zeros_like(c)):
            for e in list(normalize_rows(rng.normal(size=(30, 16)))) + [cents[0], np.zeros(16, np.float32)]:
                got, want = assign(e, cents), partitioned(e, cents)
                assert got[0] == want[0] and got[1] == want[1]
    e = np.eye(16, dtype=np.float32)[0]
    for _ in range(300):  # a tie at the top, anywhere: the partition's pick, not the first index
        sims = rng.random(int(rng.integers(2, 12))).astype(np.float32)
        i, j = rng.choice(len(sims), 2, replace=False)
        sims[i] = sims[j] = sims.max() + 1
        cents = np.zeros((len(sims), 16), np.float32)
        cents[:, 0] = sims
        assert assign(e, cents) == partitioned(e, cents)


def test_assign_many_matches_assign():
    rng = np.random.default_rng(3)
    c = normalize_rows(rng.normal(size=(5, 16)))
    x = normalize_rows(rng.normal(size=(50, 16)))
    ks, ms = assign_many(x, c)
    for i in range(50):
        k, m = assign(x[i], c)
        assert ks[i] == k and np.isclose(ms[i], m, atol=1e-6)


def test_single_centroid_margin_is_similarity():
    c = normalize_rows(np.array([[1.0, 0.0]]))
    assert assign(normalize_rows(np.array([[1.0, 1.0]]))[0], c) == (0, float(np.float32(np.sqrt(0.5))))


def test_kmeans_recovers_separated_groups():
    rng = np.random.default_rng(0)
    centers = normalize_rows(rng.normal(size=(3, 32)))
    x = normalize_rows(np.repeat(centers, 40, axis=0) + 0.05 * rng.normal(size=(120, 32)))
    cents = kmeans(x, 3, np.random.default_rng(1))
    labels, margins = assign_many(x, cents)
    for g in range(3):
        assert len(set(labels[g * 40 : (g + 1) * 40])) == 1
    assert len(set(labels)) == 3 and margins.min() > 0.3


def test_kmeans_is_deterministic_given_the_generator():
    x = normalize_rows(np.random.default_rng(5).normal(size=(60, 8)))
    a = kmeans(x, 4, np.random.default_rng(9))
    b = kmeans(x, 4, np.random.default_rng(9))
    assert np.array_equal(a, b)


def test_embedder_separates_topics(embedder):
    code = embedder.embed(["Write a Python function that parses a CSV file.", "How do I reverse a linked list in Python?"])
    food = embedder.embed(["Give me a recipe for banana bread.", "How long should I bake apple pie?"])
    assert code[0] @ code[1] > code[0] @ food[0]
    assert food[0] @ food[1] > food[0] @ code[1]
    assert np.allclose(np.linalg.norm(code, axis=1), 1.0, atol=1e-5)
