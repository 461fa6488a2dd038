"""The routing decision: one pure core that the service, the replay, ``simulate`` and OPE call.

``View.build`` compiles a snapshot once (posteriors, cost estimates, exploration caps) and
``decide`` routes one prompt on a view. Nothing else in Turnout decides.

The policy is *satisficing* Thompson sampling over a fixed matrix of posterior draws: a
decision takes one uniformly drawn row of the cluster's draws, finds the best sampled utility
``quality - penalty`` in that row, and among the models within ``satisfice`` of it takes the
one of best posterior-mean utility. With ``satisfice`` 0 this is plain Thompson sampling; a
small tolerance stops paying for exploration between models whose difference is too small to
matter (Russo & Van Roy, Satisficing in time-sensitive bandit learning, 2022). Because the
policy *is* "a uniformly drawn row of this matrix", the logged propensity (the share of rows
the chosen model wins) is the exact probability of the decision.

Posteriors are Beta per (cluster, model), each cluster's shrunk toward the model's pooled
posterior with a strength estimated from the data (``learner.hierarchy``), so a wrong cluster
count is cheap: a cluster with little evidence routes as the pool does.

The exploration cap excludes an under-explored model from the rows beyond its share: a row
whose every allowed model is excluded falls back to the allowed models' own draws, so a cap
can never be escaped by a large penalty (it excludes, it does not subtract a finite number).

Costs are estimated per (cluster, model) from what the deployment knows: a model with a price
in configuration costs ``prompt_tokens * price_in + completion_tokens * price_out``, its
completion tokens learned per cluster from its own calls (the configured expectation as a
prior); a model without a price costs what its own bills in that cluster said. Cells with few
calls borrow from a two-way fit ``log value = cluster effect + model effect`` over the cells
that have calls, so a model never tried in a cluster is priced by how long answers there are.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
from scipy import stats

from learner.cascade import CascadeArm, escalation_rates
from learner.clusters import assign
from learner.hierarchy import hierarchical_posterior
from learner.snapshot import Snapshot, SnapshotError, centroid_array, usage_table

__all__ = [
    "Prices", "RouteChoice", "RoutingParams", "View", "credible_interval", "decide", "fit_cells", "snapshot_posterior",
]  # fmt: skip

_PSEUDO_CALLS = 2.0  # calls of prior weight in a (cluster, model) cost estimate


class Prices(msgspec.Struct, frozen=True):
    """Per-model prices in USD per million tokens, in the pool's order (0 and 0: not known)."""

    models: tuple[str, ...]
    price_in_per_mtok: tuple[float, ...]
    price_out_per_mtok: tuple[float, ...]

    @classmethod
    def unknown(cls, models: tuple[str, ...]) -> "Prices":
        return cls(models, (0.0,) * len(models), (0.0,) * len(models))


class RoutingParams(msgspec.Struct, frozen=True):
    """How decisions are drawn: ``[router]`` settings, the same in the service and the replay."""

    n_samples: int = 1024  # posterior draws per cluster and snapshot version
    seed: int = 0  # with the version and the cluster, seeds the draws: replicas agree
    satisfice: float = 0.06  # utility difference not worth exploring for (0: plain Thompson)


class RouteChoice(msgspec.Struct, frozen=True):
    cluster: int
    margin: float
    arm: int
    propensity: float
    propensities: tuple[float, ...]
    fallback_order: tuple[int, ...]  # the other allowed models, best posterior utility first
    expected_cost_usd: float


class _Wins(msgspec.Struct, frozen=True):
    """What a decision reads off the sample matrix for one (cluster, penalty, allowed): a pure
    function of the view and that key, so a view keeps it for the next request with the same key
    (the same cluster, prompt length and weights)."""

    by_mean: tuple[int, ...]  # the models, best posterior-mean utility first
    order: tuple[int, ...]  # the order ties are broken in (``by_mean``, or the pool's with satisfice 0)
    top: np.ndarray  # (S,) uint8: m - the place in ``order`` of each row's winner
    propensities: tuple[float, ...]  # (m,) the share of rows each model wins


_MEMO_ENTRIES = 4096  # keys a view remembers (about 1 KB each with 1024 samples); later ones are recomputed


def fit_cells(total: np.ndarray, count: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """Per-cell means shrunk toward a two-way fit: (k, m) sums and counts -> (k, m) estimates.

    The fit ``log mean[c, m] = a_c + b_m`` runs over cells with a positive mean, weighted by
    their counts, with the cluster effects centred; it fills cells without calls. A model with
    no calls anywhere takes ``prior`` (m,) times its cluster's effect (0 when ``prior`` is None).
    Each cell is then ``(2 * fit + total) / (2 + count)``.
    """
    total = np.asarray(total, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    k, m = total.shape
    seen = count > 0
    mean = np.divide(total, count, out=np.zeros_like(total), where=seen)
    obs = seen & (mean > 0)
    base = np.zeros(m) if prior is None else np.asarray(prior, dtype=np.float64)
    fit = np.broadcast_to(base, (k, m)).copy()
    if obs.any():
        y = np.log(np.where(obs, mean, 1.0))
        w = np.where(obs, count, 0.0)
        a, b = np.zeros(k), np.zeros(m)
        for _ in range(8):  # alternating weighted means (a few sweeps converge on these sizes)
            wb = w.sum(axis=0)
            b = np.divide((w * (y - a[:, None])).sum(axis=0), wb, out=np.zeros(m), where=wb > 0)
            wa = w.sum(axis=1)
            a = np.divide((w * (y - b[None, :])).sum(axis=1), wa, out=np.zeros(k), where=wa > 0)
        wa = w.sum(axis=1)
        a = np.where(wa > 0, a - np.sum(wa * a) / wa.sum(), 0.0)  # centred: the average cluster is 0
        known = w.sum(axis=0) > 0
        fit[:, known] = np.exp(a[:, None] + b[None, known])
        if prior is not None:  # a model never called: its configured level, times the cluster's effect
            fit[:, ~known] = base[None, ~known] * np.exp(a)[:, None]
    return (_PSEUDO_CALLS * fit + np.where(seen, total, 0.0)) / (_PSEUDO_CALLS + count)


def snapshot_posterior(snapshot: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    """The Beta posterior of every (cluster, model) of a snapshot: alpha, beta (k, m)."""
    return hierarchical_posterior(
        np.array(snapshot.n), np.array(snapshot.reward_sum), (), np.array(snapshot.prior_mean),
        snapshot.prior_strength, snapshot.shrink_strength,
    )  # fmt: skip


def credible_interval(alpha: np.ndarray, beta: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed credible interval of Beta(alpha, beta), elementwise."""
    tail = (1.0 - level) / 2.0
    return stats.beta.ppf(tail, alpha, beta), stats.beta.ppf(1.0 - tail, alpha, beta)


class View:
    """Immutable arrays derived from one snapshot and the price sheet: what a decision reads.

    Draws are made per cluster, seeded by (seed, version, cluster), when first needed
    (``draw_all`` makes them all at once, as the service does on a swap), so every replica
    and every offline run holds the same draws for a version. What a decision reads off a
    cluster's draws depends only on the penalty and the allowed models, so the view keeps it
    per (cluster, penalty, allowed) for the requests that come with the same key (the same
    cluster, prompt length and weights); a decision from it is the one computed afresh.
    """

    def __init__(
        self, snapshot: Snapshot, prices: Prices, params: RoutingParams, cascades: tuple[CascadeArm, ...] = ()
    ) -> None:
        if snapshot.models != prices.models:
            raise SnapshotError(f"snapshot models {snapshot.models} differ from the pool {prices.models}")
        self.snapshot = snapshot
        self.params = params
        self.models = snapshot.models
        m = len(self.models)
        self.centroids = np.ascontiguousarray(centroid_array(snapshot))
        k = len(self.centroids)
        alpha, beta = snapshot_posterior(snapshot)
        self.alpha, self.beta = alpha, beta
        self.mean = alpha / (alpha + beta)
        self.cost_weights = {b.policy: b.cost_weight for b in snapshot.budgets}
        self.price_in = np.array(prices.price_in_per_mtok, dtype=np.float64) / 1e6
        self.price_out = np.array(prices.price_out_per_mtok, dtype=np.float64) / 1e6
        self.priced = (self.price_in > 0) | (self.price_out > 0)
        calls = usage_table(snapshot, "calls")
        tokens = fit_cells(usage_table(snapshot, "completion_sum"), calls, np.array(snapshot.completion_tokens))
        bills = fit_cells(usage_table(snapshot, "bill_sum"), calls, None)
        # the part of the cost that does not depend on the prompt's length: (k, m) USD
        self.fixed_cost = np.where(self.priced[None, :], tokens * self.price_out[None, :], bills)
        self.per_prompt_token = np.where(self.priced, self.price_in, 0.0)
        # (k, m) USD per prompt token: the price sheet's, and a cascade's per cluster (it depends on
        # the cluster's escalation rate)
        per_token = np.broadcast_to(self.per_prompt_token, self.fixed_cost.shape).copy()
        self.cascades = cascades
        # (k, len(cascades)): cost(cascade) = cost(cheap) + escalation rate x cost(strong)
        self.escalation = escalation_rates(usage_table(snapshot, "escalations"), calls, cascades)
        for i, a in enumerate(cascades):
            esc = self.escalation[:, i]
            self.fixed_cost[:, a.column] = self.fixed_cost[:, a.cheap] + esc * self.fixed_cost[:, a.strong]
            per_token[:, a.column] = per_token[:, a.cheap] + esc * per_token[:, a.strong]
        self.latency_s = np.array(snapshot.latency_s, dtype=np.float64)
        s = params.n_samples
        share = snapshot.explore_share or (1.0,) * m
        # (m,) rows each model may win: model j keeps the first ceil(share_j * S) rows
        self.open_rows = tuple(math.ceil(x * s) for x in share)
        self.capped = any(n < s for n in self.open_rows)
        self._draws: list[np.ndarray | None] = [None] * k
        for arr in (self.centroids, self.mean, self.fixed_cost):
            arr.setflags(write=False)
        # what ``decide`` reads per request, as Python floats: m is small, and arithmetic on a few
        # floats is cheaper than a numpy call (the same IEEE operations, so the same values)
        self._mean_rows = self.mean.tolist()
        self._fixed_rows = self.fixed_cost.tolist()
        self._per_token = per_token.tolist()  # per cluster
        self._latency = self.latency_s.tolist()
        self._ranks: dict[tuple[int, ...], np.ndarray] = {}
        self._wins: dict[tuple, _Wins] = {}  # (cluster, penalty, allowed) -> the rows' winners

    @property
    def version(self) -> int:
        return self.snapshot.version

    def draws(self, cluster: int) -> np.ndarray:
        """The cluster's posterior draws of quality for this version: (S, m) float64 (a view)."""
        return self.columns(cluster).T

    def columns(self, cluster: int) -> np.ndarray:
        """The same draws model by model: (m, S), contiguous (what ``decide`` reduces over)."""
        got = self._draws[cluster]
        if got is None:
            rng = np.random.default_rng([self.params.seed, self.snapshot.version, cluster])
            drawn = rng.beta(
                np.broadcast_to(self.alpha[cluster], (self.params.n_samples, len(self.models))),
                np.broadcast_to(self.beta[cluster], (self.params.n_samples, len(self.models))),
            )
            got = np.ascontiguousarray(drawn.T)
            got.setflags(write=False)
            self._draws[cluster] = got
        return got

    def draw_all(self) -> None:
        for c in range(len(self.centroids)):
            self.draws(c)

    def rank_values(self, order: tuple[int, ...]) -> np.ndarray:
        """(m, 1) uint8 values of the models in ``order``: the first m, the next m - 1, ... the last 1
        (a row's maximum over its eligible models names its first in ``order``); made once per order."""
        got = self._ranks.get(order)
        if got is None:
            got = np.empty((len(order), 1), dtype=np.uint8 if len(order) < 256 else np.uint16)
            got[list(order), 0] = np.arange(len(order), 0, -1)
            got.setflags(write=False)
            self._ranks[order] = got
        return got

    def cost_weight(self, policy: str, configured: float) -> float:
        """The weight the learner set for ``policy``'s budget, else the configured one."""
        return self.cost_weights.get(policy, configured)

    def costs(self, cluster: int, prompt_tokens: float) -> np.ndarray:
        """Expected USD of answering with each model: (m,)."""
        return self.fixed_cost[cluster] + prompt_tokens * np.array(self._per_token[cluster])


def decide(
    view: View,
    embedding: np.ndarray,
    prompt_tokens: float,
    cost_weight: float,
    latency_weight: float,
    allowed: np.ndarray | None,
    row: int,
    placed: tuple[int, float] | None = None,
) -> RouteChoice:
    """Route one prompt on ``view``.

    embedding: (d,) unit-norm; allowed: (m,) bool with at least one True, or None for all;
    row: a uniform draw (any int; taken modulo the number of sample rows); ``placed``: the
    prompt's (cluster, margin) on this view when the caller already assigned it.
    """
    cluster, margin = assign(embedding, view.centroids) if placed is None else placed
    # per model, in Python floats (m is small): cost and penalty
    tokens, cw, lw = float(prompt_tokens), float(cost_weight), float(latency_weight)
    costs = [f + tokens * p for f, p in zip(view._fixed_rows[cluster], view._per_token[cluster])]
    penalty = tuple([cw * c + lw * t for c, t in zip(costs, view._latency)])
    ok = None if allowed is None else tuple(allowed.tolist())
    key = (cluster, penalty, ok)
    wins = view._wins.get(key)
    if wins is None:
        wins = _wins(view, cluster, penalty, ok)
        if len(view._wins) < _MEMO_ENTRIES:
            view._wins[key] = wins
    top = wins.top
    arm = wins.order[len(costs) - int(top[row % len(top)])]
    return RouteChoice(
        cluster=int(cluster),
        margin=float(margin),
        arm=arm,
        propensity=wins.propensities[arm],
        propensities=wins.propensities,
        fallback_order=tuple(j for j in wins.by_mean if j != arm and (ok is None or ok[j])),
        expected_cost_usd=costs[arm],
    )


def _wins(view: View, cluster: int, penalty: tuple[float, ...], ok: tuple[bool, ...] | None) -> _Wins:
    """Each sample row's winner among the allowed models and the share of rows each wins.

    penalty: (m,) utility subtracted from each model's draws; ok: (m,) allowed, or None for all.
    """
    m = len(penalty)
    mean_utility = [q - p for q, p in zip(view._mean_rows[cluster], penalty)]
    by_mean = tuple(sorted(range(m), key=mean_utility.__getitem__, reverse=True))  # stable: ties keep the pool's order
    utility = view.columns(cluster) - np.array(penalty)[:, None]  # (m, S): one sample row is one column
    if ok is not None:
        for j in range(m):
            if not ok[j]:
                utility[j] = -np.inf
    if view.capped:
        # model j may win rows [0, open_j); a row where every allowed model is capped out (the
        # rows from the largest allowed open_j on) falls back to the allowed models
        opens = view.open_rows
        last = max((opens[j] for j in range(m) if ok is None or ok[j]), default=0)
        for j in range(m):
            if opens[j] < last and (ok is None or ok[j]):
                utility[j, opens[j] : last] = -np.inf
    best = utility.max(axis=0)
    satisfice = view.params.satisfice
    # each row's winner: among the models within ``satisfice`` of the row's best (with 0, the
    # best itself), the first in order of posterior-mean utility (with 0, in the pool's order).
    # Ranked by value (first m, last 1), the winner is the row's maximum rank among those near
    # the best, a reduction over the models (m is small) rather than an argmax across rows
    near = utility >= best - satisfice if satisfice > 0 else utility >= best
    order = by_mean if satisfice > 0 else tuple(range(m))
    top = (near * view.rank_values(order)).max(axis=0)  # (S,): m - the winner's place (from 0) in ``order``
    won = np.bincount(top, minlength=m + 1).tolist()
    if won[0]:
        raise ValueError("a sample row with no eligible model (a NaN utility)")
    props = [0.0] * m
    for place, j in enumerate(order):
        props[j] = won[m - place] / len(top)
    return _Wins(by_mean, order, top, tuple(props))
