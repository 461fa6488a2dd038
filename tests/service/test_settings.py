"""Config: one TOML file, TURNOUT_ overrides, and errors that name the key and the file."""

from __future__ import annotations

import os
import subprocess
import sys

import msgspec
import pytest

from service.settings import ConfigError, load_settings


def test_defaults_load():
    s = load_settings(None, {})
    assert s.server.port == 8080 and s.events.backend == "inprocess" and s.models == ()


def test_env_overrides_are_converted():
    s = load_settings(None, {"TURNOUT_ROUTER__COST_WEIGHT": "7.5", "TURNOUT_SERVER__PORT": "9000"})
    assert s.router.cost_weight == 7.5 and s.server.port == 9000


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[router]\ncost_wieght = 3\n", "unknown field `cost_wieght` - at `$.router`"),
        ('[server]\nport = "eighty"\n', "at `$.server.port`"),
        ("[events]\nbackend = \"carrier-pigeon\"\n", "at `$.events.backend`"),
        ("[[models]]\nname = \"a\"\nprovider = \"openai\"\n", "models[0].base_url"),
        ("[[models]]\nname = \"a\"\nbase_url = \"http://x\"\ntier = 1.5\n", "models[0].tier"),
        ("[router\n", "not valid TOML"),
        ("[router]\ncost_weight = -5.0\n", "router.cost_weight must be a finite number >= 0"),
        ("[router]\ncost_weight = nan\n", "router.cost_weight must be a finite number >= 0"),
        ('[[policies]]\nname = "thrifty"\ncost_weight = -200.0\n', "policies[0].cost_weight must be"),
        ("[server]\nport = 70000\n", "server.port must be in 0-65535"),
        ("[[models]]\nname = \"a\"\nbase_url = \"http://x\"\nprice_in_per_mtok = 1.0\nprice_cached_in_per_mtok = 2.0\n",
         "models[0].price_cached_in_per_mtok must be in [0, price_in_per_mtok], got 2"),
        ("[router]\nswitch_margin = -0.1\n", "router.switch_margin must be a finite number >= 0"),
        ("[conversations]\ncontext_decay = 1.0\n", "conversations.context_decay must be in [0, 1)"),
        ("[learner]\ninterval_s = 0.0\n", "learner.interval_s must be"),
        ('[[models]]\nname = "a"\nbase_url = "http://x"\n[[tenants]]\nname = "t"\nmodels = ["gpt-4o"]\n',
         "tenants[0].models names ['gpt-4o'], not in [[models]]"),
        ('[[policies]]\nname = "x"\ncost_weight = 1.0\n[[policies]]\nname = "x"\ncost_weight = 2.0\n',
         "[[policies]] names x more than once"),
        ('[[models]]\nname = "a"\nbase_url = "http://x"\n[[policies]]\nname = "a"\ncost_weight = 1.0\n',
         "a policy and a model share a name (a)"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, needle):
    path = tmp_path / "turnout.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path, {})
    assert needle in str(err.value) and str(path) in str(err.value)


def test_cli_reports_bad_config_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[learner]\ninterval_s = \"soon\"\n")
    proc = subprocess.run([sys.executable, "-m", "service.cli", "migrate", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "$.learner.interval_s" in proc.stderr


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"TURNOUT_ROUTER__COST_WEIGHT": "abc"}, "TURNOUT_ROUTER__COST_WEIGHT=abc (a TURNOUT_ override of <defaults>): "
         "Expected `float`, got `str` - at `$.router.cost_weight`"),
        ({"TURNOUT_ROUTER__COST_WIEGHT": "3"}, "TURNOUT_ROUTER__COST_WIEGHT=3 (a TURNOUT_ override of <defaults>): "
         "Object contains unknown field `cost_wieght`"),
        ({"TURNOUT_ROUTER__N_CLUSTERS": "0"}, "TURNOUT_ROUTER__N_CLUSTERS=0 (a TURNOUT_ override of <defaults>): "
         "router.n_clusters must be >= 1"),
        ({"TURNOUT_NOSUCH__KEY": "1"}, "TURNOUT_NOSUCH__KEY=1"),
    ],
)
def test_a_bad_override_is_named_with_its_value(env, needle):
    good = {"TURNOUT_SERVER__PORT": "9000", "TURNOUT_LEARNER__INTERVAL_S": "5"}  # innocent bystanders
    with pytest.raises(ConfigError) as err:
        load_settings(None, {**good, **env})
    assert needle in str(err.value)
    assert "TURNOUT_SERVER__PORT" not in str(err.value)


def test_a_bad_file_is_blamed_on_the_file_even_with_overrides(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text('[server]\nport = "eighty"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path, {"TURNOUT_ROUTER__COST_WEIGHT": "3"})
    assert str(err.value) == f"config error in {path}: Expected `int`, got `str` - at `$.server.port`"


def test_cli_names_the_bad_variable_and_exits_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    proc = subprocess.run([sys.executable, "-m", "service.cli", "migrate"], capture_output=True, text=True, timeout=60,
                          env={**env, "TURNOUT_ROUTER__COST_WEIGHT": "abc"}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("turnout: config error in TURNOUT_ROUTER__COST_WEIGHT=abc "), lines


def test_the_language_table_and_its_bounds():
    from service.settings import ConfigError, load_settings

    assert load_settings(None, {}).language.detector == "cld2" and load_settings(None, {}).language.weight == 0.0
    assert load_settings(None, {"TURNOUT_LANGUAGE__WEIGHT": "0.5"}).language.weight == 0.5
    with pytest.raises(ConfigError, match="language.weight must be a finite number >= 0"):
        load_settings(None, {"TURNOUT_LANGUAGE__WEIGHT": "-1"})
    with pytest.raises(ConfigError, match="TURNOUT_LANGUAGE__DETECTOR=fasttext"):
        load_settings(None, {"TURNOUT_LANGUAGE__DETECTOR": "fasttext"})


def test_a_policy_named_like_a_simulated_model_is_refused_when_the_pool_is_built():
    from service.pool import pool_from_settings

    settings = msgspec.convert({"policies": [{"name": "sim-chat", "cost_weight": 1.0}]}, type(load_settings(None, {})))
    with pytest.raises(ConfigError, match=r"a policy and a model of the simulated pool share a name \(sim-chat\)"):
        pool_from_settings(settings)
