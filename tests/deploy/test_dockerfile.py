"""deploy/Dockerfile: what it copies installs into a working Turnout, migrations and dashboard
included. Docker cannot run here, so the build stage is replayed: its COPY lines fill a build
context, `pip install .` installs it (into a target directory), and its later RUN lines run
as written, with `python` and `turnout` being the installed ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy.checks import CONFIG_PATH, DEPLOY, ROOT, parse_command, settings_with, turnout_env

DOCKERFILE = DEPLOY / "Dockerfile"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.strip().startswith("#") or (not buf and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1]  # Docker drops the backslash and the newline
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(DOCKERFILE.read_text()):
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    return stages


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, args in stage:
        if word == "ENV":
            for pair in args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_image_is_slim_non_root_and_runs_turnout():
    build, final = _stages()
    for stage in (build, final):
        assert stage[0][1].split()[0] == "python:3.11-slim" or stage[0][1].startswith("python:3.11-slim ")
    user = [a for w, a in final if w == "USER"][-1]
    assert user.isdigit() and int(user) != 0  # numeric: Kubernetes can check runAsNonRoot
    assert json.loads([a for w, a in final if w == "ENTRYPOINT"][-1]) == ["turnout"]
    args = parse_command(json.loads([a for w, a in final if w == "CMD"][-1]))
    assert args.command == "serve" and args.config == CONFIG_PATH
    assert f"deploy/turnout.toml {CONFIG_PATH}" in [a for w, a in final if w == "COPY"]
    settings = settings_with(DEPLOY / "turnout.toml", turnout_env(_env(final)))
    assert [a for w, a in final if w == "EXPOSE"] == [str(settings.server.port)]
    runs = " ".join(a for stage in (build, final) for w, a in stage if w == "RUN")
    assert "chdb" not in runs and "[embedded]" not in runs and "pip install ." in runs


def test_build_stage_copies_every_package_and_the_migrations():
    build, _ = _stages()
    copied = {a.split()[0] for w, a in build if w == "COPY"} | {
        src for w, a in build if w == "COPY" for src in a.split()[:-1]
    }
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, packages - copied
    assert {"pyproject.toml", pyproject["project"]["readme"], "deploy/clickhouse"} <= copied


def test_build_stage_installs_a_working_turnout(tmp_path):
    build, _ = _stages()
    context, target, shim = tmp_path / "src", tmp_path / "site", tmp_path / "shim"
    workdir = None
    steps = []
    for word, args in build:
        if word == "WORKDIR":
            workdir = args
        elif word == "COPY":
            *sources, dest = args.split()
            assert workdir == "/src" and not dest.startswith("/"), args
            for src in sources:
                to = context / dest / Path(src).name if dest.endswith("/") or len(sources) > 1 else context / dest
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, to, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    to.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / src, to)
        elif word == "RUN":
            steps.append(args)
    install = steps.index("pip install .")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "."],
                          cwd=context, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shim.mkdir()
    (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (shim / "python").chmod(0o755)
    env = dict(os.environ, PYTHONPATH=str(target), PATH=f"{target / 'bin'}:{shim}:{os.environ['PATH']}")
    for step in steps[install + 1 :]:  # what the image does after installing, as written
        ran = subprocess.run(["sh", "-ec", step], cwd=context, env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, (step, ran.stderr[-3000:])
    probe = subprocess.run(
        [sys.executable, "-P", "-c", "import sys; sys.modules['chdb'] = None; "  # the image has no chDB
         "import service.runtime, service.cli; service.cli.build_parser(); "
         "import feedback.clickhouse_schema as c, service.dashboard as d; "
         "print(c.__file__); print(c.MIGRATIONS_DIR); print(d.STATIC_DIR)"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    module, migrations, static = (Path(line) for line in probe.stdout.split())
    assert module.is_relative_to(target)  # the installed copy, not this checkout
    assert sorted(p.name for p in migrations.glob("*.sql")) == sorted(p.name for p in (DEPLOY / "clickhouse").glob("*.sql"))
    assert {p.name for p in static.iterdir()} >= {"dashboard.html", "dashboard.js", "dashboard.css"}


def test_build_context_ignores_local_state():
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()  # BuildKit reads it beside the Dockerfile
    assert {".git", ".venv", ".turnout", "**/__pycache__"} <= set(ignored)
