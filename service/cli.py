"""``turnout``: the command line. Each command wires settings to adapters and runs.

    turnout up        service + in-process event bus + ClickHouse (chDB) + learner, one process
    turnout serve     the service only (the learner and sink run elsewhere)
    turnout learn     the learner: one cycle (--once) or on a schedule
    turnout migrate   apply ClickHouse migrations

The long-running commands (and ``turnout sink``) stop alike on SIGTERM or SIGINT
(``feedback/stop.py``, ``service/serving.py``): readiness off, in-flight work finished, every
accepted event stored, published or journaled, exit code 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from service.settings import ConfigError, Settings, load_settings
from service.settings_check import check

__all__ = ["main"]

log = logging.getLogger("turnout")


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(Path(args.config) if args.config else None, os.environ)
    if getattr(args, "data_dir", None):
        settings = msgspec.structs.replace(
            settings, storage=msgspec.structs.replace(settings.storage, data_dir=args.data_dir)
        )
    replace = msgspec.structs.replace
    if getattr(args, "host", None):
        settings = replace(settings, server=replace(settings.server, host=args.host))
    # each flag's value passes the same checks as the file's (server.port, ...), and an error names that flag
    if getattr(args, "port", None) is not None:  # 0: a free port the system picks
        settings = _flagged(replace(settings, server=replace(settings.server, port=args.port)), "--port")
    if getattr(args, "workers", None) is not None:
        settings = _flagged(replace(settings, processes=replace(settings.processes, workers=args.workers)), "--workers")
    for flag in ("--learn-interval-s", "--interval-s"):
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            settings = _flagged(replace(settings, learner=replace(settings.learner, interval_s=value)), flag)
    return settings


def _flagged(settings: Settings, flag: str) -> Settings:
    check(settings, flag)
    return settings


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="where the embedded ClickHouse keeps its data (default ./.turnout)")


def _serve_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8080)")
    p.add_argument("--workers", type=int, help="serving processes on the port (default 1; [processes] workers)")


def cmd_up(args: argparse.Namespace, learner: bool = True) -> int:
    """``turnout up`` (learner=True) and ``turnout serve``: serve until SIGTERM or SIGINT, then stop
    in order (docs/pipeline.md, "What a stop guarantees") and exit 0."""
    from feedback.stop import StopSignal
    from service.runtime import Runtime
    from service.serving import ListenError, bind, serve

    stop = StopSignal().install()  # before anything slow: a stop during start-up is a clean stop too
    settings = _settings(args)
    if settings.server.log_format == "json":  # one JSON object a line from here on (service/logs.py)
        from service.logs import use_json_logs

        use_json_logs()
    # Background threads (event writer, learner) must not hold the GIL for the default 5 ms
    # while a request waits: switch more often, the request path is short.
    sys.setswitchinterval(0.0005)
    if args.demo and args.learn_interval_s is None:
        settings = msgspec.structs.replace(settings, learner=msgspec.structs.replace(settings.learner, interval_s=10.0))
    if settings.processes.workers > 1:
        from service.workers import run_group

        return run_group(settings, learner=learner, stop=stop, demo=args.demo)
    server = settings.server
    try:
        sock = bind(server.host, server.port)
    except ListenError as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    storage = None
    try:
        if learner and settings.processes.storage == "process" and settings.storage.dsn().startswith("chdb://"):
            storage, rt = _with_storage_process(settings)  # the store, its writer and the learner apart
        else:
            rt = Runtime(settings, learner=learner, embedded_sink=learner)  # kafka backend: `up` runs the sink too
    except BaseException:
        sock.close()
        if storage is not None:
            storage.stop()
        raise
    where = f"http://{server.host}:{sock.getsockname()[1]}"
    if rt.simulated:
        print(f"turnout: no providers configured, serving the simulated model pool from simulations/ "
              f"({', '.join(rt.prior.models)})", flush=True)  # fmt: skip
    demo: Any = None

    note = settings.storage.dsn().startswith("chdb://")  # the store is ours alone: say where our admin API is

    def listening() -> None:
        nonlocal demo
        if note:
            from service.holder import Holder, write_holder

            write_holder(settings.storage.data_dir, Holder(where, os.getpid(), "up" if learner else "serve",
                                                           int(time.time() * 1000),
                                                           storage.pid if storage is not None else 0))  # fmt: skip
        print(f"turnout: listening on {where}  (ClickHouse: {settings.storage.dsn()}, "
              f"learning every {settings.learner.interval_s:g} s)" if learner else
              f"turnout: listening on {where} (service only; snapshots polled from ClickHouse)", flush=True)  # fmt: skip
        if args.demo:
            from service.demo import Demo

            demo = Demo(where, rt.prior.models, rt.pool, seed=settings.router.seed)  # one seed for the whole run
            demo.start()

    try:
        rt.start()
        if not stop.stopping:
            serve(rt.app, sock, stop=stop.event, draining=rt.draining, delay_s=server.shutdown_delay_s,
                  grace_s=server.shutdown_grace_s, on_listening=listening, max_body_bytes=server.max_body_bytes,
                  settle_heap=True)  # fmt: skip
    finally:
        if note:
            from service.holder import remove_holder

            remove_holder(settings.storage.data_dir, os.getpid())
        if demo is not None:
            demo.stop()
        sock.close()
        rt.stop()  # the learner's cycle in hand finishes; events are stored, published or journaled
        if storage is not None:
            storage.stop()  # after the last events: its learning cycle in hand finishes, the store closes
    print(f"turnout: stopped; events: {_event_summary(rt)}", flush=True)
    return 0


def _with_storage_process(settings: Settings) -> tuple[Any, Any]:
    """``turnout up`` with the store in its own process (``service.storage_process``): started,
    and this process's runtime wired to it (queries, events and learning through the link)."""
    from service.storage_process import StorageProcess
    from service.workers import linked_runtime

    storage = StorageProcess(settings).start()
    try:
        return storage, linked_runtime(settings, storage.link(), 0)
    except BaseException:
        storage.stop()
        raise


def _event_summary(rt: Any) -> str:
    """What became of the accepted events, for the last line a stopped process prints."""
    from service.workers import event_line, sink_stats

    return event_line(sink_stats(rt))


def cmd_learn(args: argparse.Namespace) -> int:
    from feedback.stop import StopSignal
    from service.runtime import Runtime

    settings = _settings(args)
    # the learner publishes no events: no Kafka producer (nor spill journal) in this process
    settings = msgspec.structs.replace(settings, events=msgspec.structs.replace(settings.events, backend="inprocess"))
    if args.once:
        remote = _admin(args)  # a data directory that does not exist: one line, nothing created
        if remote is not None:  # the running service holds the store: its cycle, in its process
            done = remote.learn()
            version, watermark, published = done.version, done.watermark_ms, done.published
        else:
            rt = Runtime(settings, learner=True)
            before = rt.router.view.snapshot.version
            snap = rt.cycle.run(reason="manual")
            rt.sink.close()
            version, watermark, published = snap.version, snap.watermark_ms, snap.version > before
        from learner.cli import when

        seen = f"events up to {when(watermark)}" if watermark else "no events yet"
        print(f"snapshot v{version} published ({seen})" if published else
              f"nothing new since snapshot v{version} ({seen}): no snapshot published")  # fmt: skip
        return 0
    stop = StopSignal().install()  # SIGTERM or SIGINT: readiness off, the cycle in hand finishes, exit 0
    port = args.health_port if args.health_port is not None else settings.probes.learner_port
    probe = rt = None
    if port is not None:  # a taken port is said before anything slow starts
        from feedback.probe import ProbeServer

        checks = {"/healthz": lambda: rt.learner_liveness(), "/readyz": stop.gate(lambda: rt.learner_readiness())}
        probe = ProbeServer(settings.probes.host, port, checks)
    try:
        rt = Runtime(settings, learner=True)
    except BaseException:
        if probe is not None:
            probe.close()
        raise
    try:
        rt.start()
        print(f"turnout learn: a cycle every {rt.settings.learner.interval_s:g} s; SIGTERM or Ctrl-C stops", flush=True)
        if probe is not None:
            probe.start()
            where = f"http://{settings.probes.host}:{probe.port}"
            print(f"turnout learn: probes on {where}/healthz and {where}/readyz", flush=True)
        stop.event.wait()
    finally:
        rt.stop()  # waits for the cycle in hand: its snapshot is saved, or it never started
        if probe is not None:
            probe.close()
    print(f"turnout learn: stopped after {rt.cycles} cycles that published a snapshot and {rt.idle_cycles} idle "
          f"(last snapshot v{rt.router.view.snapshot.version})",
          flush=True)  # fmt: skip
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from feedback.clickhouse import connect
    from feedback.clickhouse_schema import prepare

    settings = _settings(args)
    client = connect(settings.storage.dsn(), settings.storage.clickhouse_database)
    applied, retention = prepare(client, settings.storage.retention())
    print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")
    for table, days in retention.items():
        print(f"retention of {table}: {f'{days} days' if days else 'forever'}")
    return 0


def _admin(args: argparse.Namespace, must_exist: bool = True):  # -> service.admin_client.AdminClient | None
    """The admin API of the running service that holds the store (or ``--url``'s); None: open it
    here. Raises ``AdminError`` for a read command on a data directory that does not exist."""
    from service.admin_client import reach

    settings = _settings(args)
    dsn = getattr(args, "clickhouse_dsn", None) or settings.storage.dsn()
    return reach(getattr(args, "url", None), dsn, settings.storage.data_dir, os.environ, must_exist=must_exist)


def _deployment(args: argparse.Namespace):  # -> simulations.replay.Deployment
    from service.runtime import deployment

    return deployment(_settings(args))


def _open_stores(args: argparse.Namespace):  # -> (RowStore, SnapshotStore, LearnerLog)
    from service.runtime import open_stores

    return open_stores(_settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="turnout", description="An adaptive LLM router that learns from its traffic.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.set_defaults(load_settings=_settings)  # for commands registered by other packages (turnout sink)
    parser.set_defaults(load_deployment=_deployment)  # for turnout replay / simulate: the product's own settings
    parser.set_defaults(open_stores=_open_stores)  # for learner.cli (turnout snapshot), which may not import service
    parser.set_defaults(admin=_admin)  # turnout snapshot, ope: the running service's admin API, when it holds the store

    up = sub.add_parser("up", help="service, event bus, ClickHouse and learner in one process")
    _serve_args(up)
    up.add_argument("--learn-interval-s", type=float, help="seconds between learning cycles (default 30)")
    up.add_argument("--demo", action="store_true", help="drive simulated users against the service and show shares")
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="the service only; learner and sink run as their own processes")
    _serve_args(serve)
    serve.set_defaults(func=lambda a: cmd_up(a, learner=False), learn_interval_s=None, demo=False)

    learn = sub.add_parser("learn", help="run learning cycles")
    _common(learn)
    learn.add_argument("--once", action="store_true", help="run one cycle and exit")
    learn.add_argument("--interval-s", type=float, help="seconds between cycles")
    learn.add_argument("--health-port", type=int, help="serve GET /healthz and /readyz on this port (0: a free one)")
    learn.add_argument("--url", help="--once: the admin API of a running service (default: the one that holds "
                                     "--data-dir, if any)")
    learn.set_defaults(func=cmd_learn)

    mig = sub.add_parser("migrate", help="apply ClickHouse migrations")
    _common(mig)
    mig.set_defaults(func=cmd_migrate)

    for register in _extensions():
        register(sub)
    _no_abbreviations(parser)
    return parser


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """A misspelt flag (``--confi``) is an error everywhere, not a silent prefix match."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _no_abbreviations(child)


def _extensions() -> list:
    """Commands that live with their package (simulations, sink, snapshots)."""
    regs = []
    for mod in ("simulations.cli", "feedback.cli", "learner.cli", "service.judge_cli"):
        try:
            module = __import__(mod, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        regs.append(module.register)
    return regs


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    for noisy in ("httpx", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.ERROR)  # a poll skipped while the last still runs: not news
    from feedback.chdb_lock import StoreLocked
    from feedback.probe import ProbeListenError
    from service.admin_client import AdminError, held_by

    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # a user's mistake: one line, no traceback
        said = str(exc)
        if said.startswith("config error: ") and getattr(args, "config", None):  # found past loading: name the file
            said = f"config error in {args.config}: {said.removeprefix('config error: ')}"
        print(f"turnout: {said}", file=sys.stderr)
        return 2
    except (AdminError, ProbeListenError) as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 2
    except StoreLocked as exc:
        print(f"turnout: the embedded ClickHouse in {exc.path} is in use by {held_by(str(Path(exc.path).parent), exc.pid)}",
              file=sys.stderr)  # fmt: skip
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (``| head``): nothing left to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
