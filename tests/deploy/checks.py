"""What every deployment file must agree with: the real command line and the real settings."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any, Mapping

from service.cli import build_parser
from service.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_PATH = "/etc/turnout/turnout.toml"  # where every deployment mounts the config


def parse_command(argv: list[str]) -> argparse.Namespace:
    """Parse ``turnout <argv>`` with the real parser; fail the test on an unknown command or flag."""
    argv = [str(a) for a in argv]
    parser = build_parser()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            raise AssertionError(f"`turnout {' '.join(argv)}` is not a valid command: {err.getvalue()}") from None
    assert callable(getattr(args, "func", None)), argv
    # argparse accepts abbreviations (--conf for --config): a deployment must spell flags out
    known: dict[str, Any] = {}
    node: argparse.ArgumentParser | None = parser
    while node is not None:  # the flags of every (sub)command on the way: turnout snapshot rollback ...
        known.update(node._option_string_actions)
        subs = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
        node = subs[0].choices[getattr(args, subs[0].dest)] if subs else None
    for token in argv:
        if token.startswith("-"):
            assert token.split("=")[0] in known, f"`turnout {' '.join(argv)}`: {token} is not a flag of {args.command}"
    return args


def turnout_env(env: Mapping[str, Any]) -> dict[str, str]:
    """The TURNOUT_ variables of an environment, as strings."""
    return {k: str(v) for k, v in env.items() if k.startswith("TURNOUT_")}


def check_env(env: Mapping[str, str]) -> None:
    """Every TURNOUT_ variable is a setting override or a credential the code reads."""
    credentials = {"TURNOUT_CLICKHOUSE_USER", "TURNOUT_CLICKHOUSE_PASSWORD"}
    source = (ROOT / "feedback" / "clickhouse_client.py").read_text()
    for key in env:
        if key in credentials:
            assert f'"{key}"' in source, f"{key} is no longer read by feedback/clickhouse_client.py"
        else:
            assert "__" in key, f"{key} is neither TURNOUT_SECTION__KEY nor a known credential"


def settings_with(config: Path | str | None, env: Mapping[str, str]) -> Settings:
    """Load ``config`` (a path, TOML text, or None for defaults) with ``env`` applied, and check
    that every TURNOUT_SECTION__KEY override landed on a real setting with that value."""
    import tempfile

    check_env(env)
    if isinstance(config, str):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "turnout.toml"
            path.write_text(config)
            settings = load_settings(path, env)
    else:
        settings = load_settings(config, env)
    for key, value in env.items():
        if "__" not in key:
            continue
        section, name = key[len("TURNOUT_") :].lower().split("__")
        got = getattr(getattr(settings, section), name)
        assert str(got) == value or (isinstance(got, float) and got == float(value)), (key, got, value)
    return settings


def stop_needs_s(settings: Settings) -> float:
    """The longest a service replica may take from SIGTERM to exit: readiness off while still
    serving, in-flight requests finishing, the producer waiting for the broker at close
    (service/serving.py, feedback/kafka.py). An orchestrator's grace period must exceed it."""
    s = settings.server
    flush = settings.events.send_timeout_s if settings.events.backend == "kafka" else 30.0  # the bus's close
    return s.shutdown_delay_s + s.shutdown_grace_s + flush


def seconds(value: str | int) -> float:
    """A compose duration ("35s", "1m30s") or a number of seconds."""
    if isinstance(value, int):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert parts and value, f"not a duration: {value!r}"
    return 60.0 * int(parts.group(1) or 0) + int(parts.group(2) or 0)

