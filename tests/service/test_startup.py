"""Start-up details an operator sees first: missing provider keys, a taken port, when "listening" is said."""

from __future__ import annotations

import logging

from service.runtime import pool_from_settings
from service.settings import load_settings


def _models_toml(tmp_path):
    path = tmp_path / "turnout.toml"
    path.write_text("\n".join(
        f'[[models]]\nname = "{name}"\nbase_url = "http://127.0.0.1:9/v1"\n' + (f'api_key_env = "{var}"\n' if var else "")
        for name, var in [("a", "TT_KEY_SET"), ("b", "TT_KEY_UNSET"), ("c", "TT_KEY_UNSET"), ("d", ""),
                          ("e", "TT_KEY_EMPTY")]
    ))  # fmt: skip
    return path


def test_a_model_whose_key_variable_is_unset_is_warned_about_once_by_name(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TT_KEY_SET", "sk-set")
    monkeypatch.setenv("TT_KEY_EMPTY", "")
    monkeypatch.delenv("TT_KEY_UNSET", raising=False)
    settings = load_settings(_models_toml(tmp_path), {})
    with caplog.at_level(logging.WARNING, logger="turnout"):
        pool_from_settings(settings)
    warned = [r.getMessage() for r in caplog.records if "api_key_env" in r.getMessage()]
    assert warned == [
        "model b: its api_key_env variable TT_KEY_UNSET is not set; requests to it go without a key",
        "model c: its api_key_env variable TT_KEY_UNSET is not set; requests to it go without a key",
        "model e: its api_key_env variable TT_KEY_EMPTY is not set; requests to it go without a key",
    ]
    assert "sk-set" not in caplog.text
