"""GIL stalls in the serving process: the embedded store's writer inside it, or in its own process.

    python -m bench.stalls [--rate 300] [--duration-s 10] [--rounds 3]

The request path waits whenever another thread of its process holds the GIL. chDB holds it while
it inserts, so with the store in the serving process (``[processes] storage = "inline"``) every
request in flight waits for each insert. This measures exactly that, without HTTP or a load
generator (whose own noise on a shared machine hides it): a probe thread stands for the request
path, asking to wake every millisecond and recording how late it woke, while the process
publishes ``--rate`` decision events a second (with embeddings of the configured dimension) to

- ``inline``: the in-process bus writing into chDB opened in this process (``InProcessBus``), or
- ``process``: the storage process of ``turnout up`` (``LinkSink`` -> ``service.storage_process``).

The two alternate, ``--rounds`` times each; per round it prints the probe's p99 and worst
lateness, the worst second's p99, and the number of seconds whose worst lateness passed 10 ms.
The machine's own scheduling noise is in both; what ``inline`` has beyond it is the store's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from feedback.events import DecisionMade, uuid7

STALL_MS = 10.0


def _event(i: int, dim: int) -> DecisionMade:
    emb = np.random.default_rng(i).standard_normal(dim).astype("<f4").tobytes()
    return DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=int(time.time() * 1000), cluster=i % 8,
                        model="m0", arm="m0", propensity=0.5, embedding=emb, prompt_tokens=20,
                        completion_tokens=100, latency_ms=1.0)  # fmt: skip


def _probe(stop: threading.Event, out: list[tuple[float, float]]) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        time.sleep(0.001)
        out.append((t, (time.perf_counter() - t - 0.001) * 1000.0))


def _round(mode: str, settings, rate: float, duration_s: float, dim: int) -> dict:
    from feedback.link import LinkSink
    from feedback.spill import SpillJournal

    tmp = Path(tempfile.mkdtemp(prefix="bench-stalls-"))
    data = _INLINE_DIR / "data" if mode == "inline" else tmp / "data"  # inline: one engine for the run
    import msgspec

    s = msgspec.structs.replace(settings, storage=msgspec.structs.replace(settings.storage, data_dir=str(data)))
    storage = None
    if mode == "inline":
        from feedback.clickhouse import ClickHouseRowStore, connect
        from feedback.clickhouse_schema import prepare
        from feedback.inprocess import InProcessBus

        client = _inline_client(s, connect, prepare)
        sink = InProcessBus(ClickHouseRowStore(client), flush_interval_s=s.events.inprocess_flush_s)
    else:
        from service.storage_process import StorageProcess

        storage = StorageProcess(s).start()
        sink = LinkSink(storage.link(), SpillJournal(tmp / "spill", 1 << 30),
                        flush_interval_s=s.events.inprocess_flush_s)  # fmt: skip
    events = [_event(i, dim) for i in range(int(rate * duration_s))]
    stop, seen = threading.Event(), []
    probe = threading.Thread(target=_probe, args=(stop, seen), daemon=True)
    sys.setswitchinterval(0.0005)  # as turnout up does
    probe.start()
    t0 = time.perf_counter()
    for i, e in enumerate(events):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sink.publish(e)
    stop.set()
    probe.join()
    sink.flush(60)
    sink.close()
    if storage is not None:
        storage.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    late = np.array([x for _, x in seen])
    secs: dict[int, list[float]] = {}
    for t, x in seen:
        secs.setdefault(int(t - t0), []).append(x)
    per_second = [max(v) for _, v in sorted(secs.items())]
    return {"mode": mode, "p99_ms": float(np.percentile(late, 99)), "max_ms": float(late.max()),
            "worst_second_p99_ms": max(float(np.percentile(v, 99)) for v in secs.values()),
            "seconds_over": sum(m > STALL_MS for m in per_second), "seconds": len(per_second)}  # fmt: skip


_CLIENTS: dict[str, object] = {}
_INLINE_DIR = Path(tempfile.mkdtemp(prefix="bench-stalls-inline-"))


def _inline_client(settings, connect, prepare):
    """chDB allows one engine path per process: every inline round shares the first one's."""
    if "c" not in _CLIENTS:
        _CLIENTS["c"] = connect(settings.storage.dsn(), settings.storage.clickhouse_database)
        prepare(_CLIENTS["c"], settings.storage.retention())
    return _CLIENTS["c"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=300.0, help="decision events a second")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    from service.settings import load_settings

    settings = load_settings(None, {"TURNOUT_ROUTER__EMBEDDER": "hashing", "TURNOUT_SERVER__LOG_FORMAT": "text"})
    dim = settings.router.embedding_dim
    print(f"{args.rate:g} events/s for {args.duration_s:g} s a round, embeddings of {dim} floats; "
          f"probe lateness in ms (seconds whose worst wake-up was later than {STALL_MS:g} ms)")  # fmt: skip
    try:
        _rounds(settings, args, dim)
    finally:
        shutil.rmtree(_INLINE_DIR, ignore_errors=True)
    return 0


def _rounds(settings, args, dim: int) -> None:
    for r in range(args.rounds):
        for mode in ("inline", "process"):
            res = _round(mode, settings, args.rate, args.duration_s, dim)
            print(f"round {r + 1} {mode:<8} p99 {res['p99_ms']:6.2f}  max {res['max_ms']:7.2f}  worst second p99 "
                  f"{res['worst_second_p99_ms']:6.2f}  seconds > {STALL_MS:g} ms: {res['seconds_over']}/{res['seconds']}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
