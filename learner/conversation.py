"""Conversations in the core: the context a turn is routed in, and whether a turn stays on its model.

Pure functions over a ``learner.routing.View``; the service (``service/conversations.py``) and
``turnout simulate`` call the same ones.

*Context.* A turn is routed on a decayed sum of its conversation's user turns,
``s_n = e_n + decay * s_(n-1)`` (each ``e`` a unit-norm embedding), renormalised: the current
message weighs 1, the one before ``decay``, the one before that ``decay**2``. A short follow-up
("and now the same in Rust") then lands where its conversation is; with ``decay`` 0 every turn
is routed on its own message, as without conversations.

*Stickiness.* Providers bill a cached prompt prefix at a discount (prompt caching), and only
the model that answered the previous turn holds the conversation in its cache. A turn stays on
that model unless the best other allowed model's posterior-mean utility beats the kept model's
(its cost lowered by the cache discount on the conversation's earlier tokens) by more than
``switch_margin``: the economics of switching, not a fixed count of turns. A kept turn is a
deterministic consequence of the conversation's state, so its logged propensity is 1; a turn
where switching pays is routed afresh by ``decide`` with its own exact propensity.
"""

from __future__ import annotations

import numpy as np

from learner.routing import RouteChoice, View

__all__ = ["context_sum", "kept_choice", "normalised", "routed_on", "switch_gain"]


def context_sum(previous: np.ndarray | None, embedding: np.ndarray, decay: float) -> np.ndarray:
    """The conversation's running sum after this turn: (d,) float32, ``embedding + decay * previous``.

    embedding: (d,) unit norm; previous: the sum after the last turn (None for a first turn, or
    one of another dimension, as after a change of embedder).
    """
    e = np.asarray(embedding, dtype=np.float32)
    if previous is None or decay <= 0.0 or previous.shape != e.shape:
        return e.copy()
    return e + np.float32(decay) * previous


def routed_on(previous: np.ndarray | None, embedding: np.ndarray, decay: float) -> tuple[np.ndarray, np.ndarray]:
    """(the running sum after this turn, the vector to route the turn on).

    The vector is ``embedding`` itself when nothing is mixed in (a first turn, ``decay`` 0): not
    renormalised, so a turn outside any conversation is routed, and recorded, bit for bit as
    without conversations.
    """
    summed = context_sum(previous, embedding, decay)
    mixed = previous is not None and decay > 0.0 and previous.shape == summed.shape
    return summed, normalised(summed) if mixed else embedding


def normalised(v: np.ndarray) -> np.ndarray:
    """``v`` at unit norm (a zero vector unchanged): what a context sum is routed on."""
    n = float(np.sqrt(v @ v))
    return v / np.float32(n) if n > 0 else v


def _utility(view: View, cluster: int, costs: np.ndarray, cost_weight: float, latency_weight: float) -> np.ndarray:
    return view.mean[cluster] - (cost_weight * costs + latency_weight * view.latency_s)


def switch_gain(
    view: View,
    cluster: int,
    costs: np.ndarray,
    cost_weight: float,
    latency_weight: float,
    allowed: np.ndarray | None,
    previous: int,
    cache_discount_usd: float,
) -> float:
    """Expected utility of the best other allowed model minus that of staying on ``previous``.

    costs: (m,) expected USD of each model at full input price (``View.costs``);
    cache_discount_usd: what ``previous`` saves on this turn by its cached prefix (the
    conversation's earlier tokens at its input price minus its cached-input price).
    -inf when no other model is allowed.
    """
    utility = _utility(view, cluster, costs, cost_weight, latency_weight)
    stay = utility[previous] + cost_weight * cache_discount_usd
    others = np.ones(len(utility), dtype=bool) if allowed is None else allowed.copy()
    others[previous] = False
    if not others.any():
        return -np.inf
    return float(np.max(utility[others]) - stay)


def kept_choice(
    view: View,
    cluster: int,
    margin: float,
    costs: np.ndarray,
    cost_weight: float,
    latency_weight: float,
    allowed: np.ndarray | None,
    previous: int,
    cache_discount_usd: float,
) -> RouteChoice:
    """The decision of a kept turn: ``previous`` with propensity 1, the other allowed models as
    its failover order (best posterior-mean utility first)."""
    utility = _utility(view, cluster, costs, cost_weight, latency_weight)
    props = np.zeros(len(utility))
    props[previous] = 1.0
    order = tuple(int(j) for j in np.argsort(-utility, kind="stable")
                  if j != previous and (allowed is None or allowed[j]))  # fmt: skip
    return RouteChoice(
        cluster=int(cluster),
        margin=float(margin),
        arm=int(previous),
        propensity=1.0,
        propensities=tuple(float(p) for p in props),
        fallback_order=order,
        expected_cost_usd=float(costs[previous] - cache_discount_usd),
    )
