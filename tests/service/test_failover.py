"""Circuit breakers, full-jitter backoff and the attempt loop, on a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.failover import AllFailed, CircuitBreaker, Failover, RetryPolicy, full_jitter_s
from service.upstream import UpstreamError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_breaker_opens_after_threshold_then_half_opens_probes_and_closes():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, open_s=10.0, probes=1, close_after=2, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.failure()
    assert b.state == "closed"
    b.success()  # a success resets the run of failures
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert b.state == "open" and not b.allow() and b.opened == 1
    assert b.retry_in_s() == pytest.approx(10.0)
    clock.now += 10.0
    assert b.state == "half_open"
    assert b.allow()  # the probe
    assert not b.allow()  # only one probe at a time
    b.success()
    assert b.state == "half_open"  # needs close_after successes
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow()


def test_failed_probe_reopens_and_cancelled_probe_frees_its_slot():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, open_s=5.0, probes=1, close_after=1, clock=clock)
    b.allow()
    b.failure()
    clock.now += 5.0
    assert b.allow()
    b.failure()
    assert b.state == "open" and b.opened == 2
    clock.now += 5.0
    assert b.allow()
    b.release()  # cancelled: no outcome, the slot is free again
    assert b.allow()


def test_retry_after_holds_a_closed_breaker():
    clock = Clock()
    b = CircuitBreaker(failure_threshold=5, clock=clock)
    b.failure(hold_s=2.0)
    assert b.state == "closed" and not b.allow()
    assert b.retry_in_s() == pytest.approx(2.0)
    clock.now += 2.0
    assert b.allow()


@given(st.integers(0, 30), st.floats(0.001, 1.0), st.floats(1.0, 60.0), st.floats(0.0, 1.0))
def test_full_jitter_stays_within_its_envelope(round_, base, cap, u):
    d = full_jitter_s(round_, base, cap, u)
    assert 0.0 <= d <= min(cap, base * 2**round_) + 1e-12


def _run(failover: Failover, candidates, behaviour):
    calls: list[str] = []

    async def call(model: str) -> str:
        calls.append(model)
        outcome = behaviour(model, len(calls))
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    result = asyncio.run(failover.run(candidates, call))
    return result, calls


def _failover(clock: Clock, names=("a", "b", "c"), threshold=3, **policy) -> Failover:
    breakers = {n: CircuitBreaker(threshold, 10.0, 1, 1, clock=clock) for n in names}
    return Failover(breakers, RetryPolicy(**{"max_attempts": 3, **policy}), np.random.default_rng(0), clock.sleep)


def test_fails_over_in_candidate_order_without_sleeping():
    clock = Clock()
    fo = _failover(clock)
    (model, answer, attempts), calls = _run(fo, ["a", "b", "c"],
                                            lambda m, n: UpstreamError(f"{m}: HTTP 500", status=500) if m == "a" else m)
    assert (model, answer, calls) == ("b", "b", ["a", "b"])
    assert [(a.model, a.error, a.status) for a in attempts] == [("a", "HTTP 500", 500)]
    assert clock.slept == []


def test_open_breaker_is_skipped_without_a_call():
    clock = Clock()
    fo = _failover(clock, threshold=1)
    fo.breakers["a"].failure()
    (model, _, attempts), calls = _run(fo, ["a", "b"], lambda m, n: m)
    assert model == "b" and calls == ["b"] and attempts == []


def test_single_candidate_is_retried_with_backoff_until_max_attempts():
    clock = Clock()
    fo = _failover(clock, names=("a",), threshold=10, backoff_base_s=0.1, backoff_max_s=1.0)
    with pytest.raises(AllFailed) as info:
        _run(fo, ["a"], lambda m, n: UpstreamError("a: timeout"))
    assert len(info.value.attempts) == 3
    assert len(clock.slept) == 2 and clock.slept[0] <= 0.1 and clock.slept[1] <= 0.2


def test_retry_after_is_honoured_before_retrying_the_same_provider():
    clock = Clock()
    fo = _failover(clock, names=("a",), threshold=10, max_retry_after_s=5.0)
    (model, _, attempts), calls = _run(
        fo, ["a"], lambda m, n: UpstreamError("a: HTTP 429", status=429, retry_after_s=2.0) if n == 1 else "ok"
    )
    assert model == "a" and len(attempts) == 1 and calls == ["a", "a"]
    assert sum(clock.slept) == pytest.approx(2.0)  # waited what the provider asked


def test_a_long_retry_after_gives_up_with_503_material_instead_of_waiting():
    clock = Clock()
    fo = _failover(clock, names=("a",), threshold=10, max_retry_after_s=1.0)
    with pytest.raises(AllFailed) as info:
        _run(fo, ["a"], lambda m, n: UpstreamError("a: HTTP 429", status=429, retry_after_s=30.0))
    assert info.value.retry_after_s == pytest.approx(30.0, abs=0.1)
    assert sum(clock.slept) <= 1.0


def test_client_errors_are_not_failed_over_and_do_not_count_against_the_provider():
    clock = Clock()
    fo = _failover(clock, threshold=1)
    with pytest.raises(AllFailed) as info:
        _run(fo, ["a", "b"], lambda m, n: UpstreamError("a: HTTP 400", status=400, retryable=False))
    assert info.value.client_error is not None and info.value.attempts == []
    assert fo.breakers["a"].state == "closed"


def test_every_breaker_open_fails_fast_with_retry_after():
    clock = Clock()
    fo = _failover(clock, threshold=1, max_retry_after_s=1.0)
    for b in fo.breakers.values():
        b.failure()
    with pytest.raises(AllFailed) as info:
        _run(fo, ["a", "b", "c"], lambda m, n: m)
    assert info.value.attempts == [] and info.value.retry_after_s == pytest.approx(10.0)
