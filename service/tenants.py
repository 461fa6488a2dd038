"""Tenants: API keys (kept as SHA-256 digests) to tenants, per-key rate limits, feedback caps.

When no tenant has a key, the service is open and every request belongs to ``default``.
The admin API (``/v1/admin/...``) has keys of its own (``AdminGate``): a tenant's never opens it.
When any has, ``Authorization: Bearer <key>`` is required (401 otherwise). A key is looked up
by its digest, so the process never holds a key it was not just sent, and logs only carry
``key_id`` (the first 8 hex digits of the digest).
"""

from __future__ import annotations

import collections
import hashlib
import math
import time
from typing import Callable, Sequence

import msgspec

from service.errors import ApiError

__all__ = ["ANONYMOUS", "AdminGate", "Caller", "FeedbackCap", "RateLimiter", "Tenant", "TenantDirectory", "hash_key"]


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    name: str = "default"
    policy: str = "auto"  # what model="auto" means for this tenant
    cost_weight: float | None = None  # overrides the policy's
    budget_usd: float = 0.0  # a target mean cost per request; the learner steers this tenant's weight
    max_cost_usd: float = 0.0  # per request; 0 = no cap
    exploration_cap: float = 1.0
    models: tuple[str, ...] = ()  # empty = every model
    rate_limit_rps: float = 0.0
    rate_limit_burst: int = 0
    store_prompts: bool = False
    cache: bool = True  # may use the response cache (when [cache] is enabled)


class Caller(msgspec.Struct, frozen=True):
    """Who is asking: the tenant and which of its keys (``key_id``, safe to log)."""

    tenant: Tenant
    key_id: str = ""


ANONYMOUS = Caller(Tenant())


def hash_key(key: str) -> str:
    """The digest kept in config for an API key: lowercase SHA-256 hex."""
    return hashlib.sha256(key.encode()).hexdigest()


class RateLimiter:
    """Token buckets per key: ``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, capacity: int = 100_000) -> None:
        self._clock = clock
        self._capacity = capacity
        self._buckets: collections.OrderedDict[str, list[float]] = collections.OrderedDict()

    def take(self, key: str, rate: float, burst: int) -> float:
        """0 if a request may go now (and counts it), else the seconds until one may."""
        if rate <= 0:
            return 0.0
        size = float(burst or max(1.0, rate))
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [size, now]
            if len(self._buckets) > self._capacity:
                self._buckets.popitem(last=False)
        tokens = min(size, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / rate


class FeedbackCap:
    """At most ``max_per_user`` pieces of feedback per (tenant, user) in a fixed window, so that
    one user's flood moves a posterior by at most that much evidence per window."""

    def __init__(self, max_per_user: int, window_s: float, clock: Callable[[], float] = time.monotonic,
                 capacity: int = 100_000) -> None:  # fmt: skip
        self.max_per_user = max_per_user
        self.window_s = window_s
        self._clock = clock
        self._capacity = capacity
        self._counts: collections.OrderedDict[tuple[str, str], list[float]] = collections.OrderedDict()

    def admit(self, tenant: str, user: str) -> bool:
        now = self._clock()
        key = (tenant, user)
        entry = self._counts.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            entry = self._counts[key] = [now, 0.0]
            self._counts.move_to_end(key)
            if len(self._counts) > self._capacity:
                self._counts.popitem(last=False)
        if entry[1] >= self.max_per_user:
            return False
        entry[1] += 1
        return True


class TenantDirectory:
    """Key digests to tenants, and the rate limit of each key."""

    def __init__(self, tenants: Sequence[tuple[Tenant, Sequence[str]]], limiter: RateLimiter | None = None) -> None:
        self.tenants = {t.name: t for t, _ in tenants}
        self._by_digest = {digest: t for t, digests in tenants for digest in digests}
        self.required = bool(self._by_digest)
        self._limiter = limiter or RateLimiter()
        self._open = Caller(self.tenants.get("default", Tenant()))

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of a request from its ``Authorization`` header; ``ApiError(401)`` if unknown."""
        if not self.required:
            return self._open
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                           headers={"www-authenticate": "Bearer"})  # fmt: skip
        digest = hash_key(authorization[7:].strip())
        tenant = self._by_digest.get(digest)
        if tenant is None:
            raise ApiError(401, "invalid API key", code="invalid_api_key", headers={"www-authenticate": "Bearer"})
        return Caller(tenant, digest[:8])

    def throttle(self, caller: Caller) -> None:
        """Count one request against the caller's key; ``ApiError(429)`` with Retry-After if over."""
        t = caller.tenant
        wait = self._limiter.take(caller.key_id or t.name, t.rate_limit_rps, t.rate_limit_burst)
        if wait > 0:
            raise ApiError(429, f"rate limit of {t.rate_limit_rps:g} requests/s for this key exceeded",
                           code="rate_limit_exceeded", headers={"retry-after": str(max(1, math.ceil(wait)))})  # fmt: skip


class AdminGate:
    """Who may call ``/v1/admin/...``: the holders of an admin key (digests, as for tenants).

    No admin key configured: open while the service is open (no tenant has a key), closed once
    a tenant has one (an operator must choose an admin key, a tenant's never counts). A tenant's
    key gets 403 (it is known, and not allowed), an unknown or missing one 401.
    """

    def __init__(self, admin_digests: Sequence[str], tenant_digests: Sequence[str] = ()) -> None:
        self._admin = frozenset(admin_digests)
        self._tenants = frozenset(tenant_digests)

    @property
    def open(self) -> bool:
        return not self._admin and not self._tenants

    def check(self, authorization: str | None) -> str:
        """The ``key_id`` of the admin key sent ("" when open); raises ``ApiError`` 401 or 403."""
        if self.open:
            return ""
        if not self._admin:
            raise ApiError(403, "the admin API is closed: API keys are configured and no server.admin_key_sha256",
                           code="admin_key_required")  # fmt: skip
        if not authorization or not authorization[:7].lower() == "bearer ":
            raise ApiError(401, "missing admin key: send 'Authorization: Bearer <admin key>'", code="invalid_api_key",
                           headers={"www-authenticate": "Bearer"})  # fmt: skip
        digest = hash_key(authorization[7:].strip())
        if digest in self._admin:
            return digest[:8]
        if digest in self._tenants:
            raise ApiError(403, "a tenant's API key cannot use the admin API", code="admin_key_required")
        raise ApiError(401, "invalid admin key", code="invalid_api_key", headers={"www-authenticate": "Bearer"})
