"""A sink in a process of its own, for the crash test (chDB allows one engine path per process).

    python -m tests.feedback.sink_proc run  --chdb DIR --db DB --bootstrap HOST:PORT --topics D,F --dlq Q
                                            --group G [--batch-events N] [--hang-on-insert K --marker FILE]
    python -m tests.feedback.sink_proc dump --chdb DIR --db DB      (prints the stored event ids as JSON)

With ``--hang-on-insert K`` the K-th insert stores only the first half of its batch, writes
``--marker`` and hangs: the state a ``kill -9`` in the middle of a batch leaves behind.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from feedback.clickhouse import ClickHouseDeadLetterStore, ClickHouseRowStore, connect
from feedback.clickhouse_schema import migrate
from feedback.sink import Sink


class HangingRows:
    def __init__(self, inner: ClickHouseRowStore, hang_on: int, marker: Path) -> None:
        self.inner, self.hang_on, self.marker, self.calls = inner, hang_on, marker, 0

    def insert(self, events: Any, streams: Any = None) -> None:
        self.calls += 1
        if self.calls < self.hang_on:
            self.inner.insert(events, streams)
            return
        half = len(events) // 2
        self.inner.insert(list(events)[:half], None if streams is None else list(streams)[:half])
        self.marker.write_text(json.dumps({"batch": len(events)}))
        while True:
            time.sleep(1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["run", "dump"])
    p.add_argument("--chdb", required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--bootstrap")
    p.add_argument("--topics")
    p.add_argument("--dlq")
    p.add_argument("--group")
    p.add_argument("--batch-events", type=int, default=100)
    p.add_argument("--hang-on-insert", type=int, default=0)
    p.add_argument("--marker")
    args = p.parse_args(argv)
    client = connect(f"chdb://{args.chdb}", args.db)
    migrate(client)
    if args.mode == "dump":
        out = {t: [r[0] for r in client.query(f"SELECT event_id FROM {t}").result_rows] for t in ("decisions", "feedback")}
        print(json.dumps(out))
        return 0
    rows: Any = ClickHouseRowStore(client)
    if args.hang_on_insert:
        rows = HangingRows(rows, args.hang_on_insert, Path(args.marker))
    sink = Sink(args.bootstrap, rows, ClickHouseDeadLetterStore(client), topics=tuple(args.topics.split(",")),
                dlq_topic=args.dlq, group_id=args.group, batch_events=args.batch_events, batch_s=0.1,
                session_timeout_ms=6000)  # fmt: skip
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sink.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
