"""Failover: circuit breakers per provider, and the attempt loop over candidate models.

A request is tried on its candidates in the order the router gave (the chosen model, then the
others by posterior utility). A provider whose breaker is open, or who asked to be left alone
with ``Retry-After``, is skipped without a call. When every candidate of a round has failed, the
loop sleeps a full-jitter backoff and goes round again, until ``max_attempts`` calls were made.

References: M. Nygard, Release It! (2007), the circuit breaker; M. Brooker, "Exponential
Backoff And Jitter", AWS Architecture Blog (2015), full jitter.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

import msgspec
import numpy as np

from service.upstream import UpstreamError

__all__ = ["AllFailed", "Attempt", "CircuitBreaker", "Failover", "RetryPolicy", "full_jitter_s"]

T = TypeVar("T")

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"


class CircuitBreaker:
    """closed --(``failure_threshold`` failures in a row)--> open --(``open_s``)--> half-open;
    half-open lets ``probes`` requests through at once: ``close_after`` successes close it, one
    failure opens it again. ``failure(hold_s)`` keeps it from admitting for ``hold_s`` seconds
    whatever its state (a provider's ``Retry-After``). ``clock`` is injectable (tests). Single
    event loop: no locks."""

    def __init__(self, failure_threshold: int = 5, open_s: float = 15.0, probes: int = 1, close_after: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.probes = probes
        self.close_after = close_after
        self.clock = clock
        self._state = CLOSED
        self._failures = 0
        self._successes = 0
        self._in_flight = 0
        self._open_until = 0.0
        self._hold_until = 0.0
        self.opened = 0  # times it opened, for metrics

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() >= self._open_until:
            self._state, self._successes, self._in_flight = HALF_OPEN, 0, 0
        return self._state

    def retry_in_s(self) -> float:
        """Seconds until it admits a request again (0 if it would now)."""
        now = self.clock()
        wait = self._hold_until - now
        if self.state == OPEN:
            wait = max(wait, self._open_until - now)
        return max(0.0, wait)

    def allow(self) -> bool:
        """May a request go to this provider now? In half-open this takes a probe slot."""
        if self._hold_until and self.clock() < self._hold_until:
            return False
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and self._in_flight < self.probes:
            self._in_flight += 1
            return True
        return False

    def success(self) -> None:
        if self._state == HALF_OPEN:
            self._in_flight = max(0, self._in_flight - 1)
            self._successes += 1
            if self._successes >= self.close_after:
                self._state, self._failures = CLOSED, 0
        else:
            self._failures = 0

    def failure(self, hold_s: float | None = None) -> None:
        now = self.clock()
        if hold_s:
            self._hold_until = max(self._hold_until, now + hold_s)
        if self._state == HALF_OPEN:
            self._trip(now)
            return
        self._failures += 1
        if self._state == CLOSED and self._failures >= self.failure_threshold:
            self._trip(now)

    def release(self) -> None:
        """An admitted request ended without an outcome (cancelled): free its probe slot."""
        if self._state == HALF_OPEN:
            self._in_flight = max(0, self._in_flight - 1)

    def _trip(self, now: float) -> None:
        self._state, self._open_until, self._in_flight = OPEN, now + self.open_s, 0
        self.opened += 1


class RetryPolicy(msgspec.Struct, frozen=True):
    max_attempts: int = 3
    backoff_base_s: float = 0.05
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 5.0


class Attempt(msgspec.Struct, frozen=True):
    """One failed call: which model, why (never with a key in it), the HTTP status if any."""

    model: str
    error: str
    status: int | None
    latency_ms: float


class AllFailed(Exception):
    """No candidate answered. ``retry_after_s`` is set when every candidate was unavailable
    (open or holding) rather than failing; ``client_error`` when a provider rejected the request
    itself (4xx that another provider would reject too)."""

    def __init__(self, attempts: Sequence[Attempt], retry_after_s: float | None = None,
                 client_error: UpstreamError | None = None) -> None:  # fmt: skip
        super().__init__("; ".join(f"{a.model}: {a.error}" for a in attempts) or "no provider available")
        self.attempts = list(attempts)
        self.retry_after_s = retry_after_s
        self.client_error = client_error


def full_jitter_s(round_: int, base_s: float, cap_s: float, u: float) -> float:
    """The sleep before retry round ``round_`` (0-based): uniform in [0, min(cap, base * 2**round)]."""
    return u * min(cap_s, base_s * (2.0**round_))


class Failover(Generic[T]):
    """Runs ``call(model)`` over candidates with breakers, backoff and Retry-After."""

    def __init__(self, breakers: dict[str, CircuitBreaker], policy: RetryPolicy, rng: np.random.Generator,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:  # fmt: skip
        self.breakers = breakers
        self.policy = policy
        self._rng = rng
        self._sleep = sleep

    async def run(self, candidates: Sequence[str], call: Callable[[str], Awaitable[T]],
                  on_failure: Callable[[Attempt], None] = lambda a: None) -> tuple[str, T, list[Attempt]]:  # fmt: skip
        """The first model that answers, its answer, and the failed attempts before it.

        Raises ``AllFailed`` when ``max_attempts`` calls failed or nobody can be called.
        """
        policy = self.policy
        attempts: list[Attempt] = []
        round_, waited_s = 0, 0.0
        while True:
            called = False
            for model in candidates:
                if len(attempts) >= policy.max_attempts:
                    raise AllFailed(attempts)
                breaker = self.breakers[model]
                if not breaker.allow():
                    continue
                called = True
                started = time.perf_counter()
                try:
                    result = await call(model)
                except UpstreamError as exc:
                    attempt = Attempt(model, _reason(model, exc), exc.status, (time.perf_counter() - started) * 1000.0)
                    if not exc.retryable:  # the request itself was refused: not the provider's fault
                        breaker.release()
                        raise AllFailed(attempts, client_error=exc) from None
                    breaker.failure(exc.retry_after_s)
                    attempts.append(attempt)
                    on_failure(attempt)
                    continue
                except BaseException:
                    breaker.release()
                    raise
                breaker.success()
                return model, result, attempts
            if len(attempts) >= policy.max_attempts:
                raise AllFailed(attempts)
            delay = full_jitter_s(round_, policy.backoff_base_s, policy.backoff_max_s, float(self._rng.random()))
            round_ += 1
            if not called:  # every candidate is open, holding or probing: wait for the first if soon
                soonest = min((self.breakers[m].retry_in_s() for m in candidates), default=float("inf"))
                delay = max(delay, soonest, policy.backoff_base_s)
                if waited_s + delay > policy.max_retry_after_s:
                    raise AllFailed(attempts, retry_after_s=max(1.0, min(soonest, 3600.0)))
            waited_s += delay
            await self._sleep(delay)


def _reason(model: str, exc: Exception) -> str:
    msg = str(exc)
    return msg[len(model) + 2 :] if msg.startswith(model + ": ") else msg
