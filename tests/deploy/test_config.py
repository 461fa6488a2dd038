"""deploy/turnout.toml: the example configuration loads, and so does its commented provider block."""

from __future__ import annotations

import re

from service.settings import load_settings
from tests.deploy.checks import DEPLOY, settings_with

EXAMPLE = DEPLOY / "turnout.toml"


def test_example_config_loads_for_the_compose_network():
    s = load_settings(EXAMPLE, {})
    assert s.events.backend == "kafka" and s.events.bootstrap_servers == "kafka:9092"
    assert s.storage.clickhouse_dsn == "http://clickhouse:8123" and s.storage.dsn() == "http://clickhouse:8123"
    assert s.server.host == "0.0.0.0" and s.server.port == 8080
    assert s.models == ()  # the simulated pool: the stack runs with no provider keys


def test_commented_provider_block_is_valid_config():
    text = EXAMPLE.read_text()
    block = text[text.index("# [[models]]") :]
    uncommented = re.sub(r"(?m)^# ?", "", block)
    s = settings_with(text + "\n" + uncommented, {})
    assert [m.name for m in s.models] == ["gpt-4o", "gpt-4o-mini", "local-llama"]
    assert all(m.api_key_env or m.base_url.startswith("http://vllm") for m in s.models)


def test_environment_overrides_apply_to_the_example():
    s = settings_with(EXAMPLE, {"TURNOUT_ROUTER__COST_WEIGHT": "40", "TURNOUT_EVENTS__BOOTSTRAP_SERVERS": "k:9093"})
    assert s.router.cost_weight == 40.0 and s.events.bootstrap_servers == "k:9093"
