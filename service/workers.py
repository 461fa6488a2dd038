"""``--workers N``: N serving processes on one port, every core serving.

One Python process serves on one core. With ``--workers N`` (``[processes] workers``) the command's
process becomes a supervisor: it holds the port (bound with SO_REUSEPORT, never listening), starts
the storage process (``turnout up`` on the embedded store) and N workers, each a whole serving
process that binds the same port with SO_REUSEPORT, so the kernel spreads new connections over
them. What must agree across workers does, without talking:

- **Decisions.** Each worker reads the same snapshot from the store (polled every second) and
  compiles it the same way: the posterior draws are seeded by the snapshot version
  (``service.routing``), so for a request and a snapshot every worker logs the same propensities.
- **Events.** Each worker sends its own to the one store (``feedback.link.LinkSink``, its own spill
  journal), or publishes them to Kafka (its own spill journal).
- **Metrics.** Each worker shares its counters (``service.metrics_exchange``); ``/metrics`` on any
  worker answers the sum.
- **Feedback** may reach another worker than the one that made the decision, before that decision
  is stored: a decision not found is looked for again for a couple of flush intervals before 404.

A stop (SIGTERM or SIGINT to the supervisor, or to the whole group) reaches every worker, which
drains as a single process does (``service.serving``); the supervisor then stops the storage
process, after the workers' last events. A worker that dies unasked is started again.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any

import msgspec

from service.settings import Settings

__all__ = ["WorkerGroup", "event_line", "linked_runtime", "run_group", "sink_stats", "worker_main"]

log = logging.getLogger("turnout.workers")


def linked_runtime(settings: Settings, link: Any, worker: int) -> Any:
    """A serving process's runtime on the storage process at the end of ``link``: its queries,
    events (through its own spill journal ``link-<worker>``) and learning cycles go there."""
    from feedback.link import LinkSink, RemoteClickHouse, journal_dir
    from feedback.spill import SpillJournal
    from service.runtime import Runtime

    ev, sink = settings.events, None
    if ev.backend != "kafka":
        journal = SpillJournal(journal_dir(ev.spill_path(settings.storage.data_dir), worker), ev.spill_max_bytes)
        sink = LinkSink(link, journal, flush_interval_s=ev.inprocess_flush_s, retry_max_s=ev.retry_max_s)
    elif worker:  # each Kafka producer its own journal
        spill = str(os.path.join(ev.spill_path(settings.storage.data_dir), f"worker-{worker}"))
        settings = msgspec.structs.replace(settings, events=msgspec.structs.replace(ev, spill_dir=spill))
    return Runtime(settings, learner=False, client=RemoteClickHouse(link), link=link, sink=sink, worker=worker)


def sink_stats(rt: Any) -> dict[str, int]:
    stats = getattr(rt.sink, "stats", None)
    return dict(stats()) if callable(stats) else {"backlog": getattr(rt.sink, "backlog", 0)}


def event_line(s: dict[str, int]) -> str:
    """The events part of that line, from ``service.workers.sink_stats`` (of one or more processes)."""
    if "stored" in s:  # through the storage process
        return (f"{s['journaled']} not stored (journaled for the next start); {s['stored']} stored through the "
                "storage process")  # fmt: skip
    if "sent" in s:  # Kafka: sent, and journaled for the next run (lost: refused by a full journal)
        return f"{s['sent']} published to Kafka, {s['spill_events']} journaled in the spill journal, {s['lost']} lost"
    return f"{s.get('backlog', 0)} not stored"


def worker_main(settings: Settings, index: int, port: int, link: tuple[str, bytes] | None, metrics_dir: str,
                ready: Any) -> None:  # fmt: skip
    """One serving process of the group (module doc)."""
    from feedback.stop import StopSignal
    from service.metrics_exchange import MetricsExchange
    from service.runtime import Runtime
    from service.serving import bind, serve

    stop = StopSignal().install()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apscheduler", "httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if settings.server.log_format == "json":
        from service.logs import use_json_logs

        use_json_logs()
    sys.setswitchinterval(0.0005)  # as cmd_up: background threads yield the GIL often
    sock = bind(settings.server.host, port, reuse_port=True)
    if link is not None:
        from feedback.link import StoreLink

        rt = linked_runtime(settings, StoreLink(*link), index)
    else:
        ev = settings.events
        spill = os.path.join(ev.spill_path(settings.storage.data_dir), f"worker-{index}")
        rt = Runtime(msgspec.structs.replace(settings, events=msgspec.structs.replace(ev, spill_dir=spill)),
                     learner=False, worker=index)  # fmt: skip
    exchange = MetricsExchange(metrics_dir, index, rt.metrics).start()
    try:
        rt.start()
        if not stop.stopping:
            serve(rt.app, sock, stop=stop.event, draining=rt.draining, delay_s=settings.server.shutdown_delay_s,
                  grace_s=settings.server.shutdown_grace_s, on_listening=lambda: ready.send(("ready", os.getpid())),
                  max_body_bytes=settings.server.max_body_bytes, settle_heap=True)  # fmt: skip
    finally:
        sock.close()
        rt.stop()
        exchange.stop()
    ready.send(("stopped", sink_stats(rt)))
    ready.close()


class WorkerGroup:
    """N workers on ``port`` (module doc), seen from the supervisor."""

    def __init__(self, settings: Settings, n: int, port: int, link: tuple[str, bytes] | None) -> None:
        self._settings, self.n, self.port, self._link = settings, n, port, link
        self._ctx = multiprocessing.get_context("spawn")
        self._metrics_dir = tempfile.mkdtemp(prefix="turnout-metrics-")
        self._procs: list[Any] = [None] * n
        self._pipes: list[Any] = [None] * n
        self.stats: list[dict[str, int]] = [{} for _ in range(n)]
        self.restarts = 0

    def _spawn(self, i: int) -> None:
        ours, theirs = self._ctx.Pipe()
        proc = self._ctx.Process(target=worker_main, name=f"turnout-worker-{i}", daemon=False,
                                 args=(self._settings, i, self.port, self._link, self._metrics_dir, theirs))  # fmt: skip
        proc.start()
        theirs.close()
        self._procs[i], self._pipes[i] = proc, ours

    def start(self, stop: threading.Event, timeout_s: float = 600.0) -> bool:
        """Start every worker and wait until each listens; False if a stop came first."""
        for i in range(self.n):
            self._spawn(i)
        deadline = time.monotonic() + timeout_s
        for i in range(self.n):
            while not self._pipes[i].poll(0.2):
                if stop.is_set():
                    return False
                if not self._procs[i].is_alive():
                    raise RuntimeError(f"worker {i} exited with code {self._procs[i].exitcode} before it listened")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {i} did not listen in {timeout_s:g} s")
            self._pipes[i].recv()
        return True

    def watch(self, stop: threading.Event) -> None:
        """Until ``stop``: start again a worker that died unasked."""
        while not stop.wait(0.5):
            for i, proc in enumerate(self._procs):
                if not proc.is_alive() and not stop.is_set():
                    log.error("worker %d (pid %d) died with code %s; starting it again", i, proc.pid, proc.exitcode)
                    self.restarts += 1
                    self._spawn(i)

    def stop(self) -> None:
        """SIGTERM to every worker (a second one is harmless), then wait for their drains."""
        s = self._settings.server
        patience = s.shutdown_delay_s + s.shutdown_grace_s + 90.0
        for proc in self._procs:
            if proc is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for i, proc in enumerate(self._procs):
            if proc is None:
                continue
            proc.join(patience)
            if proc.is_alive():
                log.error("worker %d did not stop in %g s: killed", i, patience)
                proc.kill()
                proc.join(5)
            try:
                while self._pipes[i].poll(0):
                    kind, value = self._pipes[i].recv()
                    if kind == "stopped":
                        self.stats[i] = value
            except (EOFError, OSError):
                pass
        shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for st in self.stats:
            for k, v in st.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[k] = out.get(k, 0) + v
        return out


def run_group(settings: Settings, *, learner: bool, stop: Any, demo: bool = False) -> int:
    """``turnout up|serve --workers N``: the supervisor, until SIGTERM or SIGINT (module doc)."""
    from service.serving import ListenError, bind

    server, dsn = settings.server, settings.storage.dsn()
    embedded = dsn.startswith("chdb://")
    if embedded and not (learner and settings.processes.storage == "process"):
        print("turnout: --workers needs the store outside the serving processes: turnout up with [processes] "
              "storage = \"process\" on the embedded store, or a ClickHouse server ([storage] clickhouse_dsn)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        sock = bind(server.host, server.port, reuse_port=True)  # the port is ours (0: a free one), never listening
    except ListenError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    where = f"http://{server.host}:{port}"
    storage = group = demo_run = None
    note = False
    try:
        if embedded:
            from service.storage_process import StorageProcess

            storage = StorageProcess(settings).start()
        link = (storage.address, storage.authkey) if storage is not None else None
        group = WorkerGroup(settings, settings.processes.workers, port, link)
        if group.start(stop.event):
            if embedded:
                from service.holder import Holder, write_holder

                note = True
                write_holder(settings.storage.data_dir, Holder(where, os.getpid(), "up" if learner else "serve",
                                                               int(time.time() * 1000), storage.pid))  # fmt: skip
            print(f"turnout: listening on {where} with {group.n} workers  (ClickHouse: {dsn}"
                  + (f", learning every {settings.learner.interval_s:g} s in the storage process)" if learner else ")"),
                  flush=True)  # fmt: skip
            if demo:
                from service.demo import Demo
                from service.pool import pool_from_settings

                pool, prior = pool_from_settings(settings)[:2]
                demo_run = Demo(where, prior.models, pool, seed=settings.router.seed)
                demo_run.start()
            group.watch(stop.event)
    finally:
        if demo_run is not None:
            demo_run.stop()
        if group is not None:
            group.stop()  # every worker drains and sends its last events
        if note:
            from service.holder import remove_holder

            remove_holder(settings.storage.data_dir, os.getpid())
        if storage is not None:
            storage.stop()
        sock.close()
    print(f"turnout: stopped; events: {event_line(group.totals()) if group is not None else '0 not stored'}",
          flush=True)  # fmt: skip
    return 0
