"""The model pool a deployment serves (configured providers, or the simulated pool) and the
embedder its requests are placed with."""

from __future__ import annotations

import logging
import os

import numpy as np

from learner.cascade import extend_prior
from learner.cycle import PoolPrior
from learner.embedding import Embedder, HashingEmbedder
from service.route_request import PoolModel
from service.settings import ConfigError, Settings
from service.upstream import Upstream

__all__ = ["build_embedder", "pool_from_settings"]

log = logging.getLogger("turnout.pool")


def build_embedder(settings: Settings) -> Embedder:
    if settings.router.embedder == "hashing":
        return HashingEmbedder(settings.router.embedding_dim)
    from learner.wordllama import WordLlamaEmbedder

    return WordLlamaEmbedder(settings.router.embedding_dim)


def pool_from_settings(
    settings: Settings, sim_latency_scale: float = 1.0, seed: int = 0
) -> tuple[tuple[PoolModel, ...], PoolPrior, dict[str, Upstream], tuple[str, ...], bool]:
    """The model pool: configured providers, or the simulated pool when none is configured.

    Returns (pool, prior, upstreams, cluster examples, simulated?); the prior's models are the
    routing axis, the pool's models then the ``[[cascades]]`` (``learner.cascade.extend_prior``).
    """
    examples = settings.router.cluster_examples
    if not settings.models:
        from service.simulated import SimulatedUpstream
        from simulations.pool import DEFAULT_POOL, topic_examples

        shared = sorted({p.name for p in settings.policies} & {m.name for m in DEFAULT_POOL})
        if shared:
            raise ConfigError(f"config error: a policy and a model of the simulated pool share a name "
                              f"({', '.join(shared)}): the model field of a request could not say which")
        rng = np.random.default_rng(seed)
        pool = tuple(PoolModel(m.name, m.name, m.price_in_per_mtok, m.price_out_per_mtok, m.tier) for m in DEFAULT_POOL)
        prior = PoolPrior(
            models=tuple(m.name for m in DEFAULT_POOL),
            prior_mean=tuple(m.tier for m in DEFAULT_POOL),
            completion_tokens=tuple(float(m.completion_tokens) for m in DEFAULT_POOL),
            latency_s=tuple(m.latency_s * sim_latency_scale for m in DEFAULT_POOL),
        )
        ups: dict[str, Upstream] = {m.name: SimulatedUpstream(m, rng, sim_latency_scale) for m in DEFAULT_POOL}
        return pool, extend_prior(prior, settings.cascades), ups, examples or tuple(topic_examples()), True
    from service.gateway import openai_upstream, unset_keys

    for name, var in unset_keys(settings.models, os.environ):
        log.warning("model %s: its api_key_env variable %s is not set; requests to it go without a key", name, var)
    pool = tuple(
        PoolModel(m.name, m.upstream_model or m.name, m.price_in_per_mtok, m.price_out_per_mtok, m.tier,
                  m.context_window, m.price_cached_in_per_mtok)  # fmt: skip
        for m in settings.models
    )
    prior = PoolPrior(
        models=tuple(m.name for m in settings.models),
        prior_mean=tuple(m.tier for m in settings.models),
        completion_tokens=tuple(m.expected_completion_tokens for m in settings.models),
        latency_s=tuple(m.expected_latency_s for m in settings.models),
    )
    ups = {m.name: openai_upstream(m) for m in settings.models}
    return pool, extend_prior(prior, settings.cascades), ups, examples, False
