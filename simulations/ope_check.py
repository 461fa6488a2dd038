"""Do the OPE intervals cover the truth at their stated rate? Checked on the simulator.

A Turnout router learns on a warm-up stream and is then frozen, as a live snapshot is. It logs
rounds at one cost weight (the logging policy); a candidate is the same snapshot at another cost
weight. Both are exact distributions over models (``learner.routing.decide``), so the candidate's
true value is known: the mean over a large stream of sum_a target(a | prompt) * quality(topic, a).
Each replication logs ``rounds`` fresh prompts and estimates that value; the share of
replications whose interval holds it is the empirical coverage.
"""

from __future__ import annotations

import msgspec
import numpy as np

from learner.costs import request_tokens
from learner.embedding import Embedder
from learner.routing import Prices, decide
from simulations.baselines import Turnout
from simulations.environment import Scenario, feedback, stream
from simulations.ope import Logged, estimate
from simulations.replay import Deployment

__all__ = ["Coverage", "check_coverage"]


class Coverage(msgspec.Struct, frozen=True):
    level: float
    replications: int
    rounds: int
    truth: float
    ips: float  # share of replications whose interval holds the truth
    snips: float
    dr: float
    mean_ess: float
    mean_estimate: dict[str, float]
    unsupported: float  # the candidate's mass where the logging policy never chooses


def check_coverage(
    sc: Scenario, embedder: Embedder, deployment: Deployment, *, logging_weight: float = 25.0, target_weight: float = 5.0,
    rounds: int = 400, replications: int = 200, level: float = 0.9, warmup: int = 600, seed: int = 0,
) -> Coverage:  # fmt: skip
    """Empirical coverage of the IPS, SNIPS and DR intervals for a candidate cost weight."""
    rng = np.random.default_rng(seed)
    warm = stream(sc, warmup, rng)
    cache: dict[str, np.ndarray] = {}

    def embed(texts) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            cache.update(zip(new, embedder.embed(new)))
        return np.stack([cache[t] for t in texts])

    def prices(t: int) -> Prices:
        return Prices(warm.models, tuple(float(x) * 1e6 for x in warm.price_per_token[0]),
                      tuple(float(x) * 1e6 for x in warm.price_out_per_token[0]))  # fmt: skip

    dep = msgspec.structs.replace(deployment, cost_weight=logging_weight,
                                  routing=msgspec.structs.replace(deployment.routing, seed=seed))  # fmt: skip
    turnout = Turnout("turnout", warm.models, embedder.dim, dep, prices)
    emb = embed(warm.prompts)
    for t in range(warmup):
        arm, c = turnout.decide(t, emb[t], warm.tokens[t], warm.available[t], warm.price_per_token[t])
        turnout.learn(t, emb[t], arm, c, feedback(warm, sc.users, t, arm), warm.cost_usd[t, arm], warm.tokens[t])
    view = turnout.sim.view  # no more learning: a snapshot
    models = warm.models

    def policy(texts: tuple[str, ...], weight: float) -> np.ndarray:
        e = embed(texts)
        out = np.zeros((len(texts), len(models)))
        for i, text in enumerate(texts):
            out[i] = decide(view, e[i], request_tokens([text]), weight, dep.latency_weight, None, 0).propensities
        return out

    # the prompt universe of the last phase, with its probabilities: the truth is exact
    phase = sc.phases[-1]
    by_name = {t.name: t for t in sc.topics}
    weights = {k: v / sum(phase.topics.values()) for k, v in phase.topics.items()}
    texts, probs, topics = [], [], []
    for name, w in weights.items():
        topic = by_name[name]
        for template in topic.templates:
            for filler in topic.fillers:
                texts.append(template.format(filler))
                probs.append(w / (len(topic.templates) * len(topic.fillers)))
                topics.append(name)
    col = {m.name: j for j, m in enumerate(phase.pool)}
    order = [col.get(m, -1) for m in models]
    quality = np.array([[phase.pool[j].quality_on(t) if j >= 0 else 0.0 for j in order] for t in topics])
    mu, pi = policy(tuple(texts), logging_weight), policy(tuple(texts), target_weight)
    prob = np.array(probs) / np.sum(probs)
    truth = float(np.sum(prob * (pi * quality).sum(axis=1)))
    topic_ids = np.unique(np.array(topics), return_inverse=True)[1]

    unsupported = float(np.sum(prob * (pi * (mu <= 0)).sum(axis=1)))
    hits = {"ips": 0, "snips": 0, "dr": 0}
    sums = {"ips": 0.0, "snips": 0.0, "dr": 0.0}
    ess = 0.0
    for _ in range(replications):
        idx = rng.choice(len(texts), rounds, p=prob)
        cdf = np.cumsum(mu[idx], axis=1)
        actions = np.minimum((cdf < rng.random(rounds)[:, None] * cdf[:, -1:]).sum(axis=1), mu.shape[1] - 1)
        rewards = (rng.random(rounds) < quality[idx, actions]).astype(float)
        logged = Logged(actions, rewards, mu[idx, actions], pi[idx], topic_ids[idx], models, logging=mu[idx])
        rep = estimate(logged, level=level, min_ess=0.0)
        ess += rep.ess
        for name in hits:
            iv = getattr(rep, name)
            hits[name] += iv.ci_low <= truth <= iv.ci_high
            sums[name] += iv.estimate
    n = float(replications)
    return Coverage(level, replications, rounds, truth, hits["ips"] / n, hits["snips"] / n, hits["dr"] / n,
                    ess / n, {k: v / n for k, v in sums.items()}, unsupported)  # fmt: skip
