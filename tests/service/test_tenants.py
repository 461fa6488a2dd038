"""API keys to tenants, token-bucket rate limits, feedback caps and re-request detection (fake clocks)."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import ApiError
from service.rerequest import RerequestTracker
from service.tenants import FeedbackCap, RateLimiter, Tenant, TenantDirectory, hash_key


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def directory(limiter=None) -> TenantDirectory:
    return TenantDirectory([(Tenant(name="acme", rate_limit_rps=2.0, rate_limit_burst=2), [hash_key("sk-acme")]),
                            (Tenant(name="globex"), [hash_key("sk-globex-1"), hash_key("sk-globex-2")])],
                           limiter)  # fmt: skip


def test_open_service_when_no_keys_are_configured():
    d = TenantDirectory([])
    assert not d.required
    assert d.authenticate(None).tenant.name == "default"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer sk-wrong"])
def test_missing_or_unknown_key_is_401_and_never_echoed(header):
    with pytest.raises(ApiError) as info:
        directory().authenticate(header)
    assert info.value.status == 401
    assert "sk-" not in info.value.message


def test_keys_map_to_tenants_by_digest():
    d = directory()
    acme = d.authenticate("Bearer sk-acme")
    g1, g2 = d.authenticate("bearer sk-globex-1"), d.authenticate("Bearer sk-globex-2")
    assert acme.tenant.name == "acme" and g1.tenant.name == g2.tenant.name == "globex"
    assert g1.key_id != g2.key_id and g1.key_id == hash_key("sk-globex-1")[:8]


def test_rate_limit_is_per_key_with_retry_after():
    clock = Clock()
    d = directory(RateLimiter(clock))
    acme = d.authenticate("Bearer sk-acme")
    d.throttle(acme)
    d.throttle(acme)  # the burst of 2
    with pytest.raises(ApiError) as info:
        d.throttle(acme)
    assert info.value.status == 429 and info.value.headers["retry-after"] == "1"
    d.throttle(d.authenticate("Bearer sk-globex-1"))  # other keys are not affected
    clock.now += 0.5  # 2 tokens/s: one more
    d.throttle(acme)
    with pytest.raises(ApiError):
        d.throttle(acme)


def test_token_bucket_wait_is_exact():
    clock = Clock()
    rl = RateLimiter(clock)
    assert rl.take("k", rate=4.0, burst=1) == 0.0
    assert rl.take("k", rate=4.0, burst=1) == pytest.approx(0.25)
    clock.now += 0.25
    assert rl.take("k", rate=4.0, burst=1) == 0.0
    assert rl.take("unlimited", rate=0.0, burst=0) == 0.0


def test_feedback_cap_per_user_and_window():
    clock = Clock()
    cap = FeedbackCap(max_per_user=3, window_s=60.0, clock=clock)
    assert [cap.admit("acme", "u1") for _ in range(5)] == [True, True, True, False, False]
    assert cap.admit("acme", "u2") and cap.admit("globex", "u1")  # per tenant and user
    clock.now += 60.0
    assert cap.admit("acme", "u1")


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_rerequest_detects_a_close_prompt_from_the_same_asker_within_the_window():
    clock = Clock()
    rr = RerequestTracker(window_s=60.0, min_cosine=0.9, clock=clock)
    a, close, far = _unit([1, 0, 0]), _unit([1, 0.1, 0]), _unit([0, 1, 0])
    assert rr.observe("t", "u", "d1", a) is None
    assert rr.observe("t", "u", "d2", close) == "d1"
    assert rr.observe("t", "u", "d3", far) is None  # a new question
    assert rr.observe("t", "v", "d4", far) is None  # another asker
    assert rr.observe("other", "u", "d5", far) is None  # same user name, other tenant
    clock.now += 61.0
    assert rr.observe("t", "u", "d6", far) is None  # too late
    assert rr.observe("t", "", "d7", far) is None  # anonymous: never


def test_rerequest_forgets_failed_decisions():
    rr = RerequestTracker(window_s=60.0, min_cosine=0.9, clock=Clock())
    a = _unit([1, 0, 0])
    rr.observe("t", "u", "d1", a)
    rr.forget("t", "u", "d1")
    assert rr.observe("t", "u", "d2", a) is None
