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
