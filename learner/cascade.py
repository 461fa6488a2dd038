"""The cascade as an arm: a cheap model first, the strong one only when a gate rejects its answer.

A configured cascade (``[[cascades]]``: name, cheap, strong, gate, threshold) is one more column
of the routing core's model axis, so the bandit chooses it per cluster like any model and uses
it only where it pays. Its posterior learns from feedback on the final answer (the decision's
``model`` is the cascade's name); its cost is not billed by a price sheet but estimated as

    cost(cheap) + escalation rate x cost(strong)

per cluster, with the escalation rate learned from the cascade's own records (``escalated`` on
its decisions, summed per (cluster, column) in the snapshot's ``escalations``; the configured
``prior_escalation`` as a prior of two calls, borrowing across clusters as the other usage
estimates do, ``learner.routing.fit_cells``). The gate's verdict on the cheap attempt is
evidence about the cheap model: a rejection is a judge-kind reward of 0 on that attempt's own
record, a judge's acceptance a reward of 1 (``gate_evidence``).

The break-even escalation rate, where the cascade costs what the strong model alone does, is
``1 - cost(cheap) / cost(strong)`` (``break_even``).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import msgspec
import numpy as np

__all__ = [
    "CASCADE_POLICY", "Cascade", "CascadeArm", "GATES", "break_even", "cascade_arms", "escalation_rates",
    "extend_prior", "gate_evidence", "pool_names",
]  # fmt: skip

CASCADE_POLICY = "cascade"  # the policy of an attempt's own record (cheap or strong) inside a cascade
GATES = ("structural", "logprob", "judge")
Gate = Literal["structural", "logprob", "judge"]


class Cascade(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One configured cascade.

    ``gate``: ``structural`` (empty answer, refusal, unparsable JSON when JSON was asked for),
    ``logprob`` (structural, and the mean token log-probability of the cheap answer at least
    ``threshold``, where the provider returns them) or ``judge`` (structural, and a judge's
    grade at least ``threshold``). ``tier``: the prior quality of the cascade (default: the mean
    of the two models' tiers).
    """

    name: str
    cheap: str
    strong: str
    gate: Gate = "structural"
    threshold: float = 0.5
    prior_escalation: float = 0.5
    tier: float | None = None

    def __post_init__(self) -> None:
        if not self.name or self.cheap == self.strong:
            raise ValueError(f"cascade {self.name!r}: needs a name and two different models")
        if not 0.0 <= self.prior_escalation <= 1.0:
            raise ValueError(f"cascade {self.name!r}: prior_escalation must be in [0, 1]")
        if not math.isfinite(self.threshold):
            raise ValueError(f"cascade {self.name!r}: threshold must be finite")
        if self.tier is not None and not 0.0 < self.tier < 1.0:
            raise ValueError(f"cascade {self.name!r}: tier must be in (0, 1)")


class CascadeArm(msgspec.Struct, frozen=True):
    """A cascade resolved on a model axis: its own column and its two models' columns."""

    column: int
    cheap: int
    strong: int
    prior_escalation: float = 0.5


def pool_names(models: Sequence[str], cascades: Sequence[Cascade]) -> tuple[str, ...]:
    """The routing core's model axis: the pool's models, then the cascades (configured order)."""
    return tuple(models) + tuple(c.name for c in cascades if c.name not in models)


def extend_prior(prior, cascades: Sequence[Cascade]):
    """The learner's ``PoolPrior`` on the routing axis: each cascade after the models, its tier
    configured or the mean of its two models', the cheap model's answer length, the cheap model's
    latency plus the prior escalation rate times the strong one's."""
    from learner.fold import PoolPrior

    if not cascades:
        return prior
    idx = {m: j for j, m in enumerate(prior.models)}
    tiers, tokens, latency = list(prior.prior_mean), list(prior.completion_tokens), list(prior.latency_s)
    for c in cascades:
        if c.name in idx:
            continue
        ch, st = idx[c.cheap], idx[c.strong]
        tiers.append(c.tier if c.tier is not None else (prior.prior_mean[ch] + prior.prior_mean[st]) / 2)
        tokens.append(prior.completion_tokens[ch])
        latency.append(prior.latency_s[ch] + c.prior_escalation * prior.latency_s[st])
    return PoolPrior(pool_names(prior.models, cascades), tuple(tiers), tuple(tokens), tuple(latency))


def cascade_arms(axis: Sequence[str], cascades: Sequence[Cascade]) -> tuple[CascadeArm, ...]:
    """Each cascade's columns on ``axis``; raises ``ValueError`` naming a cascade whose models are
    not in the pool (or that is itself one of another cascade's models)."""
    col = {m: j for j, m in enumerate(axis)}
    names = {c.name for c in cascades}
    out = []
    for c in cascades:
        for role, model in (("cheap", c.cheap), ("strong", c.strong)):
            if model not in col or model in names:
                raise ValueError(f"cascade {c.name!r}: {role} model {model!r} is not a model of the pool")
        if c.name not in col:
            raise ValueError(f"cascade {c.name!r}: not on the model axis")
        out.append(CascadeArm(col[c.name], col[c.cheap], col[c.strong], c.prior_escalation))
    return tuple(out)


def escalation_rates(escalations: np.ndarray, calls: np.ndarray, arms: Sequence[CascadeArm]) -> np.ndarray:
    """The escalation rate of each cascade per cluster: (k, len(arms)), in [0, 1].

    escalations, calls: (k, m) sums of the cascades' own decisions. Each rate is shrunk toward
    a two-way fit over the clusters (the configured prior where a cascade has no calls yet).
    """
    from learner.routing import fit_cells  # the usage estimates' own shrinkage

    if not arms:
        return np.zeros((len(calls), 0))
    cols = [a.column for a in arms]
    prior = np.array([a.prior_escalation for a in arms], dtype=np.float64)
    rates = fit_cells(np.asarray(escalations)[:, cols], np.asarray(calls)[:, cols], prior)
    return np.clip(rates, 0.0, 1.0)


def gate_evidence(rejected: bool, gate: str) -> float | None:
    """The reward the gate's verdict gives the cheap attempt (judge kind), or None.

    A rejection says the cheap answer was not good enough: 0. An acceptance by a judge is a
    judge's grade of 1; a structural or log-probability acceptance says only that nothing was
    visibly wrong, so it is no evidence.
    """
    if rejected:
        return 0.0
    return 1.0 if gate == "judge" else None


def break_even(cheap_cost: float, strong_cost: float) -> float:
    """The escalation rate at which the cascade costs what the strong model alone does."""
    return 1.0 - cheap_cost / strong_cost if strong_cost > 0 else 0.0
