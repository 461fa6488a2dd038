"""The policies ``turnout simulate`` compares with Turnout's, behind one small interface.

Turnout itself (and plain Thompson sampling, which is Turnout with one cluster) run through
``simulations.online.OnlineRouter``, the core's policy. The others are the usual yardsticks:
a linear contextual Thompson sampler (per-model Bayesian linear regression on a projection of
the embedding; same cost handling as Turnout), river's LinUCB, epsilon-greedy and UCB (learning
the utility ``reward - cost_weight * cost`` directly), fixed choices and the oracle.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from learner.costs import completion_cost, estimate_costs
from simulations.online import OnlineRouter

__all__ = ["Fixed", "LinearThompson", "Oracle", "Policy", "RiverPolicy", "Turnout", "Uniform", "project"]


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
    """Turnout's contextual Thompson sampling (``OnlineRouter``), as configured."""

    def __init__(self, name: str, router: OnlineRouter, rng: np.random.Generator) -> None:
        self.name = name
        self.router = router
        self._rng = rng

    def decide(self, t, emb, tokens, allowed, per_token):
        if not np.array_equal(per_token, self.router.per_token):
            self.router.set_prices(per_token)
        arm, _, c = self.router.decide(emb, tokens, allowed, int(self._rng.integers(self.router.cfg.thompson_samples)))
        return arm, c

    def learn(self, t, emb, arm, cluster, reward, cost, tokens):
        self.router.record(emb, arm, cluster, reward, cost, tokens)


class _CostModel:
    """Known prompt prices plus a learned completion cost per model (``learner.costs``, one cluster)."""

    def __init__(self, m: int) -> None:
        self.resid = np.zeros((1, m))
        self.count = np.zeros((1, m))

    def costs(self, tokens: float, per_token: np.ndarray) -> np.ndarray:
        return estimate_costs(tokens, per_token, completion_cost(per_token, self.resid, self.count)[0])

    def bill(self, arm: int, cost: float, tokens: float, per_token: np.ndarray) -> None:
        self.resid[0, arm] += cost - tokens * per_token[arm]
        self.count[0, arm] += 1


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
