"""What a cluster is about: the texts nearest each centroid (exact, small vectors)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.describe import describe_clusters


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


CENTROIDS = np.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1)])


def test_each_cluster_lists_its_own_texts_first_most_similar_first():
    texts = ["soup", "stew", "bread", "flight", "hotel"]
    emb = np.stack([_unit(1, 0.1, 0), _unit(1, 0.5, 0), _unit(1, 0.05, 0), _unit(0.1, 1, 0), _unit(0.3, 1, 0)])
    got = describe_clusters(CENTROIDS, emb * 3.0, texts, k=2)  # rows need not be unit norm
    assert [d.cluster for d in got] == [0, 1, 2]
    assert [(n.text, n.assigned) for n in got[0].nearest] == [("bread", True), ("soup", True)]
    assert got[0].assigned == 3 and got[1].assigned == 2 and got[2].assigned == 0
    assert got[0].nearest[0].similarity == pytest.approx(float(_unit(1, 0.05, 0) @ CENTROIDS[0]))
    assert [n.text for n in got[1].nearest] == ["flight", "hotel"]


def test_a_cluster_no_text_falls_in_shows_the_nearest_others_marked():
    texts = ["a", "b", "c"]
    emb = np.stack([_unit(1, 0, 0.2), _unit(1, 0, 0.6), _unit(0, 1, 0.1)])
    got = describe_clusters(CENTROIDS, emb, texts, k=3)[2]
    assert got.assigned == 0
    assert [(n.text, n.assigned) for n in got.nearest] == [("b", False), ("a", False), ("c", False)]
    assert got.nearest[0].similarity > got.nearest[1].similarity > got.nearest[2].similarity


def test_a_cluster_between_two_topics_shows_both():
    cents = np.stack([_unit(1, 1, 0), _unit(0, 0, 1)])  # cluster 0 mixes topic x and topic y
    texts = ["x1", "x2", "y1", "y2", "z1"]
    emb = np.stack([_unit(1, 0.1, 0), _unit(1, 0.2, 0), _unit(0.1, 1, 0), _unit(0.2, 1, 0), _unit(0, 0.1, 1)])
    got = describe_clusters(cents, emb, texts, k=4)[0]
    assert got.assigned == 4
    assert {n.text[0] for n in got.nearest} == {"x", "y"}


def test_repeated_texts_count_once_and_empty_inputs_describe_nothing():
    emb = np.stack([_unit(1, 0, 0), _unit(1, 0, 0), _unit(0, 1, 0)])
    got = describe_clusters(CENTROIDS, emb, ["same", "same", "other"], k=5)
    assert [n.text for n in got[0].nearest] == ["same", "other"] and got[0].assigned == 1
    assert [d.nearest for d in describe_clusters(CENTROIDS, np.zeros((0, 3)), [], k=3)] == [[], [], []]
    assert [d.nearest for d in describe_clusters(CENTROIDS, emb, ["a", "b", "c"], k=0)] == [[], [], []]
