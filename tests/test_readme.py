"""The README's two commands are the ones that work: CI runs the second one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Two commands.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README has no 'Two commands' shell block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_gives_exactly_two_commands():
    assert len(_commands()) == 2


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _commands()[1] in ci


def test_readme_first_command_runs_turnout_up():
    assert "turnout up" in _commands()[0] and "pip install -e" in _commands()[0]


def test_readme_config_example_loads(tmp_path):
    from service.settings import load_settings

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Configuration.*?```toml\n(.*?)```", readme, re.S)
    assert block, "README has no TOML example under Configuration"
    path = tmp_path / "turnout.toml"
    path.write_text(block.group(1))
    settings = load_settings(path, {})
    assert [m.name for m in settings.models] == ["gpt-4o", "small"]
    assert settings.policies[0].name == "thrifty"


def test_readme_names_only_real_commands():
    from service.cli import build_parser

    parser = build_parser()
    commands = set(next(a for a in parser._actions if a.dest == "command").choices)
    named = set(re.findall(r"`turnout (\w+)", (ROOT / "README.md").read_text()))
    assert named and named <= commands, named - commands
