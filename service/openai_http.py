"""Upstream adapter for any OpenAI-compatible HTTP endpoint (httpx, pooled connections)."""

from __future__ import annotations

import os
from typing import Any, AsyncIterator

import httpx
import msgspec

from service.simulated import estimate_tokens
from service.upstream import Chunk, Completion, UpstreamCall, UpstreamError

__all__ = ["OpenAIUpstream"]

_RETRYABLE = {408, 409, 429, 500, 502, 503, 504}


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class OpenAIUpstream:
    """Sends the client's request body with ``model`` replaced by the upstream model name.

    The API key is read from the environment variable named in config and is never logged
    or included in an error message.
    """

    def __init__(self, name: str, base_url: str, api_key_env: str = "", timeout_s: float = 60.0,
                 connect_timeout_s: float = 5.0, max_connections: int = 100) -> None:  # fmt: skip
        self.name = name
        headers = {"content-type": "application/json"}
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def _body(self, call: UpstreamCall, stream: bool) -> bytes:
        body: dict[str, Any] = msgspec.json.decode(call.raw)
        body["model"] = call.upstream_model
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        return msgspec.json.encode(body)

    def _fail(self, resp: httpx.Response) -> UpstreamError:
        return UpstreamError(
            f"{self.name}: HTTP {resp.status_code}",
            status=resp.status_code,
            retry_after_s=_retry_after(resp),
            retryable=resp.status_code in _RETRYABLE,
        )

    async def complete(self, call: UpstreamCall) -> Completion:
        try:
            resp = await self._client.post("/chat/completions", content=self._body(call, False))
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.name}: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise self._fail(resp)
        try:
            data = msgspec.json.decode(resp.content)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
        except (msgspec.DecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise UpstreamError(f"{self.name}: malformed response") from None
        prompt = usage.get("prompt_tokens") or sum(
            estimate_tokens(str(m.content or "")) for m in call.request.messages
        )
        completion = usage.get("completion_tokens") or estimate_tokens(text)
        return Completion(text, int(prompt), int(completion), choice.get("finish_reason") or "stop")

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        text_len = 0
        finish, prompt, completion = "stop", 0, 0
        try:
            async with self._client.stream("POST", "/chat/completions", content=self._body(call, True)) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._fail(resp)
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        data = msgspec.json.decode(payload)
                    except msgspec.DecodeError:
                        raise UpstreamError(f"{self.name}: malformed stream chunk") from None
                    if data.get("error"):
                        raise UpstreamError(f"{self.name}: error in stream")
                    if data.get("usage"):
                        prompt = data["usage"].get("prompt_tokens", 0)
                        completion = data["usage"].get("completion_tokens", 0)
                    for ch in data.get("choices") or []:
                        piece = (ch.get("delta") or {}).get("content") or ""
                        if ch.get("finish_reason"):
                            finish = ch["finish_reason"]
                        if piece:
                            text_len += len(piece)
                            yield Chunk(piece)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.name}: {type(exc).__name__}") from None
        if not prompt:
            prompt = sum(estimate_tokens(str(m.content or "")) for m in call.request.messages)
        yield Chunk("", finish, int(prompt), int(completion or max(1, text_len // 4)))

    async def aclose(self) -> None:
        await self._client.aclose()
