"""A user's mistake on the command line: exit code 2, one line naming it, no traceback, nothing created.

Each row runs ``turnout`` as a process, as a user would (the long-running commands install
signal handlers, which a test process must not get).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import ROOT

MISSING = "no/such/data-dir"


def _turnout(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
    env.update(TURNOUT_ROUTER__EMBEDDER="hashing", TURNOUT_SERVER__LOG_FORMAT="text")
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture(scope="module")
def latin1_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "latin1.toml"
    path.write_bytes('[router]\n# caf\u00e9 au lait\n'.encode("latin-1"))  # a byte no UTF-8 text holds
    return path


@pytest.fixture(scope="module")
def unknown_judge(tmp_path_factory):
    """A mistake only the process that builds the pool can see (the storage process, under ``up``)."""
    path = tmp_path_factory.mktemp("config") / "judge.toml"
    path.write_text('[judge]\nenabled = true\nmodel = "nope"\n')
    return path


@pytest.fixture(scope="module")
def outcome_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("outcomes") / "o.jsonl"
    path.write_text('{"id": "1", "prompt": "hi", "scores": {"a": 1.0}, "costs": {"a": 0.1}}\n')
    return path


# (args, what the one line must say); PORT, FILE and DIR are filled in per test
BAD = [
    (["learn", "--health-port", "PORT", "--data-dir", "DIR/learn"], "cannot serve health probes on 127.0.0.1:PORT: address already in use"),
    (["sink", "--health-port", "PORT", "--data-dir", "DIR/sink"], "cannot serve health probes on 127.0.0.1:PORT: address already in use"),
    (["snapshot", "list", "--data-dir", MISSING], f"data directory {MISSING} does not exist"),
    (["snapshot", "show", "1", "--data-dir", MISSING], f"data directory {MISSING} does not exist"),
    (["snapshot", "rollback", "1", "--data-dir", MISSING], f"data directory {MISSING} does not exist"),
    (["ope", "--data-dir", MISSING], f"data directory {MISSING} does not exist"),
    (["learn", "--once", "--data-dir", MISSING], f"data directory {MISSING} does not exist"),
    (["snapshot", "list", "--data-dir", "FILE"], "is a file, not a directory"),
    (["snapshot", "list", "--limit", "0", "--data-dir", MISSING], "--limit must be >= 1"),
    (["ope", "--data-dir", MISSING, "--cost-weight", "-1"], "cost_weight must be a finite number >= 0"),
    (["ope", "--data-dir", MISSING, "--clip", "0"], "clip must be > 0"),
    (["ope", "FILE", "--level", "1.5"], "--level must be in (0, 1)"),
    (["ope", "--data-dir", MISSING, "--since", "yesterday"], "--since: 'yesterday' is neither an ISO date-time"),
    (["replay", "FILE", "--passes", "0"], "--passes must be > 0"),
    (["replay", "DIR/missing.jsonl"], "missing.jsonl"),
    (["simulate", "--scenario", "stationary", "--steps", "0"], "--steps"),
    (["simulate", "--scenario", "stationary", "--seeds", "0"], "--seeds"),
    (["up", "--port", "70000", "--data-dir", "DIR/up"], "--port: server.port must be in 0-65535"),
    (["serve", "--port", "-1", "--data-dir", "DIR/serve"], "--port: server.port must be in 0-65535"),
    (["up", "--learn-interval-s", "-5", "--data-dir", "DIR/up"], "--learn-interval-s: learner.interval_s must be"),
    (["up", "--learn-interval-s", "0", "--data-dir", "DIR/up"], "--learn-interval-s: learner.interval_s must be"),
    (["up", "--port", "70000", "--workers", "0", "--data-dir", "DIR/up"], "in --port: server.port must be"),
    (["up", "--workers", "0", "--data-dir", "DIR/up"], "in --workers: processes.workers must be in 1-256"),
    (["learn", "--interval-s", "-1", "--data-dir", "DIR/learn"], "in --interval-s: learner.interval_s must be"),
    (["learn", "--interval-s", "0", "--data-dir", "DIR/learn"], "in --interval-s: learner.interval_s must be"),
    (["up", "--config", "LATIN1", "--data-dir", "DIR/up"], "LATIN1 is not UTF-8 text (byte 14)"),
    (["up", "--config", "DIR", "--data-dir", "DIR/up"], "config file DIR is a directory"),
    (["simulate", "--repeat", "0.5"], "--repeat only applies with --cache"),
    (["simulate", "--scenario", "cascade", "--judge-rate", "0.5"], "--judge-rate only applies with --scenario detection"),
    (["simulate", "--judge-noise", "0.3"], "--judge-noise only applies with --scenario cascade or detection"),
    (["simulate", "--scenario", "detection", "--cache-discount", "0.5"], "--cache-discount only applies with --scenario"),
    (["replay", "FILE", "--threshold", "0.6"], "--threshold only applies with --cascade"),
    (["replay", "FILE", "--judge-noise", "0.2", "--judge-bias", "0.1"], "--judge-noise, --judge-bias only apply with a cascade"),
    (["ope", "DIR/missing.jsonl"], "turnout ope: DIR/missing.jsonl: no such file or directory"),
    (["replay", "DIR"], "turnout replay: DIR: is a directory"),
]  # fmt: skip


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_a_bad_flag_is_one_line_and_exit_2(args, needle, tmp_path, taken_port, outcome_file, latin1_config):
    fill = lambda s: s.replace("PORT", str(taken_port)).replace("FILE", str(outcome_file)).replace(  # noqa: E731
        "LATIN1", str(latin1_config)).replace("DIR", str(tmp_path))
    proc = _turnout([fill(a) for a in args], tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("turnout") and fill(needle) in lines[0], proc.stderr
    assert not (tmp_path / "no").exists() and not (tmp_path / ".turnout").exists()  # nothing created
    assert not (ROOT / MISSING).exists()


@pytest.mark.parametrize("command", [["up", "--workers", "1"], ["up", "--workers", "2"], ["serve"]])
def test_a_config_mistake_found_while_starting_ends_in_one_line_naming_the_file(command, tmp_path, unknown_judge):
    """The pool is built by the storage process under ``up`` (and each worker): its refusal of the
    configuration reaches the user as the last line, naming the file, exit 2, and no traceback."""
    proc = _turnout([*command, "--config", str(unknown_judge), "--port", "0", "--data-dir", str(tmp_path / "d")],
                    tmp_path)  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"turnout: config error in {unknown_judge}: judge.model 'nope' is "
                                                    "not in the pool (sim-frontier, sim-coder, sim-chat, sim-mini)")
