"""Shadow routing: a share of answered requests also asked of a reference model, off the request path.

``Shadow.picks`` is what the request path runs (after the client's answer is settled): a draw
against the tenant's share, then the day's budget for the reference's expected cost. A request
routed to the reference itself is not shadowed (nothing to compare). ``Shadow.ask`` is the
background call: the client's request, not streamed, to the reference model; it never raises.

The comparison (both answers graded by the judge) and the records (purpose ``shadow``: never
learned from) are ``service/evaluation.py``'s; the leakage and cost-saved report is
``feedback/clickhouse_judge.py``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Callable, Mapping

import msgspec
import numpy as np

from service.daily_budget import DailyBudget
from service.records import Turn
from service.tenants import Tenant
from service.upstream import Upstream, UpstreamCall, UpstreamError

__all__ = ["Shadow", "ShadowAnswer"]

_enc = msgspec.json.Encoder()


class ShadowAnswer(msgspec.Struct, frozen=True):
    """The reference model's answer (``text`` "" and ``error`` set when the call failed)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    error: str = ""


class Shadow:
    def __init__(self, *, reference: str, index: int, upstream: Upstream, upstream_model: str,
                 prices: tuple[float, float], share: float, tenant_share: Mapping[str, float],
                 tenants: tuple[str, ...], budget: DailyBudget, timeout_s: float, rng: np.random.Generator,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.reference = reference
        self.index = index  # the reference's place in the pool (its expected cost in ``Routed.costs``)
        self.upstream = upstream
        self.upstream_model = upstream_model
        self.prices = prices
        self.share = share
        self.tenant_share = dict(tenant_share)
        self.tenants = frozenset(tenants)
        self.budget = budget
        self.timeout_s = timeout_s
        self.rng = rng
        self.clock = clock
        self.counts: Counter[str] = Counter()  # why requests were or were not shadowed

    def share_of(self, tenant: Tenant) -> float:
        """The tenant's share: 0 outside ``tenants`` or when its models exclude the reference
        (its prompts may not go there), else its own ``tenant_share`` or the default."""
        if (self.tenants and tenant.name not in self.tenants) or (tenant.models and self.reference not in tenant.models):
            return 0.0
        return self.tenant_share.get(tenant.name, self.share)

    def picks(self, turn: Turn, model: str) -> bool:
        """Shadow this answered request? Cheap: a draw, then the budget for the expected cost."""
        share = self.share_of(turn.caller.tenant)
        if share <= 0.0 or self.rng.random() >= share:
            return False
        if model == self.reference:
            self.counts["same_model"] += 1
            return False
        costs = turn.routed.costs
        estimate = float(costs[self.index]) if costs is not None else self.cost(turn.routed.prompt_tokens, 300)
        if not self.budget.allows(estimate):
            self.counts["over_budget"] += 1
            return False
        self.counts["picked"] += 1
        return True

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prices[0] + completion_tokens * self.prices[1]) / 1e6

    async def ask(self, turn: Turn) -> ShadowAnswer:
        """The client's request (its known fields), not streamed, answered by the reference model."""
        req = msgspec.structs.replace(turn.req, stream=False, stream_options=None)
        raw = _enc.encode({k: v for k, v in msgspec.to_builtins(req).items() if v is not None})
        t = self.clock()
        try:
            done = await asyncio.wait_for(self.upstream.complete(UpstreamCall(req, raw, self.upstream_model)),
                                          self.timeout_s)  # fmt: skip
        except (UpstreamError, asyncio.TimeoutError, OSError) as exc:
            latency_ms = (self.clock() - t) * 1000.0
            error = f"timed out after {self.timeout_s:g} s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            self.counts["failed"] += 1
            return ShadowAnswer("", 0, 0, 0.0, latency_ms, f"{self.reference}: {error}")
        cost = self.cost(done.prompt_tokens, done.completion_tokens)
        self.budget.spend(cost)
        self.counts["answered"] += 1
        return ShadowAnswer(done.text, done.prompt_tokens, done.completion_tokens, cost,
                            (self.clock() - t) * 1000.0)  # fmt: skip
