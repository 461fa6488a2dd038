"""Configuration: one TOML file validated into a frozen Struct tree, with TURNOUT_ overrides.

``TURNOUT_ROUTER__COST_WEIGHT=5`` overrides ``[router] cost_weight``: double underscores walk
into tables. A wrong key or value raises ``ConfigError`` naming the key and the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, Mapping

import msgspec

__all__ = [
    "ConfigError",
    "EventsSettings",
    "LearnerSettings",
    "ModelSettings",
    "PolicySettings",
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


class StorageSettings(_Config):
    data_dir: str = ".turnout"
    clickhouse_dsn: str = ""  # default: chdb:///<data_dir>/clickhouse
    clickhouse_database: str = "turnout"

    def dsn(self) -> str:
        if self.clickhouse_dsn:
            return self.clickhouse_dsn
        return "chdb://" + str((Path(self.data_dir) / "clickhouse").resolve())


class EventsSettings(_Config):
    backend: Literal["inprocess", "kafka"] = "inprocess"
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
    tier: float = 0.6  # prior answer quality in (0, 1)
    context_window: int = 128_000
    timeout_s: float = 60.0
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
    shrink_strength: float = 5.0
    cost_weight: float = 25.0  # quality points one US dollar is worth, for policy "auto"
    latency_weight: float = 0.0  # quality points one second is worth
    thompson_samples: int = 1024
    max_attempts: int = 3
    seed: int = 0


class LearnerSettings(_Config):
    interval_s: float = 30.0
    grace_s: float = 2.0
    discount: float = 1.0
    cold_start_min: int = 64
    snapshot_poll_s: float = 5.0


class SimulatedSettings(_Config):
    """The simulated model pool served when no [[models]] are configured."""

    latency_scale: float = 1.0  # 0 makes the simulated models answer instantly (benchmarks)


class Settings(_Config):
    server: ServerSettings = ServerSettings()
    storage: StorageSettings = StorageSettings()
    events: EventsSettings = EventsSettings()
    router: RouterSettings = RouterSettings()
    learner: LearnerSettings = LearnerSettings()
    models: tuple[ModelSettings, ...] = ()
    policies: tuple[PolicySettings, ...] = ()
    simulated: SimulatedSettings = SimulatedSettings()


class ConfigError(ValueError):
    """A configuration that must not start the process."""


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("TURNOUT_") or key.startswith("TURNOUT_CLICKHOUSE_"):
            continue
        path = key[len("TURNOUT_") :].lower().split("__")
        if len(path) < 2:
            continue
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


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or defaults), apply ``TURNOUT_`` overrides from ``env``, validate."""
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
        settings = msgspec.convert(_merge(raw, overrides), Settings, strict=False)
    except msgspec.ValidationError as exc:
        where = f"{source} (or a TURNOUT_ override)" if overrides else source
        raise ConfigError(f"config error in {where}: {exc}") from None
    _check(settings, source)
    return settings


def _check(s: Settings, source: str) -> None:
    names = [m.name for m in s.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"config error in {source}: duplicate model name in [[models]]")
    for i, m in enumerate(s.models):
        if not 0.0 < m.tier < 1.0:
            raise ConfigError(f"config error in {source}: models[{i}].tier must be in (0, 1)")
        if m.provider == "openai" and not m.base_url:
            raise ConfigError(f"config error in {source}: models[{i}].base_url is required")
    policy_names = {p.name for p in s.policies} | {"auto"}
    if policy_names & set(names):
        raise ConfigError(f"config error in {source}: a policy and a model share a name")
    if s.router.thompson_samples < 16:
        raise ConfigError(f"config error in {source}: router.thompson_samples must be >= 16")
    if s.router.n_clusters < 1:
        raise ConfigError(f"config error in {source}: router.n_clusters must be >= 1")
    if not 0.0 < s.learner.discount <= 1.0:
        raise ConfigError(f"config error in {source}: learner.discount must be in (0, 1]")
