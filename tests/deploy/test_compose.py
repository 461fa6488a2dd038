"""deploy/docker-compose.yml: it parses, and every command, flag, setting, port and dependency
in it exists (Docker cannot run here; this is what can be checked without it)."""

from __future__ import annotations

import re
import shlex
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.checks import CONFIG_PATH, DEPLOY, parse_command, seconds, settings_with, stop_needs_s, turnout_env


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _turnout_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if svc.get("image", "").startswith("turnout:")}


def _config_source(svc: dict) -> str:
    mounts = [v for v in svc["volumes"] if isinstance(v, str) and v.split(":")[1:2] == [CONFIG_PATH]]
    assert len(mounts) == 1, svc["volumes"]
    return mounts[0].split(":")[0]


def test_turnout_services_run_real_commands_with_real_settings(compose):
    services = _turnout_services(compose)
    assert set(services) == {"migrate", "service", "sink", "learner"}
    commands = {}
    for name, svc in services.items():
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        args = parse_command(svc["command"])
        commands[name] = args.command
        assert args.config == CONFIG_PATH
        assert (DEPLOY / _config_source(svc)).resolve() == (DEPLOY / "turnout.toml").resolve()
        env = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in svc["environment"].items()}
        settings_with(DEPLOY / "turnout.toml", turnout_env(env))
    assert commands == {"migrate": "migrate", "service": "serve", "sink": "sink", "learner": "learn"}


def test_replicas_and_ordering(compose):
    s = compose["services"]
    assert s["service"]["deploy"]["replicas"] == 2
    assert s["learner"]["deploy"]["replicas"] == 1
    partitions = int(re.search(r"--partitions (\d+)", s["kafka-topics"]["command"][0]).group(1))
    assert 1 <= s["sink"]["deploy"]["replicas"] <= partitions
    for name, svc in s.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in s, (name, dep)
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in s[dep], dep
    for name in ("service", "sink", "learner"):
        assert s[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert s[name]["depends_on"]["kafka-topics"] == {"condition": "service_completed_successfully"}
    assert s["migrate"]["restart"] == "no"
    assert set(compose["volumes"]) >= {"kafka-data", "clickhouse-data"}


def test_addresses_topics_and_credentials_agree_with_the_config(compose):
    s = compose["services"]
    settings = settings_with(DEPLOY / "turnout.toml", {})
    kafka = s["kafka"]["environment"]
    assert s["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and "KAFKA_ZOOKEEPER_CONNECT" not in kafka  # KRaft
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{settings.events.bootstrap_servers}"
    topics = shlex.split(s["kafka-topics"]["command"][0].split(";")[0].split(" in ")[1])
    assert topics == [settings.events.decisions_topic, settings.events.feedback_topic, settings.events.dlq_topic]
    dsn = urlparse(settings.storage.clickhouse_dsn)
    assert dsn.hostname == "clickhouse" and dsn.port == 8123
    assert s["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert "8123" in s["clickhouse"]["healthcheck"]["test"][1]
    user = s["clickhouse"]["environment"]["CLICKHOUSE_USER"]
    assert s["service"]["environment"]["TURNOUT_CLICKHOUSE_USER"] == user
    assert s["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == s["service"]["environment"]["TURNOUT_CLICKHOUSE_PASSWORD"]


def test_service_health_check_and_ports_hit_the_served_port(compose):
    svc = compose["services"]["service"]
    settings = settings_with(DEPLOY / "turnout.toml", turnout_env(svc["environment"]))
    assert f"http://127.0.0.1:{settings.server.port}/healthz" in " ".join(svc["healthcheck"]["test"])
    assert svc["ports"] == [f"8080-8081:{settings.server.port}"]  # one host port per replica
    assert settings.server.host == "0.0.0.0"
    assert any(v == "/var/lib/turnout" for v in svc["volumes"])  # a spill journal per replica
    assert settings.storage.data_dir == "/var/lib/turnout"


def test_a_stop_fits_in_each_stop_grace_period(compose):
    """docker compose stop / down sends SIGTERM, then SIGKILL after stop_grace_period (10 s by
    default): long enough for the service to drain and flush, the sink and learner to settle."""
    s = compose["services"]
    settings = settings_with(DEPLOY / "turnout.toml", turnout_env(s["service"]["environment"]))
    assert seconds(s["service"]["stop_grace_period"]) >= stop_needs_s(settings) + 5
    for name in ("sink", "learner"):
        assert seconds(s[name]["stop_grace_period"]) >= 30

