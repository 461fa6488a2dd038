"""The upstream port: one LLM provider behind a small async interface.

Adapters: ``simulated.py`` (the simulated pool, no network) and ``openai_http.py`` (any
OpenAI-compatible HTTP endpoint).
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol

import msgspec

from service.schemas import ChatRequest

__all__ = ["Chunk", "Completion", "Upstream", "UpstreamCall", "UpstreamError"]


class UpstreamCall(msgspec.Struct, frozen=True):
    """What to send: the client's request, its raw body (to pass unknown fields on), the model."""

    request: ChatRequest
    raw: bytes
    upstream_model: str


class Completion(msgspec.Struct, frozen=True):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    logprobs: tuple[float, ...] = ()  # per token, where the provider returned them (a cascade's gate reads them)


class Chunk(msgspec.Struct, frozen=True):
    """A piece of a streamed answer; the last one carries the finish reason and usage."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class UpstreamError(Exception):
    """A provider failed; ``retryable`` says whether another attempt or model may succeed."""

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None,
                 retryable: bool = True) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s
        self.retryable = retryable


class Upstream(Protocol):
    async def complete(self, call: UpstreamCall) -> Completion: ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...
