"""Start-up details an operator sees first: missing provider keys, a taken port, when "listening" is said."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

from service.runtime import pool_from_settings
from service.settings import load_settings


def _models_toml(tmp_path):
    path = tmp_path / "turnout.toml"
    models = [("a", "TT_KEY_SET"), ("b", "TT_KEY_UNSET"), ("c", "TT_KEY_UNSET"), ("d", ""), ("e", "TT_KEY_EMPTY")]
    path.write_text("\n".join(
        f'[[models]]\nname = "{name}"\nbase_url = "http://127.0.0.1:9/v1"\n' + (f'api_key_env = "{v}"\n' if v else "")
        for name, v in models
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


def _turnout(*args: str, tmp_path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    env.update(TURNOUT_ROUTER__EMBEDDER="hashing", TURNOUT_SERVER__LOG_FORMAT="text")
    return subprocess.run([sys.executable, "-m", "service.cli", *args, "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)  # fmt: skip


def test_a_taken_port_is_one_line_and_exit_2_and_listening_is_never_said(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in ("up", "serve"):
            proc = _turnout(command, "--port", str(port), tmp_path=tmp_path)
            assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
            assert "listening" not in proc.stdout + proc.stderr
            assert "Traceback" not in proc.stderr
            errors = [line for line in proc.stderr.splitlines() if line.startswith("turnout:")]
            assert errors == [f"turnout: cannot listen on 127.0.0.1:{port}: address already in use"], proc.stderr


def test_listening_is_said_once_the_socket_accepts(tmp_path):
    from tests.processes import Turnout

    with Turnout(["serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
                 {"TURNOUT_ROUTER__EMBEDDER": "hashing", "TURNOUT_SERVER__LOG_FORMAT": "text"}, tmp_path) as serve:
        line = serve.wait_for_line("listening on")
        port = int(line.split("http://127.0.0.1:")[1].split()[0])  # port 0: the port it really took
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # said only once it accepts
            pass
        assert serve.stop() == 0
