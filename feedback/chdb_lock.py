"""Who holds an embedded ClickHouse (chDB) directory: one process at a time may open it.

The engine keeps a ``status`` file in its directory, locked (``flock``) while a process has it
open and holding that process's PID. ``holder_pid`` asks the lock, not the file (a crashed
process leaves the file behind, never the lock), so a second process can say who holds the
store in one line (``StoreLocked``) instead of the engine's own error and traceback.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StoreLocked", "holder_pid"]


class StoreLocked(RuntimeError):
    """The chDB directory ``path`` is held by another process (``pid``; 0 when unknown)."""

    def __init__(self, path: str, pid: int) -> None:
        self.path = path
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(f"the embedded ClickHouse in {path} is in use by {who} (chDB lets one process open it)")


def holder_pid(path: str | Path) -> int | None:
    """The PID of the other process holding the chDB directory ``path`` (0: held, PID unknown),
    or None when no other process holds it (this process may hold it itself)."""
    status = Path(path) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None  # never opened, or not a chDB directory
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(status)
            return None if pid == os.getpid() else pid  # this process's own engine: not another's
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _pid_in(status: Path) -> int:
    try:
        for line in status.read_text(errors="replace").splitlines():
            if line.startswith("PID:"):
                return int(line.split(":", 1)[1].strip())
    except (OSError, ValueError):
        pass
    return 0
