"""The gateway's parts built from settings: failover, rules, re-requests, tenants, provider adapters.

Called by the composition root (``service.runtime``); each part stays a plain object that tests
can build by hand.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from learner.cache import AnswerCache, CacheParams
from learner.language import build_detector
from service.caching import ResponseCache
from service.cascade import Cascades, JudgePort
from service.chat import ChatParts
from service.conversations import ConversationStore, Conversations, pool_cache_saving
from service.metrics import Registry
from service.failover import CircuitBreaker, Failover, RetryPolicy
from service.rerequest import RerequestTracker
from service.rules import Rules
from service.settings import ModelSettings, Settings
from service.tenants import Tenant, TenantDirectory

__all__ = ["build_tenants", "chat_parts", "conversations", "openai_upstream", "response_cache", "unset_keys"]


def openai_upstream(m: ModelSettings, env: Mapping[str, str] | None = None) -> Any:
    from service.openai_http import OpenAIUpstream

    return OpenAIUpstream(m.name, m.base_url, m.api_key_env, read_timeout_s=m.timeout_s,
                          connect_timeout_s=m.connect_timeout_s, ttft_timeout_s=m.ttft_timeout_s,
                          max_connections=m.max_concurrency, env=env)  # fmt: skip


def unset_keys(models: tuple[ModelSettings, ...], env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(model, variable) for each model whose ``api_key_env`` names a variable unset or empty in ``env``."""
    return [(m.name, m.api_key_env) for m in models if m.api_key_env and not env.get(m.api_key_env)]


def response_cache(settings: Settings, metrics: Registry) -> ResponseCache | None:
    """The response cache of ``[cache]``, or None when it is not enabled."""
    c = settings.cache
    if not c.enabled:
        return None
    params = CacheParams(ttl_s=c.ttl_s, max_entries=c.max_entries, max_bytes=c.max_bytes, similarity=c.similarity,
                         semantic=c.semantic, max_hit_ids=settings.server.decision_cache)  # fmt: skip
    cache = AnswerCache(params, on_evict=lambda reason: metrics.cache_evictions.inc(reason))
    return ResponseCache(cache, min_quality=c.min_quality, evict_below=c.evict_below, per_user=c.per_user,
                         header=c.header, metrics=metrics)  # fmt: skip


def chat_parts(settings: Settings, pool: tuple, rng: np.random.Generator,
               cache: ResponseCache | None = None, judge: JudgePort | None = None) -> ChatParts:  # fmt: skip
    """The request path's failover (``rng`` draws its backoff jitter), rules, re-request tracking,
    response cache (``response_cache``), language step and cascades (``judge``: the port a
    cascade's judge gate grades through; None: that part of the gate passes)."""
    b, r = settings.breaker, settings.retry
    breakers = {m.name: CircuitBreaker(b.failure_threshold, b.open_s, b.half_open_probes, b.close_after) for m in pool}
    policy = RetryPolicy(settings.router.max_attempts, r.backoff_base_s, r.backoff_max_s, r.max_retry_after_s)
    rr = settings.rerequest
    return ChatParts(
        failover=Failover(breakers, policy, rng),
        rules=Rules([m.name for m in pool], [m.tier for m in pool], [m.context_window for m in pool], settings.rules),
        rerequests=RerequestTracker(rr.window_s, rr.min_cosine, rr.capacity) if rr.enabled else None,
        session_header=rr.session_header.lower(),
        log_requests=settings.server.log_requests,
        cache=cache,
        language=build_detector(settings.language.detector),
        language_weight=settings.language.weight,
        conversations=conversations(settings, pool),
        cascades=Cascades(settings.cascades, [m.name for m in pool], judge) if settings.cascades else None,
    )


def conversations(settings: Settings, pool: tuple) -> Conversations | None:
    """The request path's conversations of ``[conversations]`` (None when not enabled)."""
    c = settings.conversations
    if not c.enabled:
        return None
    saving = pool_cache_saving([m.price_in_per_mtok for m in pool], [m.price_cached_in_per_mtok for m in pool])
    return Conversations(ConversationStore(c.capacity, c.ttl_s), [m.name for m in pool], saving, c.context_decay,
                         settings.router.switch_margin, c.sticky)  # fmt: skip


def build_tenants(settings: Settings, pool_models: tuple[str, ...]) -> TenantDirectory:
    from service.settings import ConfigError

    out = []
    for i, t in enumerate(settings.tenants):
        unknown = set(t.models) - set(pool_models)
        if unknown:
            raise ConfigError(f"config error: tenants[{i}].models names {sorted(unknown)}, not in the pool")
        tenant = Tenant(name=t.name, policy=t.policy, cost_weight=t.cost_weight, budget_usd=t.budget_usd,
                        max_cost_usd=t.max_cost_usd,
                        exploration_cap=t.exploration_cap, models=t.models, rate_limit_rps=t.rate_limit_rps,
                        rate_limit_burst=t.rate_limit_burst, store_prompts=t.store_prompts,
                        cache=t.cache)  # fmt: skip
        out.append((tenant, t.api_key_sha256))
    return TenantDirectory(out)
