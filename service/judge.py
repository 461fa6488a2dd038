"""The answer judge: one call to a grading model, its prompt template, its score parser, its budget.

The judge is any ``Upstream`` (``service/upstream.py``): a pool model's adapter, a dedicated
OpenAI-compatible endpoint, or in tests a local fake provider. ``Judge.grade`` renders the
template with the question and the answer, asks for a short reply at temperature 0, parses the
score with a regular expression and scales it to [0, 1]. It never raises: a failed, slow (past
``timeout_s``) or unparsable call is a ``Grade`` without a score, carrying its error, cost and
latency, so that the caller records it like any call. Over the day's budget it makes no call.

What a grade becomes (feedback, records, cache eviction) is ``service/evaluation.py``'s business.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Callable

import msgspec

from learner.costs import request_tokens
from service.daily_budget import DailyBudget
from service.schemas import ChatRequest, Message
from service.upstream import Upstream, UpstreamCall, UpstreamError

__all__ = ["Grade", "Judge", "parse_score", "render"]

_enc = msgspec.json.Encoder()


class Grade(msgspec.Struct, frozen=True):
    """One judge call: the score in [0, 1] (None: failed or unparsable), what it cost and took."""

    score: float | None
    cost_usd: float
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str = ""
    reply: str = ""


def render(template: str, question: str, answer: str) -> str:
    """The judge's prompt: ``{question}`` and ``{answer}`` replaced (other braces kept as they are)."""
    return template.replace("{question}", question).replace("{answer}", answer)


def parse_score(text: str, pattern: re.Pattern[str], score_max: float) -> float | None:
    """The first group of ``pattern``'s first match over ``score_max``, clipped to [0, 1]; None if none."""
    m = pattern.search(text)
    if m is None:
        return None
    try:
        value = float(m.group(1))
    except (TypeError, ValueError):
        return None
    return min(1.0, max(0.0, value / score_max))


class Judge:
    def __init__(self, *, name: str, upstream: Upstream, upstream_model: str, price_in_per_mtok: float,
                 price_out_per_mtok: float, template: str, score_pattern: str, score_max: float,
                 max_tokens: int, timeout_s: float, budget: DailyBudget,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.name = name  # what its records name as model: the pool model, or "judge"
        self.upstream = upstream
        self.upstream_model = upstream_model
        self.prices = (price_in_per_mtok, price_out_per_mtok)
        self.template = template
        self.pattern = re.compile(score_pattern)
        self.score_max = score_max
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.budget = budget
        self.clock = clock

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prices[0] + completion_tokens * self.prices[1]) / 1e6

    async def grade(self, question: str, answer: str) -> Grade | None:
        """Grade ``answer`` to ``question``; None when today's budget has no room for the call."""
        prompt = render(self.template, question, answer)
        estimate = self.cost(request_tokens([prompt]), self.max_tokens)
        if not self.budget.allows(estimate):
            return None
        body = {"model": self.upstream_model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0, "max_tokens": self.max_tokens, "stream": False}  # fmt: skip
        call = UpstreamCall(ChatRequest(model=self.upstream_model, messages=[Message(role="user", content=prompt)],
                                        temperature=0, max_tokens=self.max_tokens),
                            _enc.encode(body), self.upstream_model)  # fmt: skip
        t = self.clock()
        try:
            done = await asyncio.wait_for(self.upstream.complete(call), self.timeout_s)
        except (UpstreamError, asyncio.TimeoutError, OSError) as exc:
            self.budget.spend(estimate)  # a failed call may still be billed: count the estimate
            error = f"timed out after {self.timeout_s:g} s" if isinstance(exc, asyncio.TimeoutError) else str(exc)
            return Grade(None, estimate, (self.clock() - t) * 1000.0, error=f"{self.name}: {error}")
        latency_ms = (self.clock() - t) * 1000.0
        cost = self.cost(done.prompt_tokens, done.completion_tokens)
        self.budget.spend(cost)
        score = parse_score(done.text, self.pattern, self.score_max)
        error = "" if score is not None else f"{self.name}: no score in the reply {done.text[:80]!r}"
        return Grade(score, cost, latency_ms, done.prompt_tokens, done.completion_tokens, error, done.text[:200])
