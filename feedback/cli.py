"""``turnout sink``: the Kafka -> ClickHouse sink as its own process.

    turnout sink [--config turnout.toml] [--data-dir DIR] [--health-port PORT]

Reads ``[events]`` (bootstrap servers, topics, group, batch size and time) and ``[storage]``
(ClickHouse DSN and database), applies the migrations, and runs until SIGTERM or Ctrl-C
(``feedback/stop.py``), after which the batch in hand is either stored and committed or left
uncommitted for the next run, and the process exits 0.
With a health port (``--health-port`` or ``[probes] sink_port``) it answers ``GET /healthz``
(the loop is alive) and ``GET /readyz`` (joined the group, not stuck retrying a store, not stopping).

The settings are loaded by ``service.cli`` (``args.load_settings``), which registers this
command; this package does not import ``service``.
"""

from __future__ import annotations

import argparse
from typing import Any

from feedback.sink import Sink

__all__ = ["build_sink", "register"]


def build_sink(settings: Any, rows: Any, dead_letters: Any) -> Sink:
    """The sink wired from ``settings.events`` onto the given stores (composition, no I/O)."""
    ev = settings.events
    return Sink(
        ev.bootstrap_servers, rows, dead_letters, topics=(ev.decisions_topic, ev.feedback_topic),
        dlq_topic=ev.dlq_topic, group_id=ev.sink_group, batch_events=ev.sink_batch_events, batch_s=ev.sink_batch_s,
        session_timeout_ms=ev.sink_session_timeout_ms, max_poll_interval_ms=ev.sink_max_poll_interval_ms,
        retry_max_s=ev.retry_max_s,
    )  # fmt: skip


def cmd_sink(args: argparse.Namespace) -> int:
    from feedback.clickhouse import ClickHouseDeadLetterStore, ClickHouseRowStore, connect
    from feedback.clickhouse_schema import prepare
    from feedback.stop import StopSignal

    stop = StopSignal().install()  # SIGTERM or SIGINT: readiness off, the batch in hand settled, exit 0
    settings = args.load_settings(args)
    port = args.health_port if args.health_port is not None else settings.probes.sink_port
    probe = sink = None
    if port is not None:  # a taken port is said (ProbeListenError) before the store is opened
        from feedback.probe import ProbeServer

        checks = {"/healthz": lambda: sink.liveness(), "/readyz": stop.gate(lambda: sink.readiness())}
        probe = ProbeServer(settings.probes.host, port, checks)
    try:
        client = connect(settings.storage.dsn(), settings.storage.clickhouse_database)
        prepare(client, settings.storage.retention())
        sink = build_sink(settings, ClickHouseRowStore(client), ClickHouseDeadLetterStore(client))
    except BaseException:
        if probe is not None:
            probe.close()
        raise
    ev = settings.events
    print(f"turnout sink: {ev.bootstrap_servers} [{ev.decisions_topic}, {ev.feedback_topic}] -> "
          f"{settings.storage.dsn()} (group {ev.sink_group}); SIGTERM stops", flush=True)  # fmt: skip
    if probe is not None:
        probe.start()
        print(f"turnout sink: probes on http://{settings.probes.host}:{probe.port}/healthz and /readyz", flush=True)
    try:
        sink.run(stop.event)  # on the event: the batch in hand is stored and committed, or left uncommitted
    finally:
        if probe is not None:
            probe.close()
    s = sink.stats()
    print(f"turnout sink: stopped; {s['events']} events stored in {s['batches']} committed batches, "
          f"{s['dead_letters']} dead letters", flush=True)  # fmt: skip
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sink", help="consume events from Kafka into ClickHouse")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--data-dir", help="where the embedded ClickHouse keeps its data (default ./.turnout)")
    p.add_argument("--health-port", type=int, help="serve GET /healthz and /readyz on this port (0: a free one)")
    p.set_defaults(func=cmd_sink)
