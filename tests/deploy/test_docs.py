"""deploy/README.md, docs/dashboard.md, docs/operations.md and docs/cache.md name only commands, settings, values
and metrics that exist."""

from __future__ import annotations

import re
import shlex

import msgspec
import pytest
import yaml

from service.settings import Settings
from tests.deploy.checks import DEPLOY, ROOT, parse_command

DOCS = [DEPLOY / "README.md", ROOT / "docs" / "dashboard.md", ROOT / "docs" / "operations.md",
        ROOT / "docs" / "cache.md"]


def _spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _has_path(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_reference_real_things(doc):
    text = doc.read_text()
    settings = msgspec.to_builtins(Settings())
    values = yaml.safe_load((DEPLOY / "helm" / "turnout" / "values.yaml").read_text())
    code = "\n".join(p.read_text() for p in (ROOT / "service").glob("*.py"))
    topics = {v for k, v in settings["events"].items() if k.endswith("_topic")}
    checked = 0
    for span in _spans(text):
        if span.startswith("turnout ") and "<" not in span:
            parse_command(shlex.split(span)[1:])
            checked += 1
        elif span in topics:
            checked += 1
        elif re.fullmatch(r"[a-z_]+\.[a-z_]+", span) and not span.endswith((".py", ".md", ".toml", ".sql")):
            assert _has_path(settings, span) or _has_path(values, span), f"{doc.name}: `{span}` is no setting or value"
            checked += 1
        elif re.fullmatch(r"turnout_[a-z_]+", span):
            assert f'"{span}"' in code, f"{doc.name}: metric {span} is not exported"
            checked += 1
        elif re.fullmatch(r"(GET|POST) /\S+", span):
            path = span.split()[1].split("?")[0]
            assert f'"{path}"' in code or f"'{path}'" in code, f"{doc.name}: no route {path}"
            checked += 1
    # commands in code blocks too (kubectl exec ... -- turnout snapshot rollback 41 --config ...)
    commands = sorted(_subcommands(), key=len, reverse=True)
    for m in re.finditer(rf"\bturnout ((?:{'|'.join(commands)})\b[^\n#`]*)", text):
        parse_command(shlex.split(m.group(1).replace("...", "x")))
        checked += 1
    assert checked >= 5


def _subcommands() -> list[str]:
    import argparse

    from service.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)
