"""Configuration: one TOML file validated into a frozen Struct tree, with TURNOUT_ overrides.

The sections live beside this module: the learner's in ``service/settings_learner.py``, the
request path's (retries, breakers, rules, tenants, re-requests, conversations, cache) in
``service/settings_gateway.py``; the root ``Settings``, the server, storage, events, models and
router sections, and the loader are here. Every section is importable from here.

``TURNOUT_ROUTER__COST_WEIGHT=5`` overrides ``[router] cost_weight``: double underscores walk
into tables. A wrong key or value raises ``ConfigError`` naming the key and the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import msgspec

from learner.cascade import Cascade
from service.judge_settings import JudgeSettings, ShadowSettings
from service.settings_check import ConfigError, Section, check
from service.settings_gateway import (
    BreakerSettings, CacheSettings, ConversationSettings, FeedbackCapSettings, LanguageRule, PinRule,
    RerequestSettings, RetrySettings, RulesSettings, SafetyClass, TenantSettings,
)  # fmt: skip
from service.settings_learner import (
    BudgetSettings, DriftSettings, FeedbackWeights, LearnerSettings, ReclusterSettings,
)  # fmt: skip

__all__ = [
    "BreakerSettings",
    "BudgetSettings",
    "CacheSettings",
    "ConfigError",
    "ConversationSettings",
    "DriftSettings",
    "EventsSettings",
    "FeedbackCapSettings",
    "FeedbackWeights",
    "LanguageRule",
    "LanguageSettings",
    "LearnerSettings",
    "ModelSettings",
    "PinRule",
    "PolicySettings",
    "ProbeSettings",
    "ReclusterSettings",
    "RerequestSettings",
    "RetrySettings",
    "RouterSettings",
    "RulesSettings",
    "SafetyClass",
    "ServerSettings",
    "Settings",
    "SimulatedSettings",
    "StorageSettings",
    "TenantSettings",
    "load_settings",
]


class ServerSettings(Section):
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


class StorageSettings(Section):
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


class EventsSettings(Section):
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


class ModelSettings(Section):
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


class PolicySettings(Section):
    name: str
    cost_weight: float
    latency_weight: float = 0.0


class RouterSettings(Section):
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


class LanguageSettings(Section):
    """[language]: the prompt's language, detected offline on the request path (learner/language.py).

    Recorded with each decision, matched by rules (``[[rules.languages]]``, a pin's ``language``),
    and, with ``weight`` > 0, part of the routing context: the embedding moved toward its
    language's direction, so the learner's clusters keep to one language (docs/learner.md).
    """

    detector: Literal["cld2", "none"] = "cld2"  # "none": every language is "" (unknown)
    weight: float = 0.0  # how far the routing context moves toward the language; 0: not at all


class SimulatedSettings(Section):
    """The simulated model pool served when no [[models]] are configured."""

    latency_scale: float = 1.0  # 0 makes the simulated models answer instantly (benchmarks)


class ProbeSettings(Section):
    """Health probes of ``turnout sink`` and ``turnout learn`` (the service has its own /healthz).

    A port of None serves no probe; 0 takes a free port (printed at start).
    """

    host: str = "127.0.0.1"  # "0.0.0.0" in a container, so the orchestrator can reach it
    sink_port: int | None = None
    learner_port: int | None = None


class ProcessSettings(Section):
    """``[processes]``: how ``turnout up`` and ``serve`` spread over processes (docs/processes.md)."""

    # serving processes on the one port (SO_REUSEPORT), each on the same snapshot
    workers: int = 1
    # turnout up on the embedded store: "process" keeps chDB (writer, learner, reads) in a
    # process of its own, fed in batches; "inline" opens it in the serving process
    storage: Literal["process", "inline"] = "process"


class Settings(Section):
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
    judge: JudgeSettings = JudgeSettings()  # issue 13: service/judge.py
    shadow: ShadowSettings = ShadowSettings()  # issue 13: service/shadow.py
    probes: ProbeSettings = ProbeSettings()
    cascades: tuple[Cascade, ...] = ()  # [[cascades]]: cheap first, strong if the gate rejects (learner/cascade.py)
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
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {source} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {source} is a directory, not a TOML file") from None
        except PermissionError:
            raise ConfigError(f"config file {source} cannot be read (permission denied)") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {source} is not UTF-8 text (byte {exc.start}): "
                              "TOML files are UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {source} is not valid TOML: {exc}") from None
    overrides = _env_overrides(env or {})
    try:
        return _build(raw, overrides, source)
    except (msgspec.ValidationError, ConfigError) as exc:
        raise _blame(exc, raw, overrides, source) from None
