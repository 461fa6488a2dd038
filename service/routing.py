"""The request path's view of a snapshot, compiled once per swap, and the routing decision.

``Router.swap`` validates a snapshot, draws its posterior sample matrix (seeded by the
snapshot version, so every replica holds the same matrix and logs the same propensities)
and replaces the view with one assignment. ``decide`` reads one view and never blocks.
"""

from __future__ import annotations

import logging
import threading

import msgspec
import numpy as np

from learner.budget import cap_exploration
from learner.clusters import assign
from learner.policy import choose, draw_samples, expected_cost_usd, posterior
from learner.snapshot import Snapshot, SnapshotError, centroid_array, validate

__all__ = ["Pricing", "RouteChoice", "Router", "RouterView"]

log = logging.getLogger("turnout.router")


class Pricing(msgspec.Struct, frozen=True):
    """Per-model prices, USD per million tokens, in the pool's order."""

    models: tuple[str, ...]
    price_in_per_mtok: tuple[float, ...]
    price_out_per_mtok: tuple[float, ...]


class RouteChoice(msgspec.Struct, frozen=True):
    cluster: int
    margin: float
    arm: int
    propensity: float
    propensities: tuple[float, ...]
    fallback_order: tuple[int, ...]  # the other allowed models, best posterior utility first
    expected_cost_usd: float


class RouterView:
    """Immutable arrays derived from one snapshot."""

    def __init__(self, snapshot: Snapshot, pricing: Pricing, n_samples: int, seed: int) -> None:
        if snapshot.models != pricing.models:
            raise SnapshotError(f"snapshot models {snapshot.models} differ from the pool {pricing.models}")
        self.snapshot = snapshot
        self.models = snapshot.models
        self.index = {m: i for i, m in enumerate(snapshot.models)}
        self.centroids = np.ascontiguousarray(centroid_array(snapshot))
        alpha, beta = posterior(
            np.array(snapshot.n), np.array(snapshot.reward_sum), np.array(snapshot.prior_mean),
            snapshot.prior_strength, snapshot.shrink_strength,
        )  # fmt: skip
        self.alpha, self.beta = alpha, beta
        self.mean = (alpha / (alpha + beta)).astype(np.float32)
        rng = np.random.default_rng([seed, snapshot.version])
        # the exploration budget excludes under-explored models from some rows: propensities stay
        # the exact share of rows won
        self.samples = cap_exploration(draw_samples(alpha, beta, n_samples, rng), snapshot.explore_share)
        self.cost_weights = {b.policy: b.cost_weight for b in snapshot.budgets}
        self.price_in = np.array(pricing.price_in_per_mtok, dtype=np.float64)
        self.price_out = np.array(pricing.price_out_per_mtok, dtype=np.float64)
        self.completion_tokens = np.array(snapshot.completion_tokens, dtype=np.float64)
        self.latency_s = np.array(snapshot.latency_s, dtype=np.float64)
        self.all_allowed = np.ones(len(self.models), dtype=bool)
        for arr in (self.centroids, self.samples, self.mean):
            arr.setflags(write=False)

    def cost_weight(self, policy: str, configured: float) -> float:
        """The weight the learner set for ``policy``'s budget, else the configured one."""
        return self.cost_weights.get(policy, configured)

    def costs(self, prompt_tokens: int) -> np.ndarray:
        return expected_cost_usd(prompt_tokens, self.completion_tokens, self.price_in, self.price_out)


class Router:
    def __init__(self, pricing: Pricing, n_samples: int, seed: int) -> None:
        self._pricing = pricing
        self._n_samples = n_samples
        self._seed = seed
        self._lock = threading.Lock()
        self._view: RouterView | None = None
        self.rejected = 0

    @property
    def view(self) -> RouterView:
        view = self._view
        if view is None:
            raise RuntimeError("no snapshot loaded")
        return view

    @property
    def pricing(self) -> Pricing:
        return self._pricing

    def swap(self, snapshot: Snapshot) -> bool:
        """Install ``snapshot`` if it validates and is newer; keep the last good one otherwise."""
        try:
            validate(snapshot)
            view = RouterView(snapshot, self._pricing, self._n_samples, self._seed)
        except (SnapshotError, ValueError) as exc:
            self.rejected += 1
            log.error("snapshot v%s rejected, keeping the live one: %s", snapshot.version, exc)
            return False
        with self._lock:
            current = self._view
            if current is not None and snapshot.version <= current.snapshot.version and snapshot.reason != "rollback":
                return False
            self._view = view
        log.info("snapshot v%d live (%s)", snapshot.version, snapshot.reason)
        return True

    def decide(
        self,
        embedding: np.ndarray,
        prompt_tokens: int,
        cost_weight: float,
        latency_weight: float,
        allowed: np.ndarray | None,
        row: int,
    ) -> RouteChoice:
        """Route one prompt. embedding: (d,) unit-norm; allowed: (m,) bool or None for all."""
        view = self.view
        cluster, margin = assign(embedding, view.centroids)
        costs = view.costs(prompt_tokens)
        penalty = cost_weight * costs + latency_weight * view.latency_s
        mask = view.all_allowed if allowed is None else allowed
        arm, props = choose(view.samples[cluster], penalty, mask, row % self._n_samples)
        utility = view.mean[cluster] - penalty
        order = tuple(int(j) for j in np.argsort(-utility) if j != arm and mask[j])
        return RouteChoice(
            cluster=cluster,
            margin=margin,
            arm=arm,
            propensity=float(props[arm]),
            propensities=tuple(float(p) for p in props),
            fallback_order=order,
            expected_cost_usd=float(costs[arm]),
        )
