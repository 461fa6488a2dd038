"""The plain parameters the pure core takes, read from the settings: the learner's, the router's,
the price sheet, and the offline runs' view of a deployment (``turnout replay`` / ``simulate``)."""

from __future__ import annotations

import msgspec

from learner.budget import BudgetParams, BudgetTarget, tenant_budget_key
from learner.cycle import LearnerParams
from learner.drift import DriftParams
from learner.recluster import ReclusterParams
from learner.reward import RewardWeights
from learner.routing import Prices, RoutingParams
from service.settings import Settings

__all__ = ["deployment", "learner_params", "prices_of", "routing_params"]


def learner_params(settings: Settings) -> LearnerParams:
    """The learning cycle's parameters from ``[learner]`` (plain values for the pure core)."""
    ls, weights = settings.learner, {p.name: p.cost_weight for p in settings.policies}
    weights["auto"] = settings.router.cost_weight
    d, r = ls.drift, ls.recluster
    return LearnerParams(
        n_clusters=settings.router.n_clusters, grace_ms=int(ls.grace_s * 1000), discount=ls.discount,
        cold_start_min=ls.cold_start_min, recluster_growth=ls.recluster_growth,
        recluster_until=ls.recluster_until, half_life_ms=ls.half_life_s * 1000.0,
        half_life_rewards=ls.half_life_feedback,
        rewards=RewardWeights(ls.feedback_weights.explicit, ls.feedback_weights.re_request,
                              ls.feedback_weights.upstream_error, ls.feedback_weights.judge),
        drift=DriftParams(block=d.block, window=d.window, baseline=d.baseline, tolerance=d.tolerance,
                          threshold=d.threshold, reward_block=d.reward_block, reward_tolerance=d.reward_tolerance,
                          reward_threshold=d.reward_threshold) if d.enabled else None,
        reward_reset=d.reward_reset,
        recluster=ReclusterParams(sample=r.sample, max_clusters=r.max_clusters, min_size=r.min_size,
                                  split_gain=r.split_gain, split_cos=r.split_cos, growth=r.growth,
                                  merge_cos=r.merge_cos, carry=r.carry),
        budgets=tuple(BudgetTarget(b.policy, b.target_cost_usd, weights[b.policy]) for b in ls.budgets) + tuple(
            BudgetTarget(tenant_budget_key(t.name), t.budget_usd,
                         weights[t.policy] if t.cost_weight is None else t.cost_weight)
            for t in settings.tenants if t.budget_usd > 0
        ),  # fmt: skip
        budget=BudgetParams(step=ls.budget_step),
        explore_min_evidence=ls.explore_min_evidence, explore_share=ls.explore_share,
    )  # fmt: skip


def routing_params(settings: Settings) -> RoutingParams:
    """How decisions are drawn, from ``[router]``: the same in the service and the replay."""
    r = settings.router
    return RoutingParams(n_samples=r.thompson_samples, seed=r.seed, satisfice=r.satisfice)


def deployment(settings: Settings):  # -> simulations.replay.Deployment
    """What the offline runs (``turnout replay``, ``simulate``) take from a deployment's settings:
    the same learner and router levers with the same defaults, the price sheet and tiers."""
    from simulations.replay import ConfiguredModel, Deployment

    r = settings.router
    models = tuple(
        ConfiguredModel(m.name, m.price_in_per_mtok, m.price_out_per_mtok, m.tier, m.expected_completion_tokens,
                        m.expected_latency_s)  # fmt: skip
        for m in settings.models
    )
    from service.pool import pool_from_settings

    pool, prior = pool_from_settings(settings)[:2]
    shown = {"router": msgspec.to_builtins(msgspec.structs.replace(r, cluster_examples=())),
             "learner": msgspec.to_builtins(msgspec.structs.replace(settings.learner, budgets=())),
             "language": msgspec.to_builtins(settings.language)}  # fmt: skip
    return Deployment(
        learner=learner_params(settings), routing=routing_params(settings), prior_strength=r.prior_strength,
        shrink_strength=r.shrink_strength, cost_weight=r.cost_weight, latency_weight=r.latency_weight,
        models=models, default=ConfiguredModel(""), embedder=r.embedder, embedding_dim=r.embedding_dim,
        language_detector=settings.language.detector, language_weight=settings.language.weight, settings=shown,
        pool_prices=prices_of(pool, prior.models), cascades=settings.cascades,
    )  # fmt: skip


def prices_of(pool, axis: tuple[str, ...] = ()) -> Prices:
    """The price sheet of the pool, in its order; on a routing ``axis`` with cascades after the
    models, each cascade priced 0 (its cost is estimated from its models, learner/cascade.py)."""
    extra = max(0, len(axis) - len(pool))
    return Prices(tuple(m.name for m in pool) + tuple(axis[len(pool):]), tuple(m.price_in_per_mtok for m in pool)
                  + (0.0,) * extra, tuple(m.price_out_per_mtok for m in pool) + (0.0,) * extra)  # fmt: skip
