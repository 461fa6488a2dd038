"""Snapshots: round trip, validation before publish, alignment to the pool."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.cycle import PoolPrior, align
from learner.embedding import normalize_rows
from learner.snapshot import SnapshotError, decode_snapshot, encode_snapshot, initial_snapshot, validate


def _snap(k=2, m=3, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return initial_snapshot(
        models=tuple(f"m{i}" for i in range(m)),
        centroids=normalize_rows(rng.normal(size=(k, dim))),
        prior_mean=tuple(rng.uniform(0.1, 0.9, m)),
        completion_tokens=(100.0,) * m,
        latency_s=(0.5,) * m,
        prior_strength=2.0,
        shrink_strength=5.0,
        created_at_ms=1,
    )


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 6), m=st.integers(1, 8), dim=st.integers(1, 32), seed=st.integers(0, 1000))
def test_round_trip(k, m, dim, seed):
    snap = _snap(k, m, dim, seed)
    assert decode_snapshot(encode_snapshot(snap)) == snap


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"models": ()}, "models"),
        ({"models": ("a", "a", "b")}, "duplicate"),
        ({"centroids": b"\x00" * 5}, "centroids"),
        ({"n": ((0.0,) * 3,)}, "n: expected shape"),
        ({"reward_sum": ((5.0, 0.0, 0.0), (0.0, 0.0, 0.0))}, "reward_sum"),
        ({"prior_mean": (0.5, 0.5)}, "prior_mean"),
        ({"prior_mean": (0.5, 1.0, 0.5)}, "prior_mean"),
        ({"latency_s": (0.1, float("nan"), 0.1)}, "latency_s"),
        ({"centroids": np.full((2, 4), np.inf, dtype="<f4").tobytes()}, "non-finite"),
        ({"parent": 7}, "parent"),
    ],
)
def test_validation_names_the_problem(change, needle):
    bad = msgspec.structs.replace(_snap(), **change)
    with pytest.raises(SnapshotError, match=needle):
        validate(bad)
    with pytest.raises(SnapshotError):
        decode_snapshot(encode_snapshot(bad))


def test_garbage_is_rejected():
    with pytest.raises(SnapshotError, match="undecodable"):
        decode_snapshot(b"\x93garbage")


def test_align_adds_new_models_with_their_prior_and_drops_removed():
    snap = msgspec.structs.replace(_snap(), n=((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)))
    pool = PoolPrior(models=("m2", "new", "m0"), prior_mean=(0.5, 0.77, 0.5), completion_tokens=(1.0, 2.0, 3.0),
                     latency_s=(1.0, 1.0, 1.0))
    out = align(snap, pool)
    validate(out)
    assert out.models == ("m2", "new", "m0")
    assert out.n == ((3.0, 0.0, 1.0), (6.0, 0.0, 4.0))
    assert out.prior_mean[1] == 0.77 and out.completion_tokens == (100.0, 2.0, 100.0)
