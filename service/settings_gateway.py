"""The request path's configuration sections: retries, breakers, rules, tenants, re-requests,
conversations, the response cache and the feedback cap.

Part of the one settings tree (``service/settings.py`` loads and validates it).
"""

from __future__ import annotations

from service.settings_check import Section

__all__ = [
    "BreakerSettings", "CacheSettings", "ConversationSettings", "FeedbackCapSettings", "LanguageRule", "PinRule",
    "RerequestSettings", "RetrySettings", "RulesSettings", "SafetyClass", "TenantSettings",
]  # fmt: skip


class RetrySettings(Section):
    """[retry]: how a failed attempt is retried (``router.max_attempts`` bounds the attempts)."""

    backoff_base_s: float = 0.05  # full jitter: sleep uniform(0, min(max, base * 2**round))
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 5.0  # a provider's longer Retry-After skips it instead of waiting


class BreakerSettings(Section):
    """[breaker]: one circuit breaker per provider (closed, open, half-open)."""

    failure_threshold: int = 5  # consecutive failures that open the circuit
    open_s: float = 15.0  # how long an open circuit rejects before it lets probes through
    half_open_probes: int = 1  # requests let through at once while half-open
    close_after: int = 2  # successful probes that close it again


class PinRule(Section):
    """[[rules.pins]]: send matching requests to ``model``. Every condition given must hold."""

    model: str
    tenant: str = ""
    header: str = ""  # a request header name ...
    header_value: str = ""  # ... and the value it must have
    requested_model: str = ""  # the ``model`` the client asked for (an alias such as "gpt-4o")
    pattern: str = ""  # a regular expression searched in the last user message
    language: str = ""  # the last user message's language, ISO 639-1 ("zh"); see [language]


class LanguageRule(Section):
    """[[rules.languages]]: prompts in one of ``languages`` (ISO 639-1 codes, "" for a language
    not detected) may only be served by ``models`` (empty: any), and never by ``forbid``."""

    languages: tuple[str, ...]
    models: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()


class SafetyClass(Section):
    """[[rules.safety]]: prompts matching ``pattern`` may only be served by ``models``."""

    name: str
    pattern: str
    models: tuple[str, ...]


class RulesSettings(Section):
    """[rules]: checks before the bandit: safety, languages, context window, cost cap, then pins."""

    pins: tuple[PinRule, ...] = ()
    safety: tuple[SafetyClass, ...] = ()
    languages: tuple[LanguageRule, ...] = ()
    max_cost_usd: float = 0.0  # per request, expected from prices; 0 = no cap
    answer_reserve_tokens: int = 256  # room left for the answer when the request sets no max_tokens
    escalation_margin: float = 0.0  # a cluster margin below this escalates ...
    escalation_min_tier: float = 0.0  # ... to models of at least this tier; 0 = off


class TenantSettings(Section):
    """[[tenants]]: who may call, with which keys (SHA-256 hex of the key, never the key)."""

    name: str
    api_key_sha256: tuple[str, ...] = ()
    policy: str = "auto"  # what model="auto" means for this tenant
    cost_weight: float | None = None  # overrides the policy's cost weight
    # a target mean cost per request for all of this tenant's requests: the learner steers the
    # tenant's cost weight (starting from cost_weight, or the policy's) to keep it; 0 = none
    budget_usd: float = 0.0
    max_cost_usd: float = 0.0  # per request; 0 = no cap beyond [rules]
    exploration_cap: float = 1.0  # the largest share of requests that may explore
    models: tuple[str, ...] = ()  # models the tenant may use; empty = all
    rate_limit_rps: float = 0.0  # per key; 0 = unlimited
    rate_limit_burst: int = 0  # bucket size; 0 = max(1, rate_limit_rps)
    store_prompts: bool = False  # opt in to keeping prompt text with decisions
    cache: bool = True  # may use the response cache when [cache] is enabled (false: opt out)


class RerequestSettings(Section):
    """[rerequest]: a close prompt from the same user soon after is negative feedback."""

    enabled: bool = True
    window_s: float = 120.0
    min_cosine: float = 0.9
    session_header: str = "x-session-id"  # identifies the asker when the body has no ``user``
    capacity: int = 100_000  # askers remembered


class ConversationSettings(Section):
    """[conversations]: turns of one chat recognised, routed in context, kept on their model (docs/conversations.md)."""

    enabled: bool = True
    sticky: bool = True  # keep a conversation on its model unless switching pays ([router] switch_margin)
    context_decay: float = 0.5  # weight of the turn before in the routing context (0: the last message alone)
    capacity: int = 100_000  # conversation keys remembered, across tenants (least recently used go first)
    ttl_s: float = 3600.0  # a conversation is forgotten this long after its last answered turn


class CacheSettings(Section):
    """[cache]: the response cache (docs/cache.md). Off by default: serving a stored answer instead
    of a fresh one is a product decision (answers can go stale, repeat askers get the same text)."""

    enabled: bool = False
    ttl_s: float = 3600.0  # an entry's life from when it was stored
    max_entries: int = 100_000  # across all tenants; the least recently used go first
    max_bytes: int = 256_000_000  # text + embedding + keys + overhead, across all tenants
    semantic: bool = True  # also serve an answer to a prompt of the same meaning (same context)
    similarity: float = 0.95  # cosine of the prompt embeddings a semantic hit needs
    min_quality: float = 0.7  # posterior mean of the answering model in the cluster, to be kept
    evict_below: float = 0.5  # explicit feedback (reward) below this evicts: a thumbs-down is 0
    per_user: bool = False  # one namespace per (tenant, user) instead of per tenant
    header: str = "x-turnout-cache"  # "on": cache this request whatever its sampling; "off": skip


class FeedbackCapSettings(Section):
    """[feedback_cap]: one user's feedback moves the posterior by at most this much per window."""

    max_per_user: int = 30
    window_s: float = 3600.0
