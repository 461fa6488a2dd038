"""Dominated models: those that cannot be the best choice, with confidence, so need no exploring.

At a cost weight, model j is dominated in a cluster when some model i's pessimistic utility
beats j's optimistic one: lower_i - penalty_i > upper_j - penalty_j. Costs are known before
the call, so only the quality bounds carry uncertainty. Thompson sampling alone would still
spend a little traffic on j; removing it from the allowed set stops that.

References: Even-Dar, Mannor & Mansour, Action Elimination (JMLR 2006).
"""

from __future__ import annotations

import numpy as np
from scipy import special

__all__ = ["bounds", "dominated"]


def bounds(alpha: np.ndarray, beta: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed ``level`` bounds of Beta(alpha, beta), elementwise.

    The same interval as ``learner.policy.credible_interval``, by the ufunc directly: it is
    evaluated once per decision in a replay, where ``scipy.stats``' argument checks dominate.
    """
    tail = (1.0 - level) / 2.0
    return special.betaincinv(alpha, beta, tail), special.betaincinv(alpha, beta, 1.0 - tail)


def dominated(lower: np.ndarray, upper: np.ndarray, penalty: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Models dominated among the allowed ones: (m,) bool.

    lower, upper: (m,) credible bounds of quality; penalty: (m,) utility subtracted per model;
    allowed: (m,) bool. Never marks every allowed model (the best pessimistic one survives).
    """
    low = np.where(allowed, np.asarray(lower) - penalty, -np.inf)
    high = np.asarray(upper) - penalty
    return allowed & (high < low.max())
