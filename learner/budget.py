"""Budgets: a target mean cost per request instead of a hand-set cost weight; exploration caps.

Routing maximises ``quality - cost_weight * cost``. With a budget B, the weight is the
Lagrange multiplier of the constraint ``mean cost <= B``: the learner raises it when the
realised mean cost of a window is above B and lowers it when below (dual ascent, done in log
space so that it does not care whether costs are cents or micro-dollars). A budget covers the
requests of a policy, or all the requests of one tenant (key ``tenant:NAME``):

    log w  <-  log w + step * (realised / B - 1)

Summed over cycles, the updates telescope: the mean of (realised / B - 1) is the net change of
log w divided by ``step`` times the number of cycles, so while the weight stays inside its
bounds the realised cost tracks the budget on average, and quality is maximised under it.

References: Boyd & Vandenberghe, Convex Optimization ch. 5 (duality); Agrawal & Devanur,
Bandits with Concave Rewards and Convex Knapsacks (EC 2014).
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from learner.snapshot import BudgetState

__all__ = ["TENANT_PREFIX", "BudgetParams", "BudgetTarget", "budget_covers", "dual_update",
           "explore_share", "tenant_budget_key"]

TENANT_PREFIX = "tenant:"  # a budget keyed "tenant:acme" covers every request of tenant acme

# utility given to a model in the sample rows it may not win: far below any real utility, but
# finite, so a request that allows only that model (a pass-through) still gets it


def tenant_budget_key(tenant: str) -> str:
    return TENANT_PREFIX + tenant


def budget_covers(key: str, policy: str, tenant: str) -> bool:
    """Whether a budget keyed ``key`` (a policy name, or ``tenant:NAME``) covers a decision."""
    return tenant == key[len(TENANT_PREFIX) :] if key.startswith(TENANT_PREFIX) else policy == key


class BudgetTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policy: str  # what it covers: a policy name, or "tenant:NAME" for all of a tenant's requests
    target_cost_usd: float  # mean cost per request to aim for
    cost_weight: float  # the configured weight: where the learned one starts


class BudgetParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    step: float = 0.5  # change of log weight per unit of relative overspend in one cycle
    max_log_change: float = 1.0  # at most a factor e per cycle
    min_weight: float = 1e-2
    max_weight: float = 1e7


def start(target: BudgetTarget, params: BudgetParams) -> BudgetState:
    w = min(max(target.cost_weight, params.min_weight), params.max_weight)
    return BudgetState(target.policy, w, target.target_cost_usd)


def dual_update(state: BudgetState, decisions: int, cost_usd: float, params: BudgetParams) -> BudgetState:
    """One dual step from a window's ``decisions`` under the policy and their summed ``cost_usd``."""
    if decisions <= 0:
        return state
    realised = float(cost_usd) / decisions
    change = params.step * (realised / state.target_cost_usd - 1.0)
    change = max(-params.max_log_change, min(params.max_log_change, change))
    w = state.cost_weight * math.exp(change)
    w = min(max(w, params.min_weight), params.max_weight)
    return msgspec.structs.replace(state, cost_weight=w, realised_cost_usd=realised,
                                   decisions=state.decisions + decisions)  # fmt: skip


def explore_share(evidence: np.ndarray, min_evidence: float, share: float) -> tuple[float, ...]:
    """Exploration budget: a model with less than ``min_evidence`` (summed over clusters) may win
    only a ``share`` of the posterior sample rows, so a newly added model is tried but cannot take
    more than that share of traffic while its posterior is wide. No cap until most of the pool
    has the evidence: a new pool explores freely (the first model to reach the threshold must
    not throttle the others), an established one takes a newcomer slowly. evidence: (m,).
    Returns (m,), or () for no cap."""
    e = np.asarray(evidence, dtype=np.float64)
    if 2 * int((e >= min_evidence).sum()) <= len(e):
        return ()
    return tuple(share if x < min_evidence else 1.0 for x in e)


