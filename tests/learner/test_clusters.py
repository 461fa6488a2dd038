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
