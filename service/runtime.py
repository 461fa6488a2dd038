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
from feedback.clickhouse_schema import prepare
from feedback.inprocess import InProcessBus
from feedback.memory import MemoryLearnerLog
from feedback.ports import EventSink
from learner.admin import LearnerStatus, last_window, recent_windows
from learner.cascade import cascade_arms
from learner.cycle import LearningCycle, align
from learner.embedding import Embedder
from learner.ports import RowStore, SnapshotStore
from learner.snapshot import Snapshot, SnapshotError, decode_snapshot
from service.admin import Admin
from service.app import Deps, create_app
from service.chat import ChatService, PolicyWeights
from service.clusters_about import prompt_scope
from service.config_view import effective_config
from service.dashboard import clickhouse_sources
from service.decisions import DecisionIndex
from service.feedback_api import FeedbackDesk
from service.gateway import build_tenants, chat_parts, response_cache
from service.evaluation_parts import build_evaluation
from service.judge_api import admin_gate_of, judge_deps, shadow_report
from service.metrics import Registry
from service.params import deployment, learner_params, prices_of, routing_params
from service.pool import build_embedder, pool_from_settings
from service.records import Recorder
from service.routing import Router
from service.settings import Settings
from service.stores import bootstrap_snapshot, build_event_sink, open_stores
from service.tenants import AdminGate, FeedbackCap
from service.upstream import Upstream

__all__ = [
    "Runtime", "build_embedder", "build_event_sink", "learner_params", "open_stores",
    "deployment", "pool_from_settings", "prices_of", "routing_params",
]  # fmt: skip

log = logging.getLogger("turnout")




class Runtime:
    """Everything ``turnout up`` / ``serve`` runs, wired together. ``start`` / ``stop``."""

    def __init__(self, settings: Settings, *, embedder: Embedder | None = None, rows: RowStore | None = None,
                 snapshots: SnapshotStore | None = None, sink: EventSink | None = None,
                 upstreams: dict[str, Upstream] | None = None, learner: bool = True,
                 sim_latency_scale: float | None = None, embedded_sink: bool = False, client: Any = None,
                 link: Any = None, publishes: bool = True, worker: int = 0) -> None:  # fmt: skip
        """``client``: a ClickHouse client opened elsewhere (the storage process's, through the
        link: not migrated here); ``link``: the ``feedback.link.StoreLink`` to the storage process,
        which runs the learning cycles (this process polls for snapshots and asks it for a cycle on
        demand and for the learner's status); ``publishes=False``: the storage process, whose events
        arrive stored and whose sink (never Kafka) only serves the learner's flush; ``worker``: which
        of N serving processes this is (its own stream of uniform draws; the same snapshot draws)."""
        self.settings = settings
        self.client: Any = client
        self.link = link
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
        if (rows is None or snapshots is None) and client is None:
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
        self.sink = sink or (build_event_sink(settings, self.rows) if publishes else InProcessBus(self.rows))
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
        self.metrics = metrics = Registry().for_pool(prior.models)
        # several workers: feedback may reach a worker before the decision another one made is
        # stored; a decision not found waits that long for it before the 404
        ev = settings.events
        settle_s = 0.0 if settings.processes.workers <= 1 else 2 * max(ev.inprocess_flush_s, ev.sink_batch_s) + 1.0
        decisions = DecisionIndex(self.rows, settings.server.decision_cache, settle_s)
        cache = response_cache(settings, metrics)  # issue 14: None unless [cache] enabled
        parts = chat_parts(settings, pool, np.random.default_rng(settings.router.seed + 3), cache)
        records = Recorder(self.sink, decisions, metrics, settings.server.store_prompts)
        self.evaluation = build_evaluation(settings, pool, self.upstreams, records, metrics,  # issue 13: judge, shadow
                                           np.random.default_rng(settings.router.seed + 4), cache,
                                           snapshots=self.snapshots, router=self.router, prior=prior)  # fmt: skip
        parts = msgspec.structs.replace(parts, evaluation=self.evaluation)
        if parts.cascades is not None and self.evaluation is not None and self.evaluation.judge is not None:
            parts.cascades.use_judge(self.evaluation)  # a cascade's judge gate grades through [judge]
        self.failover = parts.failover
        self.chat = ChatService(
            embedder=self.embedder, router=self.router, pool=pool, upstreams=self.upstreams, policies=policies,
            parts=parts, records=records, metrics=metrics,
            rng=np.random.default_rng(settings.router.seed + 1 if not worker else [settings.router.seed + 1, worker]),
        )  # fmt: skip
        if self.evaluation is not None:  # a candidate shadow decides with the routing step's own decision
            self.evaluation.use_router(self.chat.routing.decide_again)
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

        One that does not decode or validate is refused and the last good one stays live. The
        version is asked first: a snapshot is read and decoded only when a newer one is stored.
        Through a link the storage process answers the version without a query unless a snapshot
        was stored since it last asked (``service.storage_process``).
        """
        if self.link is not None:
            newest = int(self.link.call("snapshot_version"))
        else:
            listed = self.snapshots.list(1)
            newest = listed[0].version if listed else 0
        if newest <= self.router.view.snapshot.version:
            return
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
        if self.link is not None:
            return self.link.call("status")
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
        admin API, which holds ``writing`` already). Raises what the cycle raised. With a storage
        process, the cycle runs there, after this process's events are stored, and its snapshot
        goes live here on return."""
        if self.link is not None:
            self.sink.flush(30.0)
            snap = decode_snapshot(self.link.call("learn", reason))
            self.router.swap(align(snap, self.prior))
            return snap
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
            poll_s = self.settings.learner.snapshot_poll_s
            if self.link is not None:  # ``turnout up``: the learner's snapshots go live within a second
                poll_s = min(poll_s, 1.0)
            self._scheduler.add_job(self.poll_snapshot, "interval", seconds=poll_s,
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
