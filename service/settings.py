"""Configuration: one TOML file validated into a frozen Struct tree, with TURNOUT_ overrides.

``TURNOUT_ROUTER__COST_WEIGHT=5`` overrides ``[router] cost_weight``: double underscores walk
into tables. A wrong key or value raises ``ConfigError`` naming the key and the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import msgspec

from service.settings_check import ConfigError, check

__all__ = [
    "BudgetSettings",
    "CacheSettings",
    "ConfigError",
    "ConversationSettings",
    "DriftSettings",
    "EventsSettings",
    "FeedbackWeights",
    "LanguageSettings",
    "LearnerSettings",
    "ModelSettings",
    "PolicySettings",
    "ReclusterSettings",
    "RouterSettings",
    "ServerSettings",
    "Settings",
    "StorageSettings",
    "load_settings",
]


class _Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Config):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1_000_000
    decision_cache: int = 200_000
    store_prompts: bool = False
    log_format: Literal["text", "json"] = "json"  # json: one object a line, with the decision id
    log_requests: bool = False  # a log line per answered request (off: the request path stays lean)
    # a stop (SIGTERM or SIGINT): GET /readyz answers 503 while requests are still served for
    # shutdown_delay_s (a load balancer takes the replica out), then the listener closes and the
    # requests in flight get shutdown_grace_s to finish; then the events are flushed (see
    # docs/pipeline.md, "What a stop guarantees")
    shutdown_delay_s: float = 0.0
    shutdown_grace_s: float = 20.0
    # who may use /v1/admin/... (snapshots, learner, OPE, config): SHA-256 hex digests of admin
    # keys, never the keys. None configured: the admin API is open while no tenant has a key, and
    # closed (403) once one has; a tenant's key never opens it.
    admin_key_sha256: tuple[str, ...] = ()


class StorageSettings(_Config):
    data_dir: str = ".turnout"
    clickhouse_dsn: str = ""  # default: chdb:///<data_dir>/clickhouse
    clickhouse_database: str = "turnout"
    # how long raw rows are kept (a ClickHouse TTL on their time; 0 = forever). The learner reads
    # only what arrived since its last cycle, so any retention of a day or more is safe for it.
    retention_days: int = 0  # decisions and feedback
    dead_letter_retention_days: int = 30

    def retention(self) -> dict[str, int]:
        """Days to keep per table, for ``feedback.clickhouse.apply_retention``."""
        d = self.retention_days
        return {"decisions": d, "feedback": d, "dead_letters": self.dead_letter_retention_days}

    def dsn(self) -> str:
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return "chdb://" + str((Path(self.data_dir) / "clickhouse").resolve())


class EventsSettings(_Config):
    backend: Literal["inprocess", "kafka"] = "inprocess"
    # in-process bus: how often it writes a batch (each write is a ClickHouse part to merge later)
    inprocess_flush_s: float = 1.0
    bootstrap_servers: str = "127.0.0.1:9092"
    decisions_topic: str = "turnout.decisions"
    feedback_topic: str = "turnout.feedback"
    dlq_topic: str = "turnout.dlq"
    buffer_events: int = 100_000
    spill_dir: str = ""  # default: <data_dir>/spill
    spill_max_bytes: int = 1_000_000_000
    sink_group: str = "turnout-sink"
    sink_batch_events: int = 5000
    sink_batch_s: float = 0.5
    # producer (service) and sink details; see docs/pipeline.md
    compression: Literal["lz4", "gzip", "none"] = "lz4"
    send_batch_events: int = 2000  # events per producer batch (one wait for acks each)
    send_timeout_s: float = 10.0  # how long a batch may wait for acks before it is journaled
    retry_max_s: float = 5.0  # longest backoff between attempts (producer replay, sink store)
    sink_session_timeout_ms: int = 10_000
    sink_max_poll_interval_ms: int = 300_000  # a batch held longer than half of this is re-read

    def spill_path(self, data_dir: str) -> str:
        return self.spill_dir or str(Path(data_dir) / "spill")


class ModelSettings(_Config):
    name: str
    provider: Literal["openai", "simulated"] = "openai"
    base_url: str = ""
    api_key_env: str = ""
    upstream_model: str = ""
    price_in_per_mtok: float = msgspec.field(default=0.0)
    price_out_per_mtok: float = 0.0
    price_cached_in_per_mtok: float | None = None  # a cached prompt prefix (prompt caching); None: no discount
    tier: float = 0.6  # prior answer quality in (0, 1)
    context_window: int = 128_000
    timeout_s: float = 60.0  # read timeout: the longest silence between two bytes of an answer
    connect_timeout_s: float = 5.0  # to open a connection, or to get one from a full pool
    ttft_timeout_s: float = 30.0  # streaming: the longest wait for the first token (then fail over)
    max_concurrency: int = 256  # open requests to this provider at once
    expected_completion_tokens: float = 300.0
    expected_latency_s: float = 1.0


class PolicySettings(_Config):
    name: str
    cost_weight: float
    latency_weight: float = 0.0


class RouterSettings(_Config):
    embedder: Literal["wordllama", "hashing"] = "wordllama"
    embedding_dim: int = 256
    n_clusters: int = 4
    cluster_examples: tuple[str, ...] = ()
    prior_strength: float = 2.0
    shrink_strength: float = 0.0  # how hard a cluster leans on the pool's posterior; <= 0: from the data
    satisfice: float = 0.06  # quality difference not worth exploring for (0: plain Thompson sampling)
    cost_weight: float = 25.0  # quality points one US dollar is worth, for policy "auto"
    latency_weight: float = 0.0  # quality points one second is worth
    thompson_samples: int = 1024
    max_attempts: int = 3
    seed: int = 0
    switch_margin: float = 0.02  # utility a conversation's switch of model must gain beyond its lost cache discount


class LanguageSettings(_Config):
    """[language]: the prompt's language, detected offline on the request path (learner/language.py).

    Recorded with each decision, matched by rules (``[[rules.languages]]``, a pin's ``language``),
    and, with ``weight`` > 0, part of the routing context: the embedding moved toward its
    language's direction, so the learner's clusters keep to one language (docs/learner.md).
    """

    detector: Literal["cld2", "none"] = "cld2"  # "none": every language is "" (unknown)
    weight: float = 0.0  # how far the routing context moves toward the language; 0: not at all


class FeedbackWeights(_Config):
    """[learner.feedback_weights]: evidence one piece of feedback of each kind is worth."""

    explicit: float = 1.0
    re_request: float = 0.5
    upstream_error: float = 1.0
    judge: float = 0.5  # a grade from a judge model


class DriftSettings(_Config):
    """[learner.drift]: Page-Hinkley on cluster margins (re-cluster) and model rewards (fade)."""

    enabled: bool = True
    block: int = 100  # decisions per margin block
    window: int = 64  # blocks kept
    baseline: int = 8  # oldest blocks forming the margin baseline
    tolerance: float = 0.1  # relative margin decay never called drift
    threshold: float = 0.5  # cumulative relative decay that is drift
    reward_block: float = 50.0  # feedback (evidence weight) per reward block
    reward_tolerance: float = 0.05
    reward_threshold: float = 0.6
    reward_reset: float = 0.1  # old evidence kept where a model's reward fell


class ReclusterSettings(_Config):
    """[learner.recluster]: what a re-clustering reads and when it splits or merges clusters."""

    sample: int = 4096  # recent embeddings read
    max_clusters: int = 16
    min_size: int = 32
    split_gain: float = 0.25
    split_cos: float = 0.5
    growth: float = 3.0
    merge_cos: float = 0.9
    carry: float = 0.5  # share of the old clusters' evidence carried to the new ones


class BudgetSettings(_Config):
    """[[learner.budgets]]: a target mean cost per request; the learner steers the cost weight."""

    policy: str = "auto"
    target_cost_usd: float = 0.0


class LearnerSettings(_Config):
    interval_s: float = 30.0
    grace_s: float = 2.0
    discount: float = 1.0
    cold_start_min: int = 64  # decisions before the traffic is first clustered
    recluster_growth: float = 2.0  # cluster the traffic again each time it grows by this factor (0: never)
    recluster_until: int = 4096  # ... until this many decisions were routed
    snapshot_poll_s: float = 5.0
    half_life_s: float = 7 * 24 * 3600.0  # evidence halves every week of traffic; 0 = never
    half_life_feedback: float = 0.0  # ... and every this much new feedback in its cluster; 0 = never
    feedback_weights: FeedbackWeights = FeedbackWeights()
    drift: DriftSettings = DriftSettings()
    recluster: ReclusterSettings = ReclusterSettings()
    budgets: tuple[BudgetSettings, ...] = ()
    budget_step: float = 0.5  # change of log cost weight per unit of relative overspend, per cycle
    explore_min_evidence: float = 20.0  # a model with less evidence than this ...
    explore_share: float = 0.1  # ... may win at most this share of the posterior samples


class SimulatedSettings(_Config):
    """The simulated model pool served when no [[models]] are configured."""

    latency_scale: float = 1.0  # 0 makes the simulated models answer instantly (benchmarks)


class RetrySettings(_Config):
    """[retry]: how a failed attempt is retried (``router.max_attempts`` bounds the attempts)."""

    backoff_base_s: float = 0.05  # full jitter: sleep uniform(0, min(max, base * 2**round))
    backoff_max_s: float = 2.0
    max_retry_after_s: float = 5.0  # a provider's longer Retry-After skips it instead of waiting


class BreakerSettings(_Config):
    """[breaker]: one circuit breaker per provider (closed, open, half-open)."""

    failure_threshold: int = 5  # consecutive failures that open the circuit
    open_s: float = 15.0  # how long an open circuit rejects before it lets probes through
    half_open_probes: int = 1  # requests let through at once while half-open
    close_after: int = 2  # successful probes that close it again


class PinRule(_Config):
    """[[rules.pins]]: send matching requests to ``model``. Every condition given must hold."""

    model: str
    tenant: str = ""
    header: str = ""  # a request header name ...
    header_value: str = ""  # ... and the value it must have
    requested_model: str = ""  # the ``model`` the client asked for (an alias such as "gpt-4o")
    pattern: str = ""  # a regular expression searched in the last user message
    language: str = ""  # the last user message's language, ISO 639-1 ("zh"); see [language]


class LanguageRule(_Config):
    """[[rules.languages]]: prompts in one of ``languages`` (ISO 639-1 codes, "" for a language
    not detected) may only be served by ``models`` (empty: any), and never by ``forbid``."""

    languages: tuple[str, ...]
    models: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()


class SafetyClass(_Config):
    """[[rules.safety]]: prompts matching ``pattern`` may only be served by ``models``."""

    name: str
    pattern: str
    models: tuple[str, ...]


class RulesSettings(_Config):
    """[rules]: checks before the bandit: safety, languages, context window, cost cap, then pins."""

    pins: tuple[PinRule, ...] = ()
    safety: tuple[SafetyClass, ...] = ()
    languages: tuple[LanguageRule, ...] = ()
    max_cost_usd: float = 0.0  # per request, expected from prices; 0 = no cap
    answer_reserve_tokens: int = 256  # room left for the answer when the request sets no max_tokens
    escalation_margin: float = 0.0  # a cluster margin below this escalates ...
    escalation_min_tier: float = 0.0  # ... to models of at least this tier; 0 = off


class TenantSettings(_Config):
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


class RerequestSettings(_Config):
    """[rerequest]: a close prompt from the same user soon after is negative feedback."""

    enabled: bool = True
    window_s: float = 120.0
    min_cosine: float = 0.9
    session_header: str = "x-session-id"  # identifies the asker when the body has no ``user``
    capacity: int = 100_000  # askers remembered


class ConversationSettings(_Config):
    """[conversations]: turns of one chat recognised, routed in context, kept on their model (docs/conversations.md)."""

    enabled: bool = True
    sticky: bool = True  # keep a conversation on its model unless switching pays ([router] switch_margin)
    context_decay: float = 0.5  # weight of the turn before in the routing context (0: the last message alone)
    capacity: int = 100_000  # conversation keys remembered, across tenants (least recently used go first)
    ttl_s: float = 3600.0  # a conversation is forgotten this long after its last answered turn


class CacheSettings(_Config):
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


class FeedbackCapSettings(_Config):
    """[feedback_cap]: one user's feedback moves the posterior by at most this much per window."""

    max_per_user: int = 30
    window_s: float = 3600.0


class ProbeSettings(_Config):
    """Health probes of ``turnout sink`` and ``turnout learn`` (the service has its own /healthz).

    A port of None serves no probe; 0 takes a free port (printed at start).
    """

    host: str = "127.0.0.1"  # "0.0.0.0" in a container, so the orchestrator can reach it
    sink_port: int | None = None
    learner_port: int | None = None


class ProcessSettings(_Config):
    """``[processes]``: how ``turnout up`` and ``serve`` spread over processes (docs/processes.md)."""

    # serving processes on the one port (SO_REUSEPORT), each on the same snapshot
    workers: int = 1
    # turnout up on the embedded store: "process" keeps chDB (writer, learner, reads) in a
    # process of its own, fed in batches; "inline" opens it in the serving process
    storage: Literal["process", "inline"] = "process"


class Settings(_Config):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    events: EventsSettings = EventsSettings()
    router: RouterSettings = RouterSettings()
    language: LanguageSettings = LanguageSettings()
    learner: LearnerSettings = LearnerSettings()
    models: tuple[ModelSettings, ...] = ()
    policies: tuple[PolicySettings, ...] = ()
    simulated: SimulatedSettings = SimulatedSettings()
    retry: RetrySettings = RetrySettings()
    breaker: BreakerSettings = BreakerSettings()
    rules: RulesSettings = RulesSettings()
    tenants: tuple[TenantSettings, ...] = ()
    rerequest: RerequestSettings = RerequestSettings()
    conversations: ConversationSettings = ConversationSettings()
    feedback_cap: FeedbackCapSettings = FeedbackCapSettings()
    cache: CacheSettings = CacheSettings()
    probes: ProbeSettings = ProbeSettings()
    processes: ProcessSettings = ProcessSettings()


Override = tuple[str, tuple[str, ...], str]  # (variable, path of the key, value)


def _env_overrides(env: Mapping[str, str]) -> list[Override]:
    out = []
    for key, value in env.items():
        if not key.startswith("TURNOUT_") or key.startswith("TURNOUT_CLICKHOUSE_"):
            continue
        path = tuple(key[len("TURNOUT_") :].lower().split("__"))
        if len(path) >= 2:
            out.append((key, path, value))
    return sorted(out)


def _nest(overrides: list[Override]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _, path, value in overrides:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _build(raw: dict[str, Any], overrides: list[Override], source: str) -> Settings:
    """Validate and check; raises ``msgspec.ValidationError`` or ``ConfigError``."""
    settings = msgspec.convert(_merge(raw, _nest(overrides)), Settings, strict=False)
    check(settings, source)
    return settings


def _reason(exc: Exception, source: str) -> str:
    return str(exc).removeprefix(f"config error in {source}: ")


def _blame(exc: Exception, raw: dict[str, Any], overrides: list[Override], source: str) -> ConfigError:
    """The error, naming what caused it: the file, or the TURNOUT_ variable that breaks it."""
    if overrides:
        try:
            _build(raw, [], source)
        except (msgspec.ValidationError, ConfigError):
            pass  # the file (or the defaults) is wrong on its own: say so below
        else:
            for override in overrides:
                try:
                    _build(raw, [override], source)
                except (msgspec.ValidationError, ConfigError) as alone:
                    var, _, value = override
                    shown = value if len(value) <= 80 else value[:77] + "..."
                    return ConfigError(f"config error in {var}={shown} (a TURNOUT_ override of {source}): "
                                       f"{_reason(alone, source)}")  # fmt: skip
            names = ", ".join(var for var, _, _ in overrides)
            return ConfigError(f"config error in {source} with the overrides {names}: {_reason(exc, source)}")
    return ConfigError(f"config error in {source}: {_reason(exc, source)}")


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or defaults), apply ``TURNOUT_`` overrides from ``env``, validate.

    A failure names the file, or the variable when an override is what breaks it
    (``TURNOUT_ROUTER__COST_WEIGHT=abc``).
    """
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
    overrides = _env_overrides(env or {})
    try:
        return _build(raw, overrides, source)
    except (msgspec.ValidationError, ConfigError) as exc:
        raise _blame(exc, raw, overrides, source) from None
