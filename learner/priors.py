"""Priors and posterior shaping for the Thompson policy: tiers from prices, tempering.

Both act on the inputs or outputs of ``learner.policy.posterior``; the policy itself is unchanged.
"""

from __future__ import annotations

import numpy as np

__all__ = ["temper", "tier_from_prices"]


def tier_from_prices(cost_usd: np.ndarray, low: float = 0.55, high: float = 0.8) -> np.ndarray:
    """Prior quality of each model from what it costs: (m,) -> (m,) in [low, high].

    Providers price by capability, so the dearest model starts at ``high`` and the cheapest at
    ``low``, linear in log price between. A weak prior (its strength is set elsewhere):
    evidence overrides it within a few dozen calls. A model with no price (<= 0) gets the middle.
    """
    cost = np.asarray(cost_usd, dtype=np.float64)
    out = np.full(len(cost), (low + high) / 2.0)
    known = cost > 0
    if known.sum() < 2:
        return out
    c = np.log(cost[known])
    span = c.max() - c.min()
    if span > 1e-12:
        out[known] = low + (high - low) * (c - c.min()) / span
    return out


def temper(alpha: np.ndarray, beta: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale the concentration of Beta posteriors by ``factor`` (> 0), keeping their means.

    factor > 1 narrows every posterior (less exploration), < 1 widens it. Chapelle & Li (2011)
    found narrowed posteriors (their "scaled" Thompson sampling) to do better on short horizons.
    References: Chapelle & Li, An Empirical Evaluation of Thompson Sampling (2011), section 4.
    """
    if factor <= 0:
        raise ValueError(f"temper factor must be positive, got {factor}")
    return np.asarray(alpha) * factor, np.asarray(beta) * factor
