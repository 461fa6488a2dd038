"""Where a process keeps and sends things: the ClickHouse stores, the event sink, and the first
snapshot of a store that has none."""

from __future__ import annotations

import logging
import time

import msgspec
import numpy as np

from feedback.clickhouse import ClickHouseLearnerLog, ClickHouseRowStore, ClickHouseSnapshotStore, connect
from feedback.clickhouse_schema import migrate
from feedback.inprocess import InProcessBus
from feedback.ports import EventSink
from learner.clusters import kmeans
from learner.cycle import PoolPrior, align
from learner.embedding import Embedder
from learner.ports import LearnerLog, RowStore, SnapshotStore
from learner.snapshot import Snapshot, decode_snapshot, encode_snapshot, initial_snapshot
from service.settings import Settings

__all__ = ["bootstrap_snapshot", "build_event_sink", "open_stores"]

log = logging.getLogger("turnout")


def open_stores(settings: Settings) -> tuple[RowStore, SnapshotStore, LearnerLog]:
    """The ClickHouse stores, migrated: for commands that only read or write snapshots."""
    client = connect(settings.storage.dsn(), settings.storage.clickhouse_database)
    migrate(client)
    return ClickHouseRowStore(client), ClickHouseSnapshotStore(client), ClickHouseLearnerLog(client)


def build_event_sink(settings: Settings, rows: RowStore) -> EventSink:
    """Where the service's events go: the in-process bus, or Kafka with a spill journal."""
    ev = settings.events
    if ev.backend != "kafka":
        return InProcessBus(rows, flush_interval_s=ev.inprocess_flush_s)
    from feedback.kafka import KafkaEventSink
    from feedback.spill import SpillJournal

    journal = SpillJournal(ev.spill_path(settings.storage.data_dir), ev.spill_max_bytes)
    return KafkaEventSink(
        ev.bootstrap_servers, journal, decisions_topic=ev.decisions_topic, feedback_topic=ev.feedback_topic,
        buffer_events=ev.buffer_events, batch_events=ev.send_batch_events, compression=ev.compression,
        send_timeout_s=ev.send_timeout_s, retry_max_s=ev.retry_max_s,
        close_timeout_s=ev.send_timeout_s,  # at a stop: this long for the broker, then the journal
    )  # fmt: skip




def bootstrap_snapshot(
    snapshots: SnapshotStore, prior: PoolPrior, embedder: Embedder, examples: tuple[str, ...], settings: Settings
) -> Snapshot:
    """The latest stored snapshot aligned to the pool, or a first one saved now."""
    blob = snapshots.latest()
    if blob is not None:
        snap = align(decode_snapshot(blob), prior)
        if snap.dim == embedder.dim:
            return snap
        log.warning("stored snapshot has dim %d, embedder %d: starting a new clustering", snap.dim, embedder.dim)
    if examples:
        rng = np.random.default_rng(settings.router.seed)
        cents = kmeans(embedder.embed(list(examples)), settings.router.n_clusters, rng)
    else:
        cents = np.full((1, embedder.dim), 1.0 / np.sqrt(embedder.dim), dtype=np.float32)
    snap = initial_snapshot(
        models=prior.models,
        centroids=cents,
        prior_mean=prior.prior_mean,
        completion_tokens=prior.completion_tokens,
        latency_s=prior.latency_s,
        prior_strength=settings.router.prior_strength,
        shrink_strength=settings.router.shrink_strength,
        created_at_ms=int(time.time() * 1000),
    )
    if blob is not None:  # continue the version line
        last = decode_snapshot(blob)
        snap = msgspec.structs.replace(snap, version=last.version + 1, parent=last.version,
                                       clustering=last.clustering + 1)  # fmt: skip
    snapshots.save(snap.version, snap.parent, snap.created_at_ms, snap.reason, encode_snapshot(snap))
    return snap
