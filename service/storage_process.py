"""The storage process of ``turnout up``: the embedded store, its writer and the learner, apart.

chDB holds the interpreter's GIL while it inserts or queries (3-16 ms once a second at a few
hundred requests a second): in the serving process that is a stall of every request in flight.
So ``turnout up`` (``[processes] storage = "process"``, the default) starts this process, which
opens the store, runs the learning cycles on their schedule (and the Kafka -> ClickHouse sink
when events go through Kafka), and answers the serving processes over a Unix socket
(``feedback.link``): event batches, acknowledged once stored; the queries of the feedback API,
dashboard and admin API; a learning cycle on demand; the learner's status. The serving
processes poll the store for new snapshots, as ``turnout serve`` does.

``StorageProcess`` is the serving side's handle: ``start`` spawns the process and waits until
the store is open (an error there, such as a store held by another process, is raised here),
a watcher starts it again if it dies, and ``stop`` asks it to finish and waits.

Signals: the process ignores SIGINT (a Ctrl-C reaches the whole process group, and the serving
process stops it in order after its own last events); on SIGTERM it waits for that order for up
to ``shutdown_delay_s + shutdown_grace_s + 60`` s, and stops by itself if its parent is gone.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from feedback.chdb_lock import StoreLocked
from feedback.link import StoreLink, decode_events, dispatch
from service.settings import ConfigError, Settings

__all__ = ["StorageProcess", "storage_main"]

log = logging.getLogger("turnout.storage")


class StorageProcess:
    """The storage process, seen from the serving process that started it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = tempfile.mkdtemp(prefix="turnout-")  # a Unix socket path must be short
        self.address = str(Path(self._dir) / "store.sock")
        self.authkey = os.urandom(32)
        self._ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads
        self._proc: Any = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    def link(self) -> StoreLink:
        return StoreLink(self.address, self.authkey)

    def start(self, timeout_s: float = 600.0) -> "StorageProcess":
        """Spawn the process and wait until its store is open; raises what opening it raised."""
        ours, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(target=storage_main, name="turnout-storage", daemon=False,
                                 args=(self._settings, self.address, self.authkey, os.getpid(), theirs))  # fmt: skip
        proc.start()
        theirs.close()
        try:
            ready = ours.recv() if ours.poll(timeout_s) else ("error", "TimeoutError", f"not ready in {timeout_s:g} s")
        except EOFError:
            ready = ("error", "RuntimeError", f"exited with code {proc.join(5) or proc.exitcode} while opening the store")
        finally:
            ours.close()
        if ready[0] != "ready":
            proc.join(10)
            if proc.is_alive():
                proc.kill()
            if self._proc is None:  # never started: nothing will stop it
                shutil.rmtree(self._dir, ignore_errors=True)
            if ready[1] == "StoreLocked":
                raise StoreLocked(ready[2], ready[3])
            if ready[1] == "ConfigError":
                raise ConfigError(ready[2])
            raise RuntimeError(f"the storage process failed to start: {ready[1]}: {ready[2]}")
        self._proc = proc
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="turnout-storage-watch", daemon=True)
            self._watcher.start()
        return self

    def _watch(self) -> None:
        """Start the process again when it dies unasked (the serving side keeps and resends)."""
        while not self._stopping.wait(0.5):
            proc = self._proc
            if proc is not None and not proc.is_alive() and not self._stopping.is_set():
                log.error("the storage process (pid %d) died with code %s; starting it again", proc.pid, proc.exitcode)
                self.restarts += 1
                try:
                    self.start()
                except Exception:
                    log.exception("the storage process did not start again; retrying")
                    time.sleep(2.0)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Ask the process to finish (its learning cycle in hand, its writes) and wait for it."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.is_alive():
            link = self.link()
            try:
                link.call("stop", timeout_s=timeout_s)
            except Exception as exc:
                log.warning("the storage process did not take the stop: %s", exc)
            finally:
                link.close()
            proc.join(timeout_s)
            if proc.is_alive():
                log.error("the storage process did not stop in %g s: killed", timeout_s)
                proc.kill()
                proc.join(5)
        shutil.rmtree(self._dir, ignore_errors=True)


def storage_main(settings: Settings, address: str, authkey: bytes, parent_pid: int, ready: Any) -> None:
    """The process's body (module doc)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a poll skipped while the last still runs: not news
    # "snapshot vN live" is the serving process's line to say; a rejected snapshot is still said here.
    # What the pool's and the judge's settings warn of at start is said once, by the serving process too.
    logging.getLogger("turnout.router").setLevel(logging.WARNING)
    for said_there in ("turnout.pool", "turnout.evaluation"):
        logging.getLogger(said_there).setLevel(logging.ERROR)
    if settings.server.log_format == "json":
        from service.logs import use_json_logs

        use_json_logs()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    termed: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: termed.append(time.monotonic()))
    from service.runtime import Runtime

    try:
        rt = Runtime(settings, learner=True, embedded_sink=True, publishes=False)
    except StoreLocked as exc:
        ready.send(("error", "StoreLocked", exc.path, exc.pid))
        return
    except ConfigError as exc:  # a mistake in the configuration: the serving process says it in one line
        ready.send(("error", "ConfigError", str(exc)))
        return
    except Exception as exc:
        ready.send(("error", type(exc).__name__, str(exc)))
        raise
    Path(address).unlink(missing_ok=True)  # left by a process that died
    listener = Listener(address, family="AF_UNIX", authkey=authkey)
    handlers = _handlers(rt, stop)
    threading.Thread(target=_accept, args=(listener, handlers, stop), name="storage-accept", daemon=True).start()
    rt.start()
    ready.send(("ready", os.getpid()))
    ready.close()
    s = settings.server
    patience = s.shutdown_delay_s + s.shutdown_grace_s + 60.0
    while not stop.wait(0.5):
        if os.getppid() != parent_pid:
            log.error("the serving process %d is gone: the storage process stops", parent_pid)
            break
        if termed and time.monotonic() - termed[0] > patience:
            log.warning("SIGTERM %g s ago and no stop from the serving process: stopping", patience)
            break
    listener.close()
    rt.stop()  # the cycle in hand finishes; the Kafka sink (if any) stores what it read


class _NewestSnapshot:
    """The newest stored snapshot version, which every serving process asks for once a second.

    A chDB query costs 1-5 ms of CPU whatever it reads: at 200 requests a second, one a second
    was a fifth of this process's CPU. The version changes only when a snapshot is stored, by
    this process's learner (``store.saves`` counts those) or by a serving process through the
    link (an admin rollback or promotion: ``written`` counts every write that came that way).
    So the store is asked again only after a write; until then the last answer stands.
    """

    def __init__(self, store: Any) -> None:
        self._store = store  # the storage process's ClickHouseSnapshotStore
        self._writes = 0
        self._count = threading.Lock()
        self._query = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._version = 0

    def written(self) -> None:
        """A write through the link finished (called after it is stored)."""
        with self._count:
            self._writes += 1

    def version(self) -> int:
        with self._query:
            mark = (self._store.saves, self._writes)  # read before the query: a later write asks again
            if mark != self._seen:
                newest = self._store.list(1)
                self._version, self._seen = (newest[0].version if newest else 0), mark
            return self._version


def _handlers(rt: Any, stop: threading.Event) -> dict[str, Any]:
    from learner.snapshot import encode_snapshot

    one = threading.Lock()  # one ClickHouse call at a time from the link (the adapters have their own)
    newest = _NewestSnapshot(rt.snapshots)

    def serial(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            with one:
                return fn(*args, **kwargs)

        return run

    def writes(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                newest.written()

        return serial(run)

    def learn(reason: str) -> bytes:
        with rt.writing:
            return encode_snapshot(rt.learn_now(reason=reason))

    return {
        "events": lambda payloads: rt.rows.insert(decode_events(payloads)),
        "query": serial(lambda sql, parameters, **kw: rt.client.query(sql, parameters=parameters or {}, **kw).result_rows),
        "command": writes(lambda sql, parameters, **kw: rt.client.command(sql, parameters=parameters, **kw) and None),
        "insert": writes(lambda table, data, **kw: rt.client.insert(table, data, **kw) and None),
        "insert_arrow": writes(lambda table, arrow, **kw: rt.client.insert_arrow(table, arrow, **kw) and None),
        "snapshot_version": newest.version,
        "learn": learn,
        "status": rt.learner_status,
        "ping": lambda: os.getpid(),
        "stop": lambda: stop.set(),
    }  # fmt: skip


def _accept(listener: Listener, handlers: dict[str, Any], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            conn = listener.accept()
        except OSError:
            return  # closed
        except Exception as exc:  # a caller with the wrong key
            log.warning("storage link refused a connection: %s", exc)
            continue
        threading.Thread(target=_serve, args=(conn, handlers), name="storage-link", daemon=True).start()


def _serve(conn: Any, handlers: dict[str, Any]) -> None:
    with conn:
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            try:
                conn.send(dispatch(handlers, request))
            except (OSError, ValueError):
                return
