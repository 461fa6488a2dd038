"""Settings checks beyond their types: names unique and known, values in range, across sections.

``service.settings.load_settings`` runs ``check`` on every configuration it builds; each failure
is a ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["ConfigError", "Section", "check"]


class Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The base of every settings section: frozen, keyword-only, unknown keys refused."""


class ConfigError(ValueError):
    """A configuration that must not start the process."""


def check(s: Settings, source: str) -> None:
    """What the types cannot say: names unique and known, values in range; raises ``ConfigError``."""
    names = [m.name for m in s.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"config error in {source}: duplicate model name in [[models]]")
    for i, m in enumerate(s.models):
        if not 0.0 < m.tier < 1.0:
            raise ConfigError(f"config error in {source}: models[{i}].tier must be in (0, 1)")
        cached = m.price_cached_in_per_mtok
        if cached is not None and not (math.isfinite(cached) and 0 <= cached <= m.price_in_per_mtok):
            raise ConfigError(f"config error in {source}: models[{i}].price_cached_in_per_mtok must be in "
                              f"[0, price_in_per_mtok], got {cached:g}")  # fmt: skip
        if m.provider == "openai" and not m.base_url:
            raise ConfigError(f"config error in {source}: models[{i}].base_url is required")
    if not 0 <= s.server.port <= 65535:
        raise ConfigError(f"config error in {source}: server.port must be in 0-65535 (0: a free port), got {s.server.port}")
    if not 1 <= s.processes.workers <= 256:
        raise ConfigError(f"config error in {source}: processes.workers must be in 1-256, got {s.processes.workers}")
    if not (math.isfinite(s.learner.interval_s) and s.learner.interval_s > 0):
        raise ConfigError(f"config error in {source}: learner.interval_s must be a finite number of seconds > 0, "
                          f"got {s.learner.interval_s:g}")
    weights = [("router", s.router.cost_weight, s.router.latency_weight)]
    weights += [(f"policies[{i}]", p.cost_weight, p.latency_weight) for i, p in enumerate(s.policies)]
    weights += [(f"tenants[{i}]", t.cost_weight, 0.0) for i, t in enumerate(s.tenants) if t.cost_weight is not None]
    for where, cost, latency in weights:
        for key, value in (("cost_weight", cost), ("latency_weight", latency)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"config error in {source}: {where}.{key} must be a finite number >= 0, got {value:g}")
    for key in ("shutdown_delay_s", "shutdown_grace_s"):
        value = getattr(s.server, key)
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"config error in {source}: server.{key} must be a finite number of seconds >= 0")
    for key in ("retention_days", "dead_letter_retention_days"):
        if getattr(s.storage, key) < 0:
            raise ConfigError(f"config error in {source}: storage.{key} must be >= 0 (0 keeps rows forever)")
    if names:  # a configured pool: a tenant or a pin naming a model outside it is this file's mistake
        for i, t in enumerate(s.tenants):
            unknown = sorted(set(t.models) - set(names))
            if unknown:
                raise ConfigError(f"config error in {source}: tenants[{i}].models names {unknown}, not in [[models]]")
        for i, pin in enumerate(s.rules.pins):
            if pin.model not in names:
                raise ConfigError(f"config error in {source}: rules.pins[{i}].model names '{pin.model}', not in [[models]]")
    listed = [p.name for p in s.policies]
    twice = sorted({n for n in listed if listed.count(n) > 1})
    if twice:
        raise ConfigError(f"config error in {source}: [[policies]] names {', '.join(twice)} more than once")
    policy_names = set(listed) | {"auto"}
    if policy_names & set(names):
        shared = ", ".join(sorted(policy_names & set(names)))
        raise ConfigError(f"config error in {source}: a policy and a model share a name ({shared}): the model field "
                          "of a request could not say which")
    c = s.conversations
    if not (math.isfinite(s.router.switch_margin) and s.router.switch_margin >= 0):
        raise ConfigError(f"config error in {source}: router.switch_margin must be a finite number >= 0")
    if not 0.0 <= c.context_decay < 1.0 or c.capacity < 1 or not (math.isfinite(c.ttl_s) and c.ttl_s > 0):
        raise ConfigError(f"config error in {source}: conversations.context_decay must be in [0, 1), "
                          "capacity >= 1 and ttl_s > 0")  # fmt: skip
    if s.router.thompson_samples < 16:
        raise ConfigError(f"config error in {source}: router.thompson_samples must be >= 16")
    if s.router.n_clusters < 1:
        raise ConfigError(f"config error in {source}: router.n_clusters must be >= 1")
    if not (math.isfinite(s.router.satisfice) and s.router.satisfice >= 0):
        raise ConfigError(f"config error in {source}: router.satisfice must be a finite number >= 0")
    if not (math.isfinite(s.language.weight) and s.language.weight >= 0):
        raise ConfigError(f"config error in {source}: language.weight must be a finite number >= 0 (0: off)")
    if not (math.isfinite(s.router.shrink_strength) and s.router.prior_strength > 0):
        raise ConfigError(f"config error in {source}: router.prior_strength must be > 0, shrink_strength finite")
    if s.learner.cold_start_min < 1 or s.learner.recluster_until < 0:
        raise ConfigError(f"config error in {source}: learner.cold_start_min must be >= 1, recluster_until >= 0")
    if not (s.learner.recluster_growth == 0 or s.learner.recluster_growth > 1):
        raise ConfigError(f"config error in {source}: learner.recluster_growth must be 0 (never) or > 1")
    if not 0.0 < s.learner.discount <= 1.0:
        raise ConfigError(f"config error in {source}: learner.discount must be in (0, 1]")
    for i, b in enumerate(s.learner.budgets):
        if b.target_cost_usd <= 0:
            raise ConfigError(f"config error in {source}: learner.budgets[{i}].target_cost_usd must be > 0")
        if b.policy not in policy_names:
            raise ConfigError(f"config error in {source}: learner.budgets[{i}].policy {b.policy!r} is not a policy")
    if not 0.0 < s.learner.explore_share <= 1.0:
        raise ConfigError(f"config error in {source}: learner.explore_share must be in (0, 1]")
    _check_gateway(s, source)
    _check_cascades(s, source, names, policy_names)


def _check_cascades(s: Settings, source: str, names: list[str], policies: set[str]) -> None:
    """[[cascades]]: names of their own, two models of the pool (when the pool is configured)."""
    seen: set[str] = set()
    for i, c in enumerate(s.cascades):
        if c.name in seen or c.name in names or c.name in policies:
            raise ConfigError(f"config error in {source}: cascades[{i}].name {c.name!r} is taken (a model, a policy "
                              "or another cascade)")  # fmt: skip
        seen.add(c.name)
        for key in ("cheap", "strong"):
            if names and getattr(c, key) not in names:
                raise ConfigError(f"config error in {source}: cascades[{i}].{key} names {getattr(c, key)!r}, "
                                  "not in [[models]]")  # fmt: skip


def _check_gateway(s: Settings, source: str) -> None:
    """[retry], [breaker], [rules], [[tenants]]: values and regular expressions. Model names in
    rules are checked against the pool when it is built (the simulated pool is not known here)."""

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"config error in {source}: {key} {why}")

    if s.breaker.failure_threshold < 1 or s.breaker.half_open_probes < 1 or s.breaker.close_after < 1:
        raise bad("[breaker]", "failure_threshold, half_open_probes and close_after must be >= 1")
    if s.retry.backoff_base_s < 0 or s.retry.backoff_max_s < s.retry.backoff_base_s:
        raise bad("[retry]", "needs 0 <= backoff_base_s <= backoff_max_s")
    patterns = [(f"rules.pins[{i}].pattern", p.pattern) for i, p in enumerate(s.rules.pins)]
    patterns += [(f"rules.safety[{i}].pattern", c.pattern) for i, c in enumerate(s.rules.safety)]
    for key, pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise bad(key, f"is not a valid regular expression: {exc}") from None
    for i, pin in enumerate(s.rules.pins):
        if not (pin.tenant or pin.header or pin.requested_model or pin.pattern):
            raise bad(f"rules.pins[{i}]", "needs at least one condition (tenant, header, requested_model, pattern)")
        if bool(pin.header) != bool(pin.header_value):
            raise bad(f"rules.pins[{i}]", "needs both header and header_value")
    tenant_names = [t.name for t in s.tenants]
    if len(set(tenant_names)) != len(tenant_names):
        raise bad("[[tenants]]", "has a duplicate name")
    policies = {p.name for p in s.policies} | {"auto"}
    hashes: list[str] = []
    for i, t in enumerate(s.tenants):
        if t.policy not in policies:
            raise bad(f"tenants[{i}].policy", f"'{t.policy}' is not a policy (known: {', '.join(sorted(policies))})")
        if not 0.0 <= t.exploration_cap <= 1.0:
            raise bad(f"tenants[{i}].exploration_cap", "must be in [0, 1]")
        if t.budget_usd < 0 or not math.isfinite(t.budget_usd):
            raise bad(f"tenants[{i}].budget_usd", "must be a finite amount >= 0 (0: no budget)")
        if t.rate_limit_rps < 0 or t.rate_limit_burst < 0:
            raise bad(f"tenants[{i}]", "rate limits must be >= 0")
        for h in t.api_key_sha256:
            if not re.fullmatch(r"[0-9a-f]{64}", h):
                raise bad(f"tenants[{i}].api_key_sha256", "must hold lowercase SHA-256 hex digests of keys, not keys")
        hashes += t.api_key_sha256
    if len(set(hashes)) != len(hashes):
        raise bad("[[tenants]]", "share an api key")
    for h in s.server.admin_key_sha256:
        if not re.fullmatch(r"[0-9a-f]{64}", h):
            raise bad("server.admin_key_sha256", "must hold lowercase SHA-256 hex digests of keys, not keys")
        if h in hashes:
            raise bad("server.admin_key_sha256", "holds a tenant's api key: an admin key must be its own")
    if not 0.0 < s.rerequest.min_cosine <= 1.0:
        raise bad("rerequest.min_cosine", "must be in (0, 1]")
    _check_cache(s, bad)
    from service.judge_settings import check_judge

    check_judge(s, source, bad)


def _check_cache(s: Settings, bad) -> None:
    c = s.cache
    if not (math.isfinite(c.ttl_s) and c.ttl_s > 0):
        raise bad("cache.ttl_s", "must be a finite number of seconds > 0")
    if c.max_entries < 1 or c.max_bytes < 1:
        raise bad("cache.max_entries" if c.max_entries < 1 else "cache.max_bytes", "must be >= 1")
    if not 0.0 < c.similarity <= 1.0:
        raise bad("cache.similarity", "must be in (0, 1]")
    if not 0.0 <= c.min_quality < 1.0:
        raise bad("cache.min_quality", "must be in [0, 1)")
    if not 0.0 < c.evict_below <= 1.0:
        raise bad("cache.evict_below", "must be in (0, 1]")
    if not re.fullmatch(r"[A-Za-z0-9-]+", c.header):
        raise bad("cache.header", "must be an HTTP header name")
