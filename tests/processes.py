"""Turnout's long-running commands as subprocesses, for the tests of how they stop.

``Turnout`` starts ``python -m service.cli <command>`` with a clean environment (no TURNOUT_
variable of the caller leaks in), collects its output on a thread, and is always killed at the
end of its ``with`` block if it is still running. ``stop()`` sends SIGTERM and returns the exit
code. ``dump_store`` reads a chDB directory from a process of its own (chDB allows one engine
path per process, and the test process already holds one).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import httpx

__all__ = ["ROOT", "Turnout", "dump_store", "wait_until"]

ROOT = Path(__file__).resolve().parents[1]


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, proc: "Turnout | None" = None) -> None:
    """Poll ``cond``; fail naming ``what`` (and the process output) after ``timeout_s``: a bound, not a speed claim."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if proc is not None and proc.exited:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}:\n{proc.output}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f":\n{proc.output}" if proc else ""))
        time.sleep(0.05)


class Turnout:
    """``turnout <args>`` in a subprocess with ``env`` (TURNOUT_ overrides) and its output collected."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, session: bool = False) -> None:
        """``session``: in a process group of its own (a test may signal the whole group)."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("TURNOUT_")}
        clean.update(env)
        self.args = args
        self.proc = subprocess.Popen([sys.executable, "-m", "service.cli", *args], env=clean, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=session)  # fmt: skip
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self._lines)

    @property
    def exited(self) -> bool:
        return self.proc.poll() is not None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait_for_line(self, needle: str, timeout_s: float = 120.0) -> str:
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self._lines if needle in line]
            return bool(found)

        wait_until(seen, timeout_s, f"`turnout {self.args[0]}` to print {needle!r}", self)
        return found[0]

    def wait_http(self, url: str, timeout_s: float = 120.0) -> None:
        def up() -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout_s, f"{url} to answer", self)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120.0) -> int:
        """Send ``sig``; the exit code once the process has stopped (its output then complete)."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=10)
        return code

    def __enter__(self) -> "Turnout":
        return self

    def __exit__(self, *_: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def dump_store(dsn: str, database: str) -> dict[str, list[list[Any]]]:
    """Every raw row (no de-duplication) of decisions and feedback, and the snapshots, from a
    process of its own: ``{"decisions": [[decision_id]], "feedback": [[event_id, kind]],
    "snapshots": [[version, parent, reason]]}``."""
    code = (
        "import json, sys\n"
        "from feedback.clickhouse import connect\n"
        "c = connect(sys.argv[1], sys.argv[2])\n"
        "q = lambda sql: [list(r) for r in c.query(sql).result_rows]\n"
        "print(json.dumps({'decisions': q('SELECT decision_id FROM decisions'),\n"
        "                  'feedback': q('SELECT event_id, kind FROM feedback'),\n"
        "                  'snapshots': q('SELECT version, parent, reason FROM snapshots ORDER BY version')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, dsn, database], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])
