"""Shadow routing: a share of answered requests also asked of another model, off the request path.

What the routed answer is compared with is either a fixed **reference** (``[shadow] reference``, a
pool model) or a **candidate** snapshot's choice (``[shadow] candidate``, a stored version): the
candidate decides the request again with the routing step's own decision
(``RequestRouter.decide_again`` on the candidate's view, compiled once at start), and its model is
asked only when it chose another model than the one that answered.

``Shadow.picks`` is what the request path runs (after the client's answer is settled): a draw
against the tenant's share, then, with a reference, the day's budget for the reference's expected
cost (with a candidate, the budget is checked in the background, once it has chosen). A request
answered by the reference itself is not shadowed (nothing to compare); with a candidate, only the
policy's own decisions are (not a model asked by name, pinned by a rule or kept on its
conversation's model). ``Shadow.ask`` is the background call: the client's request, not streamed,
to a pool model; it never raises.

The comparison (both answers graded by the judge) and the records (purpose ``shadow``: never
learned from) are ``service/evaluation.py``'s; the agreement, leakage and cost report is
``feedback/clickhouse_judge.py``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Callable, Mapping

import msgspec
import numpy as np

from learner.routing import RouteChoice, View
from service.daily_budget import DailyBudget
from service.records import Routed, Turn
from service.tenants import Tenant
from service.upstream import Upstream, UpstreamCall, UpstreamError

__all__ = ["Candidate", "DecideAgain", "Shadow", "ShadowAnswer", "Target"]

# ``RequestRouter.decide_again``: (view, routed, tenant, stream, rng) -> the policy's choice, or None
DecideAgain = Callable[[View, Routed, Tenant, bool, np.random.Generator], RouteChoice | None]

_enc = msgspec.json.Encoder()


class ShadowAnswer(msgspec.Struct, frozen=True):
    """The reference model's answer (``text`` "" and ``error`` set when the call failed)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    error: str = ""


class Target(msgspec.Struct, frozen=True):
    """A pool model a shadow may ask: its place in the pool, adapter, upstream name, prices, timeout."""

    index: int  # its expected cost in ``Routed.costs``
    upstream: Upstream
    upstream_model: str
    prices: tuple[float, float]  # USD per million tokens in, out
    timeout_s: float


class Candidate:
    """A stored snapshot that decides shadowed requests again: its view, compiled once at start,
    and the routing step's own decision, wired in by the composition root (``use_router``)."""

    def __init__(self, view: View) -> None:
        self.view = view
        self.version = view.version
        self._decide: DecideAgain | None = None

    def use_router(self, decide_again: DecideAgain) -> None:
        self._decide = decide_again

    def choice_for(self, turn: Turn, rng: np.random.Generator) -> tuple[str, RouteChoice] | None:
        """The candidate's model and choice for ``turn`` (the routing step's own decision, made on
        the candidate's view), or None when the policy did not decide it."""
        if self._decide is None:
            raise RuntimeError("the candidate has no routing step (Candidate.use_router)")
        choice = self._decide(self.view, turn.routed, turn.caller.tenant, bool(turn.req.stream), rng)
        return None if choice is None else (self.view.models[choice.arm], choice)


class Shadow:
    def __init__(self, *, reference: str, targets: Mapping[str, Target], share: float,
                 tenant_share: Mapping[str, float], tenants: tuple[str, ...], budget: DailyBudget,
                 rng: np.random.Generator, candidate: Candidate | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        """``reference``: the pool model compared with ("" with a ``candidate``); ``targets``: the
        models it may ask (the reference alone, or the whole pool for a candidate)."""
        self.reference = reference
        self.candidate = candidate
        self.targets = dict(targets)
        self.share = share
        self.tenant_share = dict(tenant_share)
        self.tenants = frozenset(tenants)
        self.budget = budget
        self.rng = rng
        self.clock = clock
        self.counts: Counter[str] = Counter()  # why requests were or were not shadowed, and how it went

    def share_of(self, tenant: Tenant) -> float:
        """The tenant's share: 0 outside ``tenants`` or when its models exclude the reference
        (its prompts may not go there), else its own ``tenant_share`` or the default. A candidate
        chooses among the models the rules left the request, the tenant's among them."""
        if self.tenants and tenant.name not in self.tenants:
            return 0.0
        if self.reference and tenant.models and self.reference not in tenant.models:
            return 0.0
        return self.tenant_share.get(tenant.name, self.share)

    def picks(self, turn: Turn, model: str) -> bool:
        """Shadow this answered request? Cheap: a draw, then the budget for the expected cost."""
        share = self.share_of(turn.caller.tenant)
        if share <= 0.0 or self.rng.random() >= share:
            return False
        if self.candidate is not None:
            if turn.routed.row < 0:  # not the policy's decision: nothing for a candidate to decide again
                self.counts["not_routed"] += 1
                return False
            self.counts["picked"] += 1  # its model and so its cost are known once it has decided
            return True
        if model == self.reference:
            self.counts["same_model"] += 1
            return False
        if not self.affords(turn, self.reference):
            return False
        self.counts["picked"] += 1
        return True

    def affords(self, turn: Turn, model: str) -> bool:
        """Does the day's budget still hold ``model``'s expected cost for ``turn``? (Counted when not.)"""
        costs, target = turn.routed.costs, self.targets[model]
        estimate = float(costs[target.index]) if costs is not None else self.cost(model, turn.routed.prompt_tokens, 300)
        if self.budget.allows(estimate):
            return True
        self.counts["over_budget"] += 1
        return False

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        prices = self.targets[model].prices
        return (prompt_tokens * prices[0] + completion_tokens * prices[1]) / 1e6

    async def ask(self, turn: Turn, model: str) -> ShadowAnswer:
        """The client's request (its known fields), not streamed, answered by ``model`` (a target)."""
        target = self.targets[model]
        req = msgspec.structs.replace(turn.req, stream=False, stream_options=None)
        raw = _enc.encode({k: v for k, v in msgspec.to_builtins(req).items() if v is not None})
        t = self.clock()
        try:
            done = await asyncio.wait_for(target.upstream.complete(UpstreamCall(req, raw, target.upstream_model)),
                                          target.timeout_s)  # fmt: skip
        except (UpstreamError, asyncio.TimeoutError, OSError) as exc:
            latency_ms = (self.clock() - t) * 1000.0
            error = f"timed out after {target.timeout_s:g} s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            self.counts["failed"] += 1
            return ShadowAnswer("", 0, 0, 0.0, latency_ms, f"{model}: {error}")
        cost = self.cost(model, done.prompt_tokens, done.completion_tokens)
        self.budget.spend(cost)
        self.counts["answered"] += 1
        return ShadowAnswer(done.text, done.prompt_tokens, done.completion_tokens, cost,
                            (self.clock() - t) * 1000.0)  # fmt: skip
