"""A simulated world for the learner's statistical tests: users, topics and the simulated pool
(``simulations.pool``) driving the real router and the real learning cycle on a fake clock.

Each ``step`` routes one cycle's traffic as the service does (``learner.routing.decide`` on the
router's live view, with the learned cost weight of the world's policy or tenant budget), stores the
decisions and the users' thumbs in the row store, and runs ``LearningCycle.run``, which publishes
the new snapshot to the router.
"""

from __future__ import annotations

from typing import Callable

import msgspec
import numpy as np

from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.memory import MemoryLearnerLog, MemoryRowStore, MemorySnapshotStore
from learner.budget import tenant_budget_key
from learner.clusters import kmeans
from learner.costs import request_tokens
from learner.cycle import LearnerParams, LearningCycle, PoolPrior
from learner.embedding import Embedder
from learner.routing import Prices, RoutingParams, decide
from learner.snapshot import encode_snapshot, initial_snapshot
from service.routing import Router
from simulations.pool import DEFAULT_POOL, DEFAULT_TOPICS, SimModel, Topic, answer, make_prompt


class Served(msgspec.Struct, frozen=True):
    cycle: int
    topic: str
    cluster: int
    model: str
    quality: float  # the true probability of a thumbs-up
    cost_usd: float


def all_prompts(topic: Topic) -> list[str]:
    return [t.format(f) for t in topic.templates for f in topic.fillers]


class World:
    def __init__(
        self,
        embedder: Embedder,
        params: LearnerParams,
        *,
        seed: int,
        pool: tuple[SimModel, ...] = DEFAULT_POOL,
        topics: tuple[Topic, ...] = DEFAULT_TOPICS,
        cost_weight: float = 25.0,
        n_samples: int = 512,
        satisfice: float = RoutingParams().satisfice,  # the service's default
        tenant: str = "",
    ) -> None:
        self.embedder = embedder
        self.pool = pool
        self.topics = {t.name: t for t in topics}
        self.mix = {t.name: 1.0 for t in topics}
        self.quality: Callable[[SimModel, str], float] = lambda m, topic: m.quality_on(topic)
        self.cost_weight = cost_weight
        self.tenant = tenant  # every request comes from this tenant; with a budget of its own, if configured
        self.rng = np.random.default_rng(seed)
        self._ids = np.random.default_rng([seed, 7])
        self._cache: dict[str, np.ndarray] = {}
        self.now = 1_000_000
        self.cycles = 0
        self.rows = MemoryRowStore(clock_ms=lambda: self.now)
        self.snapshots = MemorySnapshotStore()
        self.log = MemoryLearnerLog()
        models = tuple(m.name for m in pool)
        prior = PoolPrior(models, tuple(m.tier for m in pool), tuple(float(m.completion_tokens) for m in pool),
                          tuple(m.latency_s for m in pool))  # fmt: skip
        self.prices = Prices(models, tuple(m.price_in_per_mtok for m in pool), tuple(m.price_out_per_mtok for m in pool))
        self.router = Router(self.prices, RoutingParams(n_samples=n_samples, seed=seed, satisfice=satisfice))
        seen = [p for t in topics for p in all_prompts(t)]
        cents = kmeans(embedder.embed(seen), params.n_clusters, np.random.default_rng(seed))
        first = initial_snapshot(models=models, centroids=cents, prior_mean=prior.prior_mean,
                                 completion_tokens=prior.completion_tokens, latency_s=prior.latency_s,
                                 prior_strength=2.0, shrink_strength=5.0, created_at_ms=self.now)  # fmt: skip
        self.snapshots.save(1, 0, self.now, "initial", encode_snapshot(first))
        self.router.swap(first)
        self.cycle = LearningCycle(self.rows, self.snapshots, prior, params, np.random.default_rng(seed + 1),
                                   publish=self.router.swap, learner_log=self.log)  # fmt: skip

    def _id(self) -> str:
        """A UUIDv7 from the world's generator: which decisions tie-break into a sample is seeded too."""
        return uuid7(self.now, self._ids.bytes(10))

    def add_topic(self, topic: Topic, weight: float) -> None:
        self.topics[topic.name] = topic
        self.mix[topic.name] = weight

    def _embed(self, prompts: list[str]) -> np.ndarray:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            self._cache.update(zip(missing, self.embedder.embed(missing)))
        return np.stack([self._cache[p] for p in prompts])

    def live_cost_weight(self) -> float:
        """The weight the service would use for the world's requests on the live view
        (``ChatService.route``): the learned one of the tenant's or the policy's budget, else the configured one."""
        key = tenant_budget_key(self.tenant) if self.tenant else "auto"
        return self.router.view.cost_weight(key, self.cost_weight)

    def route(self, embs: np.ndarray, tokens_in: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The service's decision for a batch: ``decide`` per prompt on the live view.

        embs: (n, d); tokens_in, rows: (n,). Returns clusters, margins, arms: (n,) each.
        """
        view, weight = self.router.view, self.live_cost_weight()
        choices = [decide(view, e, float(t), weight, 0.0, None, int(r)) for e, t, r in zip(embs, tokens_in, rows)]
        return (np.array([c.cluster for c in choices], dtype=np.int64), np.array([c.margin for c in choices]),
                np.array([c.arm for c in choices], dtype=np.int64))  # fmt: skip

    def traffic(self, n: int) -> list[Served]:
        """``n`` requests routed under the live snapshot, with their feedback stored."""
        names = list(self.mix)
        p = np.array([self.mix[t] for t in names])
        picked = self.rng.choice(len(names), size=n, p=p / p.sum())
        prompts = [make_prompt(self.topics[names[i]], self.rng) for i in picked]
        embs = self._embed(prompts)
        tokens_in = np.array([request_tokens([q]) for q in prompts])
        clusters, margins, arms = self.route(embs, tokens_in, self.rng.integers(1 << 30, size=n))
        snap = self.router.view.snapshot
        thumbs = self.rng.random(n)
        events, served = [], []
        for i in range(n):
            topic, model = names[picked[i]], self.pool[arms[i]]
            _, tokens_out = answer(model, prompts[i])
            cost = float(tokens_in[i] * model.price_in_per_mtok + tokens_out * model.price_out_per_mtok) / 1e6
            q = self.quality(model, topic)
            did = self._id()
            events.append(DecisionMade(
                event_id=self._id(), decision_id=did, ts_ms=self.now, snapshot_version=snap.version,
                clustering=snap.clustering, cluster=int(clusters[i]), margin=float(margins[i]), arm=model.name,
                tenant=self.tenant,
                model=model.name, prompt_tokens=int(tokens_in[i]), completion_tokens=tokens_out, cost_usd=cost,
                latency_ms=1000.0 * model.latency_s, embedding=embs[i].astype("<f4").tobytes(),
            ))  # fmt: skip
            events.append(FeedbackGiven(event_id=self._id(), decision_id=did, ts_ms=self.now,
                                        reward=float(thumbs[i] < q)))  # fmt: skip
            served.append(Served(self.cycles, topic, int(clusters[i]), model.name, q, cost))
        self.rows.insert(events)
        return served

    def step(self, n: int) -> list[Served]:
        """One cycle: traffic, then a learning cycle a second later."""
        served = self.traffic(n)
        self.now += 1000
        self.cycle.run()
        self.cycles += 1
        return served

    def run(self, cycles: int, n: int) -> list[Served]:
        return [s for _ in range(cycles) for s in self.step(n)]
