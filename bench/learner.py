"""The learning cycle on ClickHouse (chDB): time against data stored and data new since the watermark.

    python -m bench.learner [--stored 10000,100000,1000000] [--new 10000] [--repeats 3]

For each size N, a fresh database gets N past decisions (30% with feedback), generated inside
ClickHouse and ingested over the past day. One catch-up cycle from a watermark of zero reads all
of them (timed); the learner is then caught up. Then, ``--repeats`` times: ``--new`` decisions with 30% feedback go in through
``ClickHouseRowStore.insert`` (the production write path) and one ``LearningCycle.run`` is timed
(read the window, fold, validate, write the learner log, save the snapshot). Also timed: cycles
with 0, 1k, 10k and 100k new decisions on the largest N, and one re-clustering on it (recent and reference embeddings from ClickHouse, split and
merge, evidence carried). Embeddings are 64-d here (the cycle reads them only to re-cluster).

Target on a 2-core machine: a cycle over 1M stored decisions under 10 s, growing with the new
data, not with the data stored.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a shared 2-core machine: threads only contend

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from feedback.clickhouse import ClickHouseLearnerLog, ClickHouseRowStore, ClickHouseSnapshotStore, connect  # noqa: E402
from feedback.clickhouse_schema import migrate  # noqa: E402
from feedback.events import DecisionMade, FeedbackGiven, uuid7  # noqa: E402
from learner.cycle import LearnerParams, LearningCycle, PoolPrior, recluster_snapshot  # noqa: E402
from learner.embedding import normalize_rows  # noqa: E402
from learner.recluster import ReclusterParams  # noqa: E402
from learner.snapshot import encode_snapshot, initial_snapshot  # noqa: E402

DIM, K = 64, 8
MODELS = ("frontier", "coder", "chat", "mini")
POOL = PoolPrior(MODELS, (0.85, 0.7, 0.6, 0.45), (400.0, 300.0, 250.0, 150.0), (2.0, 1.5, 1.0, 0.5))
DAY_MS = 86_400_000


def _history(client, n: int, start_ms: int) -> None:
    """N decisions and 30% feedback, generated inside ClickHouse, ingested over [start, start + day)."""
    client.command(f"""
        INSERT INTO decisions (event_id, decision_id, ts, policy, snapshot_version, clustering, cluster, margin, arm,
                               propensity, model, completion_tokens, cost_usd, latency_ms, embedding, ingested_ms)
        SELECT concat('e', did), did, fromUnixTimestamp64Milli(t), 'auto', 1, 1, number % {K}, 0.2 + (number % 7) / 40,
               m, 0.5, m, 200 + number % 300, 0.0001 * (1 + number % 40), 900.0 + number % 500,
               arrayMap(i -> toFloat32(sin(number * 7 + i)), range({DIM})), t
        FROM (SELECT number, {start_ms} + intDiv(number * {DAY_MS}, {n}) AS t,
                     concat(leftPad(lower(hex(t)), 12, '0'), '-7000-8000-', leftPad(lower(hex(number)), 12, '0')) AS did,
                     ['frontier', 'coder', 'chat', 'mini'][1 + number % 4] AS m
              FROM numbers({n}))
    """)  # fmt: skip
    client.command("""
        INSERT INTO feedback (event_id, decision_id, ts, reward, kind, ingested_ms)
        SELECT concat('f', decision_id), decision_id, ts, (number % 3) > 0, 'explicit', ingested_ms + 1000
        FROM (SELECT decision_id, ts, ingested_ms, rowNumberInAllBlocks() AS number FROM decisions)
        WHERE number % 10 < 3
    """)  # fmt: skip


def _new_traffic(rows: ClickHouseRowStore, rng: np.random.Generator, n: int) -> None:
    events = []
    embs = normalize_rows(rng.normal(size=(n, DIM))).astype("<f4")
    for i in range(n):
        did = uuid7()
        model = MODELS[int(rng.integers(4))]
        events.append(DecisionMade(event_id=uuid7(), decision_id=did, ts_ms=0, clustering=1, cluster=int(rng.integers(K)),
                                   margin=float(rng.uniform(0.1, 0.4)), arm=model, model=model, completion_tokens=250,
                                   cost_usd=0.001, latency_ms=800.0, embedding=embs[i].tobytes()))  # fmt: skip
        if i % 10 < 3:
            events.append(FeedbackGiven(event_id=uuid7(), decision_id=did, ts_ms=0, reward=float(rng.random() < 0.7)))
    for i in range(0, len(events), 5000):
        rows.insert(events[i : i + 5000])


def _setup(path: str, n: int, end_ms: int):
    client = connect(f"chdb://{path}", f"bench_learner_{n}")
    migrate(client)
    rows, snaps = ClickHouseRowStore(client), ClickHouseSnapshotStore(client)
    if rows.count("decisions") < n:
        _history(client, n, end_ms - DAY_MS)
    cents = normalize_rows(np.random.default_rng(0).normal(size=(K, DIM)))
    snap = initial_snapshot(models=MODELS, centroids=cents, prior_mean=POOL.prior_mean,
                            completion_tokens=POOL.completion_tokens, latency_s=POOL.latency_s, prior_strength=2.0,
                            shrink_strength=5.0, created_at_ms=end_ms)  # fmt: skip
    return client, rows, snaps, snap


def _cycle(rows, snaps, client) -> LearningCycle:
    return LearningCycle(rows, snaps, POOL, LearnerParams(grace_ms=0, n_clusters=K), np.random.default_rng(0),
                         learner_log=ClickHouseLearnerLog(client))  # fmt: skip


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stored", default="10000,100000,1000000")
    ap.add_argument("--new", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.stored.split(",")]
    rng = np.random.default_rng(1)
    path = tempfile.mkdtemp(prefix="turnout-bench-learner-")
    print(f"chDB at {path}; {args.new} new decisions (30% with feedback) per timed cycle, median of {args.repeats}\n")
    print(f"{'stored':>10}  {'setup s':>8}  {'cycle s (new)':>14}  {'catch-up s (all)':>17}")
    last = None
    for n in sizes:
        t0 = time.perf_counter()
        now = int(time.time() * 1000)
        client, rows, snaps, snap = _setup(path, n, now - 10_000)
        setup_s = time.perf_counter() - t0
        snaps.save(1, 0, snap.created_at_ms, "initial", encode_snapshot(snap))  # watermark 0
        cycle = _cycle(rows, snaps, client)
        catch_up = _timed(cycle.run)  # reads all N; afterwards the learner is caught up
        times = []
        for _ in range(args.repeats):
            _new_traffic(rows, rng, args.new)
            time.sleep(0.01)
            times.append(_timed(cycle.run))
        print(f"{n:>10,}  {setup_s:>8.1f}  {statistics.median(times):>14.3f}  {catch_up:>17.3f}", flush=True)
        last = (client, rows, snaps, cycle)
    if last is None:
        return
    client, rows, snaps, cycle = last
    print(f"\nat {sizes[-1]:,} stored, cycle time against new decisions since the watermark:")
    for new in (0, 1_000, 10_000, 100_000):
        _new_traffic(rows, rng, new)
        time.sleep(0.01)
        print(f"{new:>10,} new  {_timed(cycle.run):>8.3f} s", flush=True)
    params = ReclusterParams()
    current = cycle.current()
    t = time.perf_counter()
    recent = rows.recent_embeddings(params.sample)
    reference = rows.recent_embeddings(params.sample, until_ms=current.watermark_ms - DAY_MS // 2)
    read_s = time.perf_counter() - t
    stack = lambda blobs: np.stack([np.frombuffer(b, dtype="<f4") for b in blobs])  # noqa: E731
    t = time.perf_counter()
    new = recluster_snapshot(current, stack(recent), stack(reference), np.random.default_rng(0), params, max_splits=1)
    fit_s = time.perf_counter() - t
    print(f"\nre-clustering at {sizes[-1]:,} stored: read {len(recent)} + {len(reference)} embeddings {read_s:.3f} s, "
          f"fit {fit_s:.3f} s ({len(current.n)} -> {len(new.n)} clusters)")  # fmt: skip


if __name__ == "__main__":
    main()
