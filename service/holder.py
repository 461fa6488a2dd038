"""The note a running ``turnout up`` or ``turnout serve`` leaves in its data directory.

The embedded ClickHouse (chDB) lets one process open a data directory; while the service holds
it, ``turnout snapshot``, ``turnout ope`` and ``turnout learn --once`` go through the service's
admin API instead (``service.admin_client``). They find it here: ``<data_dir>/turnout.json``
holds the service's URL and PID, written once it listens and removed when it stops. A note
whose process no longer holds the store (a crash) is ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from feedback.chdb_lock import holder_pid

__all__ = ["NOTE", "Holder", "read_holder", "read_note", "remove_holder", "write_holder"]

NOTE = "turnout.json"


class Holder(msgspec.Struct, frozen=True):
    url: str  # where the service answers, admin API included
    pid: int
    command: str  # "up" or "serve"
    started_at_ms: int
    store_pid: int = 0  # the process that holds the store's lock, when not this one (a storage process)


def _local(url: str) -> str:
    """A URL a client on this machine can use: a wildcard bind address becomes loopback."""
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")


def write_holder(data_dir: str | Path, holder: Holder) -> Path:
    path = Path(data_dir) / NOTE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.encode(msgspec.structs.replace(holder, url=_local(holder.url))))
    tmp.replace(path)  # a reader sees the whole note or none
    return path


def remove_holder(data_dir: str | Path, pid: int) -> None:
    """Remove the note if it is ``pid``'s (a newer process may have written its own)."""
    holder = read_note(Path(data_dir) / NOTE)
    if holder is not None and holder.pid == pid:
        (Path(data_dir) / NOTE).unlink(missing_ok=True)


def read_note(path: Path) -> Holder | None:
    """The note at ``path`` as written (None: none, or unreadable), whether its process runs or not."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=Holder)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def read_holder(data_dir: str | Path, chdb_path: str | Path) -> Holder | None:
    """The service holding ``chdb_path`` now, from its note in ``data_dir``; None if none does."""
    holder = read_note(Path(data_dir) / NOTE)
    if holder is None:
        return None
    pid = holder_pid(chdb_path)
    return holder if pid is not None and pid in (holder.pid, holder.store_pid or holder.pid, 0) else None
