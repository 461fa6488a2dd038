"""The command line's way to a running service: its admin API, when it holds the store.

``reach(...)`` decides where a command's work happens: through the admin API of the process
that holds the embedded store (found from its note in the data directory, ``service.holder``,
or named with ``--url``), or here, opening the store (None). A read command on a data
directory that does not exist stops with one line instead of creating an empty store. Every
failure is an ``AdminError`` whose message is the one line the command prints (exit code 2).
The admin key, when the service has one, is read from ``TURNOUT_ADMIN_KEY``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import httpx
import msgspec

from learner.admin import LearnedNow, Rollback, SnapshotDetail, SnapshotList
from service.holder import NOTE, read_holder, read_note

__all__ = ["ADMIN_KEY_ENV", "AdminClient", "AdminError", "held_by", "reach"]

ADMIN_KEY_ENV = "TURNOUT_ADMIN_KEY"


class AdminError(Exception):
    """A command cannot do its work here or there: the message says why, in one line."""


class AdminClient:
    """The admin API at ``url`` (``http://host:port``), with ``key`` if the service needs one."""

    def __init__(self, url: str, key: str = "", timeout_s: float = 600.0) -> None:
        url = url.rstrip("/")
        self.url = url if "://" in url else "http://" + url  # --url localhost:8080 means the service there
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            r = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach the service's admin API at {self.url}: {exc}") from None
        if r.status_code == 404 and "/snapshots/" in path:
            raise LookupError(_message(r))
        if r.status_code == 422:
            raise ValueError(_message(r))
        if r.status_code in (401, 403):
            raise AdminError(f"the admin API at {self.url} refused: {_message(r)} (the admin key is read from "
                             f"{ADMIN_KEY_ENV})")  # fmt: skip
        if r.status_code != 200:
            raise AdminError(f"the admin API at {self.url} answered {r.status_code}: {_message(r)}")
        return r.json()

    def snapshots(self, limit: int) -> SnapshotList:
        return msgspec.convert(self._call("GET", f"/v1/admin/snapshots?limit={limit}"), SnapshotList)

    def snapshot(self, version: int) -> SnapshotDetail:
        return msgspec.convert(self._call("GET", f"/v1/admin/snapshots/{version}"), SnapshotDetail)

    def rollback(self, version: int) -> Rollback:
        return msgspec.convert(self._call("POST", f"/v1/admin/snapshots/{version}/rollback"), Rollback)

    def learn(self) -> LearnedNow:
        return msgspec.convert(self._call("POST", "/v1/admin/learner/cycle"), LearnedNow)

    def judge(self, window_s: int) -> dict[str, Any]:
        """``GET /v1/admin/judge`` as builtins (issue 13; docs/judge.md)."""
        return self._judge_call(f"/v1/admin/judge?window_s={window_s}")

    def shadow(self, window_s: int) -> dict[str, Any]:
        return self._judge_call(f"/v1/admin/shadow?window_s={window_s}")

    def close(self) -> None:
        self._http.close()

    def _judge_call(self, path: str) -> dict[str, Any]:
        try:
            return self._call("GET", path)
        except AdminError as exc:
            if "answered 404" in str(exc):
                raise AdminError(f"the service at {self.url} runs no judge and no shadow ([judge], [shadow])") from None
            raise

    def ope(self, candidate: msgspec.Struct) -> dict[str, Any]:
        """The report as builtins (``simulations.ope.OpeReport`` fields)."""
        return self._call("POST", "/v1/admin/ope", msgspec.to_builtins(candidate))


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def reach(url: str | None, dsn: str, data_dir: str, env: Mapping[str, str], *, must_exist: bool) -> AdminClient | None:
    """Where a command runs: the admin API at ``url``, or of the service holding the embedded
    store ``dsn`` (its note in ``data_dir``), or None: here. ``must_exist``: a read command, which
    must not create a store where there is none."""
    key = env.get(ADMIN_KEY_ENV, "")
    if url:
        return AdminClient(url, key)
    if not dsn.startswith("chdb://"):
        return None  # a ClickHouse server: any process may open it
    path = Path(dsn[len("chdb://") :])
    holder = read_holder(data_dir, path)
    if holder is not None:
        return AdminClient(holder.url, key)
    if must_exist and not path.is_dir():
        d = Path(data_dir)
        where = (f"data directory {data_dir} is a file, not a directory" if d.exists() and not d.is_dir() else
                 f"data directory {data_dir} does not exist" if not d.is_dir() else
                 f"no Turnout store in {data_dir} ({path} does not exist)")  # fmt: skip
        raise AdminError(f"{where}: check --data-dir (nothing was created)")
    return None


def held_by(data_dir: str, pid: int) -> str:
    """Who holds a store and how to reach it, for the one line a command prints when it cannot open it."""
    who = f"process {pid}" if pid else "another process"
    note = read_note(Path(data_dir) / NOTE)
    if note is not None and pid in (note.pid, note.store_pid or note.pid):
        who = f"process {note.pid}"  # the turnout command (its storage process holds the lock for it)
        return (f"{who} (turnout {note.command} at {note.url}): stop it to run this command; turnout snapshot, "
                f"ope and learn --once reach it through its admin API by themselves (or --url {note.url})")  # fmt: skip
    return (f"{who}, which serves no admin API (a turnout sink or learn?): stop it first, or run "
            "turnout up or serve on this data directory and reach it through its admin API")  # fmt: skip
