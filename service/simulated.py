"""Upstream adapter for the simulated model pool in ``simulations/``: no keys, no network.

Wired only by the composition root (``service/runtime.py``); nothing on the request path imports it.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import numpy as np

from learner.costs import estimate_tokens
from service.upstream import Chunk, Completion, UpstreamCall, UpstreamError
from simulations.pool import SimModel, answer

__all__ = ["SimulatedUpstream"]


class SimulatedUpstream:
    """Answers like ``model`` would: its latency, verbosity and error rate."""

    simulated = True  # its answers are placeholders: no score a judge's parser could read

    def __init__(self, model: SimModel, rng: np.random.Generator, latency_scale: float = 1.0) -> None:
        self.model = model
        self._rng = rng
        self._latency_s = model.latency_s * latency_scale

    def _prompt_text(self, call: UpstreamCall) -> str:
        from service.schemas import message_text

        return " ".join(message_text(m) for m in call.request.messages)

    async def complete(self, call: UpstreamCall) -> Completion:
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        if self.model.error_rate > 0 and self._rng.random() < self.model.error_rate:
            raise UpstreamError(f"{self.model.name}: simulated upstream error", status=503)
        prompt = self._prompt_text(call)
        text, tokens = answer(self.model, prompt)
        limit = call.request.max_completion_tokens or call.request.max_tokens
        if limit:
            tokens = min(tokens, limit)
        return Completion(text, estimate_tokens(prompt), tokens, "stop" if not limit or tokens < limit else "length")

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        done = await self.complete(call)
        words = done.text.split(" ")
        for i, word in enumerate(words):
            yield Chunk(word if i == 0 else " " + word)
        yield Chunk("", done.finish_reason, done.prompt_tokens, done.completion_tokens)

    async def aclose(self) -> None:
        return None
