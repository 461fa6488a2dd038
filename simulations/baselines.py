"""The policies ``turnout simulate`` and the replay benchmarks compare with Turnout's, behind one interface.

Turnout itself (and plain Thompson sampling, which is Turnout with one cluster) run as an
offline deployment (``simulations.replay.OfflineDeployment``): the service's decision and the
learner's own cycles. The others are the usual yardsticks: a plain per-cluster Beta Thompson
sampler over fixed k-means clusters, a linear contextual Thompson sampler (per-model Bayesian
linear regression on a projection of the embedding), river's LinUCB, epsilon-greedy and UCB
(learning the utility ``reward - cost_weight * cost`` directly), fixed choices and the oracle;
and, as a ceiling rather than a rival, ``offline_knn``: a router trained offline on every label
of another file (full information, no exploration), routing each prompt by its nearest
neighbours there.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from learner.clusters import assign, kmeans
from learner.costs import request_tokens
from simulations.outcomes import Outcomes
from simulations.replay import Deployment, OfflineDeployment, ReplayRun

__all__ = [
    "Fixed", "LinearThompson", "Oracle", "PlainThompson", "Policy", "RiverPolicy", "Turnout", "Uniform", "project",
    "offline_knn", "plain_baseline", "replay_policy",
]  # fmt: skip


class Policy(Protocol):
    name: str

    def decide(self, t: int, emb: np.ndarray, tokens: float, allowed: np.ndarray, per_token: np.ndarray) -> tuple[int, int]:
        """(arm, cluster) for step t; per_token: (m,) the price sheet in force."""
        ...

    def learn(self, t: int, emb: np.ndarray, arm: int, cluster: int, reward: float | None, cost: float,
              tokens: float) -> None: ...  # fmt: skip


def project(dim: int, out: int, seed: int) -> np.ndarray:
    """A fixed Gaussian random projection (out, dim), rows scaled so projected unit vectors stay O(1)."""
    return np.random.default_rng([seed, 77]).standard_normal((out, dim)) / np.sqrt(out)


class Turnout:
    """Turnout as it ships: an offline deployment of the service's router and learner.

    ``prices(t)`` is the price sheet configured at step t (USD per million tokens, in and out);
    a change swaps it in, as a restart with a new ``[[models]]`` table would.
    """

    def __init__(self, name: str, models: tuple[str, ...], dim: int, deployment: Deployment, prices,
                 learn_every: int = 10) -> None:  # fmt: skip
        self.name = name
        self._prices = prices
        self._learn_every = learn_every
        self.sim = OfflineDeployment(models, dim, deployment, prices(0))
        self._choice = None
        self._tokens = 0

    def decide(self, t, emb, tokens, allowed, per_token):
        sheet = self._prices(t)
        if sheet != self.sim.sheet:
            self.sim.set_prices(sheet)
        self._tokens = int(tokens) + 4  # the request's tokens as the service counts them (one message)
        self._choice = self.sim.route(emb, self._tokens, None if allowed.all() else allowed)
        return self._choice.arm, self._choice.cluster

    def learn(self, t, emb, arm, cluster, reward, cost, tokens):
        self.sim.record(self._choice, emb, self._tokens, reward, cost)
        if self.sim.routed % self._learn_every == 0:
            self.sim.learn()


class PlainThompson:
    """The plain baseline: Beta(1, 1) Thompson sampling per (cluster, model) over ``k`` fixed
    k-means clusters of the embeddings, each model's cost the running mean of its own bills.

    ``centroids`` come from k-means over the prompts' embeddings (text only, no outcome), the
    usual offline clustering step of a cluster-based router.
    """

    def __init__(self, name: str, centroids: np.ndarray, m: int, cost_weight: float, rng: np.random.Generator) -> None:
        self.name = name
        self._cents = np.ascontiguousarray(centroids, dtype=np.float32)
        self._a = np.ones((len(centroids), m))
        self._b = np.ones((len(centroids), m))
        self._bills = np.zeros(m)
        self._calls = np.zeros(m)
        self._w = cost_weight
        self._rng = rng

    def decide(self, t, emb, tokens, allowed, per_token):
        c, _ = assign(emb, self._cents)
        cost = np.divide(self._bills, self._calls, out=np.zeros_like(self._bills), where=self._calls > 0)
        u = self._rng.beta(self._a[c], self._b[c]) - self._w * cost
        return int(np.argmax(np.where(allowed, u, -np.inf))), c

    def learn(self, t, emb, arm, cluster, reward, cost, tokens):
        self._bills[arm] += cost
        self._calls[arm] += 1
        if reward is not None:
            self._a[cluster, arm] += reward
            self._b[cluster, arm] += 1.0 - reward


def replay_policy(outcomes: Outcomes, embeddings: np.ndarray, policy: Policy, seed: int, weight: float) -> ReplayRun:
    """One shuffled pass (the replay's order for ``seed``) of a baseline, with bandit feedback."""
    order = np.random.default_rng(seed).permutation(len(outcomes))
    n = len(order)
    arms, clusters = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    rewards, costs = np.zeros(n), np.zeros(n)
    zero = np.zeros(len(outcomes.models))
    for t, i in enumerate(order):
        tokens = request_tokens([outcomes.prompts[i]])
        arm, c = policy.decide(t, embeddings[i], tokens, outcomes.available[i], zero)
        arms[t], clusters[t] = arm, c
        rewards[t], costs[t] = outcomes.scores[i, arm], outcomes.costs[i, arm]
        policy.learn(t, embeddings[i], arm, c, rewards[t], costs[t], tokens)
    return ReplayRun(order, arms, clusters, np.ones(n), rewards, costs, weight, int(clusters.max()) + 1)


def plain_baseline(outcomes: Outcomes, embeddings: np.ndarray, seed: int, weight: float, k: int = 16) -> ReplayRun:
    """The plain baseline of issue 10 on an outcome file: 16 k-means clusters, Beta Thompson sampling."""
    cents = kmeans(embeddings, min(k, len(embeddings)), np.random.default_rng([seed, 5]))
    policy = PlainThompson("plain", cents, len(outcomes.models), weight, np.random.default_rng([seed, 6]))
    return replay_policy(outcomes, embeddings, policy, seed, weight)


def offline_knn(train: Outcomes, train_emb: np.ndarray, test: Outcomes, test_emb: np.ndarray, weight: float,
                k: int) -> ReplayRun:  # fmt: skip
    """Each prompt of ``test`` routed to the model of best mean utility ``score - weight * cost``
    over its ``k`` nearest prompts of ``train`` (cosine of the embeddings), every model's score
    and bill there known: the router a team could train offline with every label, fixed while it
    routes. Prompts in file order; a model unavailable for a prompt is never chosen."""
    if train.models != test.models:
        raise ValueError(f"the files' models differ: {train.models} and {test.models}")
    k = max(1, min(k, len(train)))
    near = np.argpartition(-(test_emb @ train_emb.T), k - 1, axis=1)[:, :k]  # (n_test, k)
    known = train.available[near]  # (n_test, k, m)
    counts = np.maximum(known.sum(axis=1), 1)
    utility = (np.where(known, np.nan_to_num(train.scores[near] - weight * train.costs[near]), 0.0).sum(axis=1)
               / counts)  # fmt: skip
    utility[~test.available | (known.sum(axis=1) == 0)] = -np.inf
    rows = np.arange(len(test))
    arms = np.where(np.isfinite(utility.max(axis=1)), utility.argmax(axis=1), test.available.argmax(axis=1))
    n = len(rows)
    return ReplayRun(rows, arms, np.zeros(n, dtype=np.int64), np.ones(n), test.scores[rows, arms],
                     test.costs[rows, arms], weight, 1)  # fmt: skip


class _CostModel:
    """Each model's cost: the running mean of its own bills (0 before its first)."""

    def __init__(self, m: int) -> None:
        self.total = np.zeros(m)
        self.count = np.zeros(m)

    def costs(self, tokens: float, per_token: np.ndarray) -> np.ndarray:
        return np.divide(self.total, self.count, out=np.zeros_like(self.total), where=self.count > 0)

    def bill(self, arm: int, cost: float, tokens: float, per_token: np.ndarray) -> None:
        self.total[arm] += cost
        self.count[arm] += 1


class LinearThompson:
    """Linear Thompson sampling: quality ~ theta_a . [1, P x], Gaussian posterior per model.

    References: Agrawal & Goyal, Thompson Sampling for Contextual Bandits with Linear Payoffs (2013).
    """

    def __init__(self, name: str, m: int, proj: np.ndarray, cost_weight: float, rng: np.random.Generator,
                 ridge: float = 1.0, scale: float = 0.25) -> None:  # fmt: skip
        self.name = name
        d = proj.shape[0] + 1
        self._proj = proj
        self._a = np.stack([np.eye(d) * ridge for _ in range(m)])
        self._b = np.zeros((m, d))
        self._b[:, 0] = 0.6 * ridge  # prior mean quality 0.6 on the bias feature
        self._w = cost_weight
        self._scale = scale
        self._rng = rng
        self._cost = _CostModel(m)
        self._per_token = np.zeros(m)

    def _x(self, emb: np.ndarray) -> np.ndarray:
        return np.concatenate([[1.0], self._proj @ emb])

    def decide(self, t, emb, tokens, allowed, per_token):
        self._per_token = per_token
        x = self._x(emb)
        draws = np.full(len(allowed), -np.inf)
        for j in np.flatnonzero(allowed):
            cov = np.linalg.inv(self._a[j])
            mean = cov @ self._b[j]
            theta = self._rng.multivariate_normal(mean, self._scale**2 * cov, method="cholesky")
            draws[j] = theta @ x
        return int(np.argmax(draws - self._w * self._cost.costs(tokens, per_token))), 0

    def learn(self, t, emb, arm, cluster, reward, cost, tokens):
        self._cost.bill(arm, cost, tokens, self._per_token)
        if reward is not None:
            x = self._x(emb)
            self._a[arm] += np.outer(x, x)
            self._b[arm] += reward * x


class RiverPolicy:
    """A river bandit policy learning the utility ``reward - cost_weight * cost`` of each model."""

    def __init__(self, name: str, policy, proj: np.ndarray | None, cost_weight: float) -> None:
        self.name = name
        self._policy = policy
        self._proj = proj
        self._w = cost_weight

    def _ctx(self, emb: np.ndarray) -> dict:
        z = self._proj @ emb
        return {f"z{i}": float(v) for i, v in enumerate(z)}

    def decide(self, t, emb, tokens, allowed, per_token):
        arms = [int(j) for j in np.flatnonzero(allowed)]
        if self._proj is None:
            return int(self._policy.pull(arms)), 0
        return int(self._policy.pull(arms, context=self._ctx(emb))), 0

    def learn(self, t, emb, arm, cluster, reward, cost, tokens):
        if reward is None:
            return
        utility = reward - self._w * cost
        if self._proj is None:
            self._policy.update(arm, utility)
        else:
            self._policy.update(arm, self._ctx(emb), utility)


class Fixed:
    """Always the same model (the best single one in hindsight, the cheapest, the dearest), when allowed."""

    def __init__(self, name: str, order: np.ndarray) -> None:
        self.name = name
        self._order = order  # models by preference

    def decide(self, t, emb, tokens, allowed, per_token):
        for j in self._order:
            if allowed[j]:
                return int(j), 0
        raise ValueError("no model allowed")

    def learn(self, *args) -> None:
        return None


class Uniform:
    def __init__(self, name: str, rng: np.random.Generator) -> None:
        self.name = name
        self._rng = rng

    def decide(self, t, emb, tokens, allowed, per_token):
        return int(self._rng.choice(np.flatnonzero(allowed))), 0

    def learn(self, *args) -> None:
        return None


class Oracle:
    """The best expected utility for each prompt, knowing every model's quality on its topic."""

    def __init__(self, name: str, utility: np.ndarray) -> None:
        self.name = name
        self._best = np.argmax(utility, axis=1)  # utility: (T, m), -inf where unavailable

    def decide(self, t, emb, tokens, allowed, per_token):
        return int(self._best[t]), 0

    def learn(self, *args) -> None:
        return None
