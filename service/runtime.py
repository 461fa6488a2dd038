"""The composition root: settings in, a wired runtime out (stores, bus, router, learner, app).

Every client, thread and scheduler is created here, when asked, never at import time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from feedback.clickhouse import ClickHouseLearnerLog, ClickHouseRowStore, ClickHouseSnapshotStore, connect
from feedback.clickhouse_schema import migrate, prepare
from feedback.inprocess import InProcessBus
from feedback.memory import MemoryLearnerLog
from feedback.ports import EventSink
from learner.clusters import kmeans
from learner.budget import BudgetParams, BudgetTarget, tenant_budget_key
from learner.cascade import cascade_arms, extend_prior
from learner.cycle import LearnerParams, LearningCycle, PoolPrior, align
from learner.drift import DriftParams
from learner.embedding import Embedder, HashingEmbedder
from learner.ports import LearnerLog, RowStore, SnapshotStore
from learner.recluster import ReclusterParams
from learner.reward import RewardWeights
from learner.snapshot import Snapshot, SnapshotError, decode_snapshot, encode_snapshot, initial_snapshot
from learner.admin import LearnerStatus, last_window, recent_windows
from service.admin import Admin
from service.app import Deps, create_app
from service.chat import ChatService, PolicyWeights, PoolModel
from service.clusters_about import prompt_scope
from service.config_view import effective_config
from service.dashboard import clickhouse_sources
from service.decisions import DecisionIndex
from service.feedback_api import FeedbackDesk
from service.gateway import build_tenants, chat_parts, response_cache
from service.evaluation_parts import build_evaluation
from service.judge_api import admin_gate_of, judge_deps, shadow_report
from learner.routing import Prices, RoutingParams
from service.metrics import Registry
from service.records import Recorder
from service.routing import Router
from service.settings import Settings
from service.tenants import AdminGate, FeedbackCap
from service.upstream import Upstream

__all__ = [
    "Runtime", "build_embedder", "build_event_sink", "learner_params", "open_stores",
    "deployment", "pool_from_settings", "prices_of", "routing_params",
]  # fmt: skip

log = logging.getLogger("turnout")


def learner_params(settings: Settings) -> LearnerParams:
    """The learning cycle's parameters from ``[learner]`` (plain values for the pure core)."""
    ls, weights = settings.learner, {p.name: p.cost_weight for p in settings.policies}
    weights["auto"] = settings.router.cost_weight
    d, r = ls.drift, ls.recluster
    return LearnerParams(
        n_clusters=settings.router.n_clusters, grace_ms=int(ls.grace_s * 1000), discount=ls.discount,
        cold_start_min=ls.cold_start_min, recluster_growth=ls.recluster_growth,
        recluster_until=ls.recluster_until, half_life_ms=ls.half_life_s * 1000.0,
        half_life_rewards=ls.half_life_feedback,
        rewards=RewardWeights(ls.feedback_weights.explicit, ls.feedback_weights.re_request,
                              ls.feedback_weights.upstream_error, ls.feedback_weights.judge),
        drift=DriftParams(block=d.block, window=d.window, baseline=d.baseline, tolerance=d.tolerance,
                          threshold=d.threshold, reward_block=d.reward_block, reward_tolerance=d.reward_tolerance,
                          reward_threshold=d.reward_threshold) if d.enabled else None,
        reward_reset=d.reward_reset,
        recluster=ReclusterParams(sample=r.sample, max_clusters=r.max_clusters, min_size=r.min_size,
                                  split_gain=r.split_gain, split_cos=r.split_cos, growth=r.growth,
                                  merge_cos=r.merge_cos, carry=r.carry),
        budgets=tuple(BudgetTarget(b.policy, b.target_cost_usd, weights[b.policy]) for b in ls.budgets) + tuple(
            BudgetTarget(tenant_budget_key(t.name), t.budget_usd,
                         weights[t.policy] if t.cost_weight is None else t.cost_weight)
            for t in settings.tenants if t.budget_usd > 0
        ),  # fmt: skip
        budget=BudgetParams(step=ls.budget_step),
        explore_min_evidence=ls.explore_min_evidence, explore_share=ls.explore_share,
    )  # fmt: skip


def routing_params(settings: Settings) -> RoutingParams:
    """How decisions are drawn, from ``[router]``: the same in the service and the replay."""
    r = settings.router
    return RoutingParams(n_samples=r.thompson_samples, seed=r.seed, satisfice=r.satisfice)


def deployment(settings: Settings):  # -> simulations.replay.Deployment
    """What the offline runs (``turnout replay``, ``simulate``) take from a deployment's settings:
    the same learner and router levers with the same defaults, the price sheet and tiers."""
    from simulations.replay import ConfiguredModel, Deployment

    r = settings.router
    models = tuple(
        ConfiguredModel(m.name, m.price_in_per_mtok, m.price_out_per_mtok, m.tier, m.expected_completion_tokens,
                        m.expected_latency_s)  # fmt: skip
        for m in settings.models
    )
    pool, prior = pool_from_settings(settings)[:2]
    shown = {"router": msgspec.to_builtins(msgspec.structs.replace(r, cluster_examples=())),
             "learner": msgspec.to_builtins(msgspec.structs.replace(settings.learner, budgets=())),
             "language": msgspec.to_builtins(settings.language)}  # fmt: skip
    return Deployment(
        learner=learner_params(settings), routing=routing_params(settings), prior_strength=r.prior_strength,
        shrink_strength=r.shrink_strength, cost_weight=r.cost_weight, latency_weight=r.latency_weight,
        models=models, default=ConfiguredModel(""), embedder=r.embedder, embedding_dim=r.embedding_dim,
        language_detector=settings.language.detector, language_weight=settings.language.weight, settings=shown,
        pool_prices=prices_of(pool, prior.models), cascades=settings.cascades,
    )  # fmt: skip


def prices_of(pool, axis: tuple[str, ...] = ()) -> Prices:
    """The price sheet of the pool, in its order; on a routing ``axis`` with cascades after the
    models, each cascade priced 0 (its cost is estimated from its models, learner/cascade.py)."""
    extra = max(0, len(axis) - len(pool))
    return Prices(tuple(m.name for m in pool) + tuple(axis[len(pool):]), tuple(m.price_in_per_mtok for m in pool)
                  + (0.0,) * extra, tuple(m.price_out_per_mtok for m in pool) + (0.0,) * extra)  # fmt: skip


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


def build_embedder(settings: Settings) -> Embedder:
    if settings.router.embedder == "hashing":
        return HashingEmbedder(settings.router.embedding_dim)
    from learner.wordllama import WordLlamaEmbedder

    return WordLlamaEmbedder(settings.router.embedding_dim)


def pool_from_settings(
    settings: Settings, sim_latency_scale: float = 1.0, seed: int = 0
) -> tuple[tuple[PoolModel, ...], PoolPrior, dict[str, Upstream], tuple[str, ...], bool]:
    """The model pool: configured providers, or the simulated pool when none is configured.

    Returns (pool, prior, upstreams, cluster examples, simulated?).
    """
    examples = settings.router.cluster_examples
    if not settings.models:
        from service.simulated import SimulatedUpstream
        from simulations.pool import DEFAULT_POOL, topic_examples

        rng = np.random.default_rng(seed)
        pool = tuple(PoolModel(m.name, m.name, m.price_in_per_mtok, m.price_out_per_mtok, m.tier) for m in DEFAULT_POOL)
        prior = PoolPrior(
            models=tuple(m.name for m in DEFAULT_POOL),
            prior_mean=tuple(m.tier for m in DEFAULT_POOL),
            completion_tokens=tuple(float(m.completion_tokens) for m in DEFAULT_POOL),
            latency_s=tuple(m.latency_s * sim_latency_scale for m in DEFAULT_POOL),
        )
        ups: dict[str, Upstream] = {m.name: SimulatedUpstream(m, rng, sim_latency_scale) for m in DEFAULT_POOL}
        return pool, extend_prior(prior, settings.cascades), ups, examples or tuple(topic_examples()), True
    from service.gateway import openai_upstream, unset_keys

    for name, var in unset_keys(settings.models, os.environ):
        log.warning("model %s: its api_key_env variable %s is not set; requests to it go without a key", name, var)
    pool = tuple(
        PoolModel(m.name, m.upstream_model or m.name, m.price_in_per_mtok, m.price_out_per_mtok, m.tier,
                  m.context_window, m.price_cached_in_per_mtok)  # fmt: skip
        for m in settings.models
    )
    prior = PoolPrior(
        models=tuple(m.name for m in settings.models),
        prior_mean=tuple(m.tier for m in settings.models),
        completion_tokens=tuple(m.expected_completion_tokens for m in settings.models),
        latency_s=tuple(m.expected_latency_s for m in settings.models),
    )
    ups = {m.name: openai_upstream(m) for m in settings.models}
    return pool, extend_prior(prior, settings.cascades), ups, examples, False


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


class Runtime:
    """Everything ``turnout up`` / ``serve`` runs, wired together. ``start`` / ``stop``."""

    def __init__(self, settings: Settings, *, embedder: Embedder | None = None, rows: RowStore | None = None,
                 snapshots: SnapshotStore | None = None, sink: EventSink | None = None,
                 upstreams: dict[str, Upstream] | None = None, learner: bool = True,
                 sim_latency_scale: float | None = None, embedded_sink: bool = False) -> None:  # fmt: skip
        self.settings = settings
        self.client: Any = None
        self._started: float | None = None
        self._learn_attempt: float | None = None
        self._learn_attempt_ms: int | None = None
        self.writing = threading.Lock()  # one writer of the snapshot line here: a cycle or a rollback
        self._learn_success: float | None = None
        self._learn_version = 0
        self._learn_failures = 0
        self._learn_error = ""
        self.cycles = 0  # learning cycles that published a snapshot
        self.idle_cycles = 0  # ... and those that found nothing new
        if rows is None or snapshots is None:
            self.client = connect(settings.storage.dsn(), settings.storage.clickhouse_database)
            prepare(self.client, settings.storage.retention())
        self.rows = rows or ClickHouseRowStore(self.client)
        self.snapshots = snapshots or ClickHouseSnapshotStore(self.client)
        self.embedder = embedder or build_embedder(settings)
        if sim_latency_scale is None:
            sim_latency_scale = settings.simulated.latency_scale
        pool, prior, ups, examples, self.simulated = pool_from_settings(settings, sim_latency_scale, settings.router.seed)
        self.pool, self.prior = pool, prior
        self.upstreams = upstreams or ups
        self.sink = sink or build_event_sink(settings, self.rows)
        # backend "kafka" in one process (``turnout up``): the Kafka -> ClickHouse sink runs here too
        self.pipeline: Any = None
        self._pipeline_stop: Any = None
        self._pipeline_thread: Any = None
        if embedded_sink and settings.events.backend == "kafka":
            from feedback.cli import build_sink
            from feedback.clickhouse import ClickHouseDeadLetterStore
            from feedback.deadletters import MemoryDeadLetterStore

            dead = ClickHouseDeadLetterStore(self.client) if self.client is not None else MemoryDeadLetterStore()
            self.pipeline = build_sink(settings, self.rows, dead)
        self.router = Router(prices_of(pool, prior.models), routing_params(settings),
                             cascade_arms(prior.models, settings.cascades))  # fmt: skip
        self.router.swap(bootstrap_snapshot(self.snapshots, prior, self.embedder, examples, settings))
        policies = {"auto": PolicyWeights(settings.router.cost_weight, settings.router.latency_weight)}
        policies.update({p.name: PolicyWeights(p.cost_weight, p.latency_weight) for p in settings.policies})
        metrics = Registry().for_pool(prior.models)
        decisions = DecisionIndex(self.rows, settings.server.decision_cache)
        cache = response_cache(settings, metrics)  # issue 14: None unless [cache] enabled
        parts = chat_parts(settings, pool, np.random.default_rng(settings.router.seed + 3), cache)
        records = Recorder(self.sink, decisions, metrics, settings.server.store_prompts)
        self.evaluation = build_evaluation(settings, pool, self.upstreams, records, metrics,  # issue 13: judge, shadow
                                           np.random.default_rng(settings.router.seed + 4), cache)  # fmt: skip
        parts = msgspec.structs.replace(parts, evaluation=self.evaluation)
        if parts.cascades is not None and self.evaluation is not None and self.evaluation.judge is not None:
            parts.cascades.use_judge(self.evaluation)  # a cascade's judge gate grades through [judge]
        self.failover = parts.failover
        self.chat = ChatService(
            embedder=self.embedder, router=self.router, pool=pool, upstreams=self.upstreams, policies=policies,
            parts=parts, records=records, metrics=metrics, rng=np.random.default_rng(settings.router.seed + 1),
        )  # fmt: skip
        cap = settings.feedback_cap
        feedback = FeedbackDesk(self.sink, decisions, metrics, FeedbackCap(cap.max_per_user, cap.window_s),
                                on_feedback=cache.feedback if cache is not None else None)  # fmt: skip
        self.learner_log = ClickHouseLearnerLog(self.client) if self.client is not None else MemoryLearnerLog()
        self.cycle = LearningCycle(
            self.rows, self.snapshots, prior, learner_params(settings), np.random.default_rng(settings.router.seed + 2),
            publish=self.router.swap, before=lambda: self.sink.flush(30.0), learner_log=self.learner_log,
        )  # fmt: skip
        self.learner_enabled = learner
        dashboard = clickhouse_sources(self.client, self.snapshots, lambda: {  # issue 7: what /dashboard reads
            name: b.state for name, b in self.failover.breakers.items()}, drift=self.learner_log.drift_events,
            examples=examples, embed=self.embedder.embed, prompts=prompt_scope(settings))  # issue 11: clusters described
        if self.evaluation is not None and self.evaluation.shadow is not None and self.client is not None:
            dashboard.shadow = shadow_report(self.client)  # issue 13: leakage per cluster on the dashboard
        tenants = build_tenants(settings, prior.models)
        admin = Admin(router=self.router, snapshots=self.snapshots, learner_log=self.learner_log,
                      align=lambda snap: align(snap, prior), learn=lambda: self.learn_now(reason="manual"),
                      status=self.learner_status, config=lambda: effective_config(settings, os.environ),
                      about=dashboard.about, write_lock=self.writing,
                      **self._ope_parts())  # fmt: skip
        deps = Deps(
            chat=self.chat, router=self.router, metrics=metrics, breakers=self.failover.breakers, decisions=decisions,
            feedback=feedback, pool=pool, policies=policies, aliases=parts.rules.aliases, upstreams=self.upstreams,
            sink=self.sink, tenants=tenants, extra_state=self.event_state, dashboard=dashboard, admin=admin,
            admin_gate=AdminGate(settings.server.admin_key_sha256, [h for t in settings.tenants for h in t.api_key_sha256]),
            **judge_deps(self.evaluation, self.client, admin_gate_of(settings), settings.judge.agree_at),  # issue 13
        )  # fmt: skip
        self.draining = deps.draining  # set by the server when the process stops (service/serving.py)
        self.app = create_app(settings, deps)
        self._scheduler: Any = None

    def event_state(self) -> dict[str, Any]:
        """The event path for state and metrics: producer buffer, spill journal, embedded sink."""
        out: dict[str, Any] = {}
        stats = getattr(self.sink, "stats", None)
        if stats is not None:
            out["events"] = stats()
        if self.pipeline is not None:
            out["sink"] = self.pipeline.stats()
        return out

    def start_pipeline(self) -> None:
        """Run the embedded Kafka -> ClickHouse sink in a thread (backend "kafka", one process)."""
        import threading

        if self.pipeline is None or self._pipeline_thread is not None:
            return
        self._pipeline_stop = threading.Event()
        self._pipeline_thread = threading.Thread(target=self.pipeline.run, args=(self._pipeline_stop,),
                                                 name="turnout-sink", daemon=True)  # fmt: skip
        self._pipeline_thread.start()

    def poll_snapshot(self) -> None:
        """Swap in a newer stored snapshot (when the learner runs in another process).

        One that does not decode or validate is refused and the last good one stays live.
        """
        blob = self.snapshots.latest()
        if blob is not None:
            try:
                snap = align(decode_snapshot(blob), self.prior)
            except SnapshotError as exc:
                self.router.rejected += 1
                log.error("stored snapshot rejected, keeping v%d: %s", self.router.view.snapshot.version, exc)
                return
            if snap.version > self.router.view.snapshot.version:
                self.router.swap(snap)

    def _ope_parts(self) -> dict[str, Any]:
        """The admin API's off-policy evaluation, on this process's store (``simulations.candidate``):
        only where the rows are in ClickHouse (the store this process holds, or a server)."""
        if self.client is None:
            return {}
        from simulations.candidate import Candidate, evaluate_candidate

        dep: list[Any] = []  # the offline deployment, built on first use (it reads the pool once more)

        def ope(candidate: Candidate) -> Any:
            if not dep:
                dep.append(deployment(self.settings))
            return evaluate_candidate(self.client, self.snapshots, dep[0], candidate, int(time.time() * 1000))

        return {"candidate": Candidate, "ope": ope}

    def learner_status(self) -> LearnerStatus:
        """The learner as an operator asks about it (``GET /v1/admin/learner``)."""
        live = self.router.view.snapshot
        job = self._scheduler.get_job("learn") if self._scheduler is not None else None
        upcoming = getattr(job, "next_run_time", None)
        return LearnerStatus(
            learner_here=self.learner_enabled, interval_s=self.settings.learner.interval_s, live_version=live.version,
            watermark_ms=live.watermark_ms, last_cycle_at_ms=self._learn_attempt_ms,
            last_cycle_version=self._learn_version, last_error=self._learn_error,
            consecutive_failures=self._learn_failures,
            next_cycle_at_ms=int(upcoming.timestamp() * 1000) if upcoming is not None else None,
            cycles=self.cycles, idle_cycles=self.idle_cycles,
            last_window=last_window(recent_windows(self.learner_log, live.version)),
            drift_events=list(self.learner_log.drift_events(20)),
        )  # fmt: skip

    def learn_now(self, reason: str = "scheduled") -> Snapshot:
        """One learning cycle, counted in the learner's status (scheduled, or on demand through the
        admin API, which holds ``writing`` already). Raises what the cycle raised."""
        self._learn_attempt = time.monotonic()
        self._learn_attempt_ms = int(time.time() * 1000)
        before = self.router.view.snapshot.version
        try:
            snap = self.cycle.run(reason=reason)
        except Exception as exc:
            self._learn_failures += 1
            self._learn_error = f"{type(exc).__name__}: {exc}"
            raise
        self._learn_failures, self._learn_error = 0, ""
        published = snap.version > before
        self._learn_success, self._learn_version = time.monotonic(), snap.version
        self.cycles += published
        self.idle_cycles += not published  # a cycle that found nothing new published nothing
        return snap

    def learn_safely(self) -> None:
        try:
            with self.writing:
                self.learn_now()
        except Exception:
            log.exception("learning cycle failed; the live snapshot stays")

    def _learn_details(self) -> dict[str, Any]:
        now = time.monotonic()
        age = lambda t: None if t is None else round(now - t, 3)  # noqa: E731
        return {"interval_s": self.settings.learner.interval_s, "last_attempt_age_s": age(self._learn_attempt),
                "last_success_age_s": age(self._learn_success), "snapshot_version": self._learn_version,
                "consecutive_failures": self._learn_failures, "last_error": self._learn_error}  # fmt: skip

    def learner_liveness(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the scheduler runs and has attempted a cycle within three intervals (plus a minute
        for a long cycle). A cycle that fails (ClickHouse down) is still alive: restarting fixes nothing."""
        running = self._scheduler is not None and self._scheduler.running
        last = self._learn_attempt if self._learn_attempt is not None else self._started
        fresh = last is not None and time.monotonic() - last <= 3 * self.settings.learner.interval_s + 60.0
        return running and fresh, {"scheduler_running": running, **self._learn_details()}

    def learner_readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: the last cycle published a snapshot (none attempted yet counts as ready)."""
        return self._learn_failures == 0, self._learn_details()

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(daemon=True)
        self._started = time.monotonic()
        if self.learner_enabled:
            self._scheduler.add_job(self.learn_safely, "interval", seconds=self.settings.learner.interval_s,
                                    max_instances=1, coalesce=True, id="learn")  # fmt: skip
        else:
            self._scheduler.add_job(self.poll_snapshot, "interval", seconds=self.settings.learner.snapshot_poll_s,
                                    max_instances=1, coalesce=True, id="poll-snapshot")  # fmt: skip
        self._scheduler.start()
        self.start_pipeline()

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self.sink.close()
        if self._pipeline_thread is not None:
            self._pipeline_stop.set()
            self._pipeline_thread.join(timeout=30)
            self._pipeline_thread = None


def data_dir(settings: Settings) -> Path:
    return Path(settings.storage.data_dir)
