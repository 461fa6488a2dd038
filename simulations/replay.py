"""Replay of real outcomes through the product itself: an offline deployment on a simulated clock.

The protocol (issue 5, issue 10): shuffle the prompts with the seed; for each prompt in turn,
embed its text, route it with ``learner.routing.decide`` on the live view (the service's own
decision), then reveal *only the chosen model's* score and cost (bandit feedback). What was
revealed is recorded as the service records it (a ``DecisionMade`` with the bill, a
``FeedbackGiven`` with the score) into an in-memory row store, and the learner's own
``LearningCycle`` runs every ``learn_every`` prompts (one prompt a second on the simulated
clock, so ``[learner] grace_s`` holds back the last prompts as it does live). Each new
snapshot becomes the live view, as ``Router.swap`` does.

The replay knows only what a deployment knows: the settings of ``--config`` (levers, cost
weight, the ``[[models]]`` price sheet and tiers), an optional ``prices`` object in the outcome
file, and the outcome of what it chose. A model without a price costs what its own bills said.
The ``task`` field is never read here.
"""

from __future__ import annotations

from typing import Callable

import msgspec
import numpy as np

from feedback.events import DecisionMade, FeedbackGiven
from feedback.memory import MemoryRowStore, MemorySnapshotStore
from learner.budget import BudgetTarget
from learner.cascade import CASCADE_POLICY, Cascade, CascadeArm, cascade_arms, extend_prior, gate_evidence, pool_names
from learner.costs import request_tokens
from learner.cycle import LearnerParams, LearningCycle, PoolPrior
from learner.routing import Prices, RouteChoice, RoutingParams, View, decide
from learner.snapshot import encode_snapshot, initial_snapshot
from simulations.judge import SimulatedJudge
from simulations.outcomes import Outcomes

__all__ = ["ConfiguredModel", "Deployment", "OfflineDeployment", "ReplayConfig", "ReplayRun", "replay"]


class ConfiguredModel(msgspec.Struct, frozen=True):
    """What ``[[models]]`` says of one model."""

    name: str
    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0
    tier: float = 0.6
    expected_completion_tokens: float = 300.0
    expected_latency_s: float = 1.0


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    """A deployment's configuration as the offline runs need it (built from the settings by the
    composition root, ``service.runtime.deployment``): the same levers, the same defaults."""

    learner: LearnerParams
    routing: RoutingParams
    prior_strength: float
    shrink_strength: float
    cost_weight: float
    latency_weight: float
    models: tuple[ConfiguredModel, ...] = ()
    default: ConfiguredModel = ConfiguredModel("")
    embedder: str = "wordllama"
    embedding_dim: int = 256
    language_detector: str = "none"  # [language]: the routing context, as the service computes it
    language_weight: float = 0.0
    pool_prices: Prices | None = None  # the served pool's price sheet (configured or simulated)
    cascades: tuple[Cascade, ...] = ()  # [[cascades]]: arms of their own (learner/cascade.py)
    settings: dict[str, object] = {}  # what the report prints: the settings this ran with

    def model(self, name: str) -> ConfiguredModel | None:
        return next((m for m in self.models if m.name == name), None)


class ReplayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the prompts are streamed (the router's levers are the deployment's settings)."""

    cost_weight: float | None = None  # None: the deployment's
    budget_usd: float | None = None  # target mean cost per request: the learner paces the weight
    passes: int = 1
    learn_every: int = 10  # prompts per learning cycle (the live cycle interval x request rate)
    seed: int = 0
    # the simulated judge a cascade's gate reads (it sees only the cheap model's outcome)
    judge_noise: float = 0.3
    judge_bias: float = 0.0


class ReplayRun(msgspec.Struct, frozen=True):
    """What happened to each routed prompt, in routing order: all arrays (T,)."""

    rows: np.ndarray  # index into the outcomes
    arms: np.ndarray  # index into the outcomes' models
    clusters: np.ndarray
    propensities: np.ndarray
    rewards: np.ndarray
    costs: np.ndarray
    cost_weight: float  # the final cost weight (paced when a budget is set)
    n_clusters: int
    cheap: np.ndarray | None = None  # (T,) a cascade's cheap model (outcome column) where one was chosen, else -1
    escalated: np.ndarray | None = None  # (T,) bool: the cascade's gate rejected the cheap answer

    def revealed(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, columns) of every outcome the router was shown: the answering model's, and a
        cascade's cheap attempt."""
        if self.cheap is None:
            return self.rows, self.arms
        tried = self.cheap >= 0
        return np.concatenate([self.rows, self.rows[tried]]), np.concatenate([self.arms, self.cheap[tried]])

    @property
    def mean_quality(self) -> float:
        return float(self.rewards.mean())

    @property
    def mean_cost(self) -> float:
        return float(self.costs.mean())


def prices_for(models: tuple[str, ...], deployment: Deployment, file_prices: dict[str, tuple[float, float]]) -> Prices:
    """The price sheet a deployment would have: ``[[models]]`` first, then the outcome file's."""
    p_in, p_out = [], []
    for name in models:
        conf = deployment.model(name)
        price = (conf.price_in_per_mtok, conf.price_out_per_mtok) if conf else file_prices.get(name, (0.0, 0.0))
        p_in.append(float(price[0]))
        p_out.append(float(price[1]))
    return Prices(models, tuple(p_in), tuple(p_out))


class OfflineDeployment:
    """Turnout's router and learner on an in-memory store and a simulated clock.

    ``route`` is the service's decision (``learner.routing.decide`` on the live view, one row
    draw per request from ``router.seed + 1`` as ``ChatService`` draws it); ``record`` stores
    what the service's recorder would; ``learn`` is one ``LearningCycle.run``.
    """

    def __init__(self, models: tuple[str, ...], dim: int, deployment: Deployment, prices: Prices,
                 cost_weight: float | None = None, budget_usd: float | None = None) -> None:  # fmt: skip
        d = self.deployment = deployment
        self.pool = models  # the models that answer; ``models`` is the routing axis (with the cascades)
        self.cascade_specs = tuple(c for c in d.cascades if c.cheap in models and c.strong in models)
        self.models = pool_names(models, self.cascade_specs)
        self.cascades: tuple[CascadeArm, ...] = cascade_arms(self.models, self.cascade_specs)
        self.sheet = prices  # the pool's price sheet, as configured
        self.prices = prices = _with_arms(prices, self.models)
        self.cost_weight = d.cost_weight if cost_weight is None else cost_weight
        conf = [d.model(m) or msgspec.structs.replace(d.default, name=m) for m in models]
        prior = extend_prior(PoolPrior(
            models=models,
            prior_mean=tuple(c.tier for c in conf),
            completion_tokens=tuple(c.expected_completion_tokens for c in conf),
            latency_s=tuple(c.expected_latency_s for c in conf),
        ), self.cascade_specs)  # fmt: skip
        params = d.learner
        if budget_usd is not None:
            params = msgspec.structs.replace(params, budgets=(BudgetTarget("auto", budget_usd, self.cost_weight),))
        self.now_ms = 0
        self.rows = MemoryRowStore(clock_ms=lambda: self.now_ms)
        self.snapshots = MemorySnapshotStore()
        seed = d.routing.seed
        self.cycle = LearningCycle(self.rows, self.snapshots, prior, params, np.random.default_rng(seed + 2))
        snap = initial_snapshot(
            models=self.models, centroids=np.full((1, dim), 1.0 / np.sqrt(dim), dtype=np.float32),
            prior_mean=prior.prior_mean, completion_tokens=prior.completion_tokens, latency_s=prior.latency_s,
            prior_strength=d.prior_strength, shrink_strength=d.shrink_strength, created_at_ms=0,
        )  # fmt: skip
        self.snapshots.save(snap.version, snap.parent, 0, snap.reason, encode_snapshot(snap))
        self.view = View(snap, prices, d.routing, self.cascades)
        self._rows = np.random.default_rng(seed + 1)
        self.routed = 0

    @property
    def current_weight(self) -> float:
        return self.view.cost_weight("auto", self.cost_weight)

    def cascade_of(self, arm: int) -> int:
        """The index of the cascade routed as column ``arm``, or -1 (a model)."""
        return next((i for i, a in enumerate(self.cascades) if a.column == arm), -1)

    def route(self, embedding: np.ndarray, prompt_tokens: float, allowed: np.ndarray | None) -> RouteChoice:
        """allowed: (pool,) or (models,) bool, or None; a cascade is allowed where both its models are."""
        row = int(self._rows.integers(1 << 30))
        if allowed is not None and len(allowed) < len(self.models):
            allowed = np.concatenate([allowed, [bool(allowed[a.cheap] and allowed[a.strong]) for a in self.cascades]])
        return decide(self.view, embedding, prompt_tokens, self.current_weight, self.deployment.latency_weight,
                      allowed, row)  # fmt: skip

    def record(self, choice: RouteChoice, embedding: np.ndarray, prompt_tokens: int, reward: float | None,
               cost_usd: float, judge: float | None = None) -> None:  # fmt: skip
        """The decision (with its bill) and, if any, its feedback, as the service records them
        (``judge``: a judge's grade of the answer, feedback of kind "judge")."""
        t = self.routed
        self.now_ms = t * 1000
        arm = choice.arm
        name = self.models[arm]
        did = f"{t:010d}"
        events: list = [DecisionMade(
            event_id=f"d{did}", decision_id=did, ts_ms=self.now_ms, snapshot_version=self.view.version,
            clustering=self.view.snapshot.clustering, cluster=choice.cluster, margin=choice.margin, arm=name,
            propensity=choice.propensity, model=name, prompt_tokens=prompt_tokens,
            completion_tokens=self._completion(arm, cost_usd, prompt_tokens), cost_usd=float(cost_usd),
            embedding=np.ascontiguousarray(embedding, dtype="<f4").tobytes(),
        )]  # fmt: skip
        if reward is not None:
            events.append(FeedbackGiven(event_id=f"f{did}", decision_id=did, ts_ms=self.now_ms, reward=float(reward)))
        if judge is not None:
            events.append(FeedbackGiven(event_id=f"j{did}", decision_id=did, ts_ms=self.now_ms, reward=float(judge),
                                        kind="judge"))  # fmt: skip
        self.rows.insert(events)
        self.routed += 1

    def _completion(self, arm: int, cost_usd: float, prompt_tokens: int) -> int:
        # the provider's usage report: the completion tokens the bill implies at the configured prices
        p_out = self.prices.price_out_per_mtok[arm]
        if p_out <= 0:
            return 0
        rest = cost_usd * 1e6 - prompt_tokens * self.prices.price_in_per_mtok[arm]
        return int(round(max(rest, 0.0) / p_out))

    def record_cascade(self, choice: RouteChoice, embedding: np.ndarray, prompt_tokens: int, reward: float | None,
                       attempts: tuple[tuple[int, float], ...], verdict: str, gate: str) -> None:  # fmt: skip
        """A cascade's request as the service records it: the request's decision (``model`` the
        cascade, the bill of every attempt, ``escalated``) with its feedback on the final answer,
        and each attempt's own record (policy "cascade"; ``attempts``: (pool column, bill) in
        order), the gate's verdict on the cheap one as judge-kind evidence about it."""
        t = self.routed
        self.now_ms = t * 1000
        did = f"{t:010d}"
        name = self.models[choice.arm]
        emb = np.ascontiguousarray(embedding, dtype="<f4").tobytes()
        common = dict(ts_ms=self.now_ms, snapshot_version=self.view.version, clustering=self.view.snapshot.clustering,
                      cluster=choice.cluster, margin=choice.margin, prompt_tokens=prompt_tokens, gate=verdict)
        last, last_cost = attempts[-1]  # the answer the client got: its usage is the request's, as the service logs it
        events: list = [DecisionMade(
            event_id=f"d{did}", decision_id=did, arm=name, propensity=choice.propensity, model=name,
            completion_tokens=self._completion(last, last_cost, prompt_tokens), cost_usd=float(sum(c for _, c in attempts)),
            escalated=len(attempts) > 1, embedding=emb, **common)]  # fmt: skip
        for n, (j, cost) in enumerate(attempts):
            events.append(DecisionMade(
                event_id=f"d{did}.{n}", decision_id=f"{did}.{n}", policy=CASCADE_POLICY, arm=name, propensity=1.0,
                model=self.models[j], completion_tokens=self._completion(j, cost, prompt_tokens), cost_usd=float(cost),
                parent_decision_id=did, embedding=emb, **common))  # fmt: skip
        if reward is not None:
            events.append(FeedbackGiven(event_id=f"f{did}", decision_id=did, ts_ms=self.now_ms, reward=float(reward)))
        evidence = gate_evidence(verdict != "pass", gate)
        if evidence is not None:
            events.append(FeedbackGiven(event_id=f"f{did}.0", decision_id=f"{did}.0", ts_ms=self.now_ms,
                                        reward=evidence, kind="judge"))  # fmt: skip
        self.rows.insert(events)
        self.routed += 1

    def set_prices(self, prices: Prices) -> None:
        """A new price sheet (a provider changed its prices): the live view is rebuilt on it."""
        self.sheet = prices
        self.prices = _with_arms(prices, self.models)
        self.view = View(self.view.snapshot, self.prices, self.deployment.routing, self.cascades)

    def learn(self) -> None:
        """One learning cycle at the next simulated second; a new snapshot becomes the live view."""
        self.now_ms = self.routed * 1000
        snap = self.cycle.run()
        if snap.version != self.view.version:
            self.view = View(snap, self.prices, self.deployment.routing, self.cascades)


def _with_arms(prices: Prices, axis: tuple[str, ...]) -> Prices:
    """The price sheet on the routing axis: a cascade has no price of its own (learner/cascade.py)."""
    if prices.models == axis:
        return prices
    extra = len(axis) - len(prices.models)
    if prices.models != axis[: len(prices.models)]:
        raise ValueError(f"price sheet for {prices.models}, routing axis {axis}")
    return Prices(axis, prices.price_in_per_mtok + (0.0,) * extra, prices.price_out_per_mtok + (0.0,) * extra)


def _stream(sim: OfflineDeployment, outcomes: Outcomes, embeddings: np.ndarray, order: np.ndarray, learn_every: int,
            progress: Callable[[int], None] | None, out: dict[str, np.ndarray] | None,
            judge: tuple[SimulatedJudge, np.random.Generator]) -> None:  # fmt: skip
    col = [outcomes.models.index(m) if m in outcomes.models else -1 for m in sim.pool]
    tokens = np.array([request_tokens([p]) for p in outcomes.prompts], dtype=np.int64)
    scores, billed = outcomes.scores, outcomes.costs
    avail = np.zeros((len(outcomes), len(sim.pool)), dtype=bool)
    for j, c in enumerate(col):
        if c >= 0:
            avail[:, j] = outcomes.available[:, c]
    for t, i in enumerate(order):
        allowed = None if avail[i].all() else avail[i]
        choice = sim.route(embeddings[i], int(tokens[i]), allowed)
        k = sim.cascade_of(choice.arm)
        cheap = -1
        if k < 0:
            c = col[choice.arm]
            reward, cost = float(scores[i, c]), float(billed[i, c])
            sim.record(choice, embeddings[i], int(tokens[i]), reward, cost)
            escalated = False
        else:  # the cheap model answers; the gate reads its outcome through the judge
            arm, spec = sim.cascades[k], sim.cascade_specs[k]
            cheap = col[arm.cheap]
            grade = judge[0].grade(float(scores[i, cheap]), judge[1])
            escalated = grade < spec.threshold
            attempts = ((arm.cheap, float(billed[i, cheap])),)
            if escalated:  # the strong model answers too: both are billed
                attempts += ((arm.strong, float(billed[i, col[arm.strong]])),)
            c = col[attempts[-1][0]]
            reward, cost = float(scores[i, c]), sum(b for _, b in attempts)
            sim.record_cascade(choice, embeddings[i], int(tokens[i]), reward, attempts,
                               "judge" if escalated else "pass", "judge")  # fmt: skip
        if out is not None:
            out["arms"][t], out["clusters"][t], out["props"][t] = c, choice.cluster, choice.propensity
            out["rewards"][t], out["costs"][t] = reward, cost
            out["cheap"][t], out["escalated"][t] = cheap, escalated
        if sim.routed % learn_every == 0:
            sim.learn()
        if progress is not None and ((t + 1) % 256 == 0 or t + 1 == len(order)):
            progress(256 if (t + 1) % 256 == 0 else (t + 1) % 256)


def replay(
    outcomes: Outcomes,
    embeddings: np.ndarray,
    deployment: Deployment,
    config: ReplayConfig,
    warm: tuple[Outcomes, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayRun:
    """Route ``config.passes`` shuffled passes over the outcomes through an offline deployment.

    embeddings: (n, d) unit-norm float32, row i the embedding of ``outcomes.prompts[i]``.
    ``warm``: outcomes (and their embeddings) streamed first, the same way, with bandit
    feedback, and left out of the run: the deployment has served that traffic before.
    """
    cfg = config
    if cfg.passes < 1 or cfg.learn_every < 1:
        raise ValueError("passes and learn_every must be at least 1")
    d = msgspec.structs.replace(deployment, routing=msgspec.structs.replace(deployment.routing, seed=cfg.seed))
    file_prices = {**(warm[0].prices if warm else {}), **outcomes.prices}
    # the pool in the service's order: configured models first, as [[models]] lists them
    models = tuple(m.name for m in d.models if m.name in outcomes.models)
    models += tuple(m for m in outcomes.models if m not in models)
    sim = OfflineDeployment(models, embeddings.shape[1], d, prices_for(models, d, file_prices), cfg.cost_weight,
                            cfg.budget_usd)  # fmt: skip
    rng = np.random.default_rng(cfg.seed)
    judge = (SimulatedJudge(cfg.judge_noise, cfg.judge_bias), np.random.default_rng([cfg.seed, 13]))
    if warm is not None:
        w_out, w_emb = warm
        _stream(sim, w_out, w_emb, np.random.default_rng([cfg.seed, 4]).permutation(len(w_out)), cfg.learn_every,
                None, None, judge)  # fmt: skip
    order = np.concatenate([rng.permutation(len(outcomes)) for _ in range(cfg.passes)])
    total = len(order)
    out = {"arms": np.zeros(total, dtype=np.int64), "clusters": np.zeros(total, dtype=np.int64),
           "props": np.zeros(total), "rewards": np.zeros(total), "costs": np.zeros(total),
           "cheap": np.full(total, -1, dtype=np.int64), "escalated": np.zeros(total, dtype=bool)}  # fmt: skip
    _stream(sim, outcomes, embeddings, order, cfg.learn_every, progress, out, judge)
    return ReplayRun(order, out["arms"], out["clusters"], out["props"], out["rewards"], out["costs"],
                     float(sim.current_weight), len(sim.view.centroids), out["cheap"], out["escalated"])  # fmt: skip
