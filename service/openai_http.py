"""Upstream adapter for any OpenAI-compatible HTTP endpoint, over pooled keep-alive connections.

The connections are ``service.http1``'s: a provider call is most of what the gateway spends per
request, and a general HTTP client costs 4x (aiohttp) to 25x (httpx) more CPU per call here.

Timeouts: ``connect_timeout_s`` to get a connection (also when the pool is full), ``read_timeout_s``
between two reads, ``ttft_timeout_s`` until the first token of a stream. The API key comes from
the environment variable named in config; it is sent in a header and never appears in an error,
a log line or an event (provider error bodies, which can echo a masked key, are not passed on).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import time
from typing import Any, AsyncIterator, Mapping

import msgspec

from learner.costs import estimate_tokens
from service.http1 import ConnectError, Disconnected, Http1Pool, HttpError, ReadTimeout, Response
from service.upstream import Chunk, Completion, UpstreamCall, UpstreamError

__all__ = ["OpenAIUpstream", "parse_retry_after"]

# the client's fault: another provider would refuse it too, so neither retried nor failed over
_CLIENT_ERRORS = {400, 413, 422}
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class _Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Message(msgspec.Struct, frozen=True):
    content: str | None = None


class _TokenLogprob(msgspec.Struct, frozen=True):
    logprob: float = 0.0


class _Logprobs(msgspec.Struct, frozen=True):
    content: list[_TokenLogprob] | None = None


class _Choice(msgspec.Struct, frozen=True):
    message: _Message = _Message()
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _Answer(msgspec.Struct, frozen=True):
    choices: list[_Choice] = []
    usage: _Usage | None = None


class _Delta(msgspec.Struct, frozen=True):
    content: str | None = None


class _StreamChoice(msgspec.Struct, frozen=True):
    delta: _Delta = _Delta()
    finish_reason: str | None = None


class _StreamChunk(msgspec.Struct, frozen=True):
    choices: list[_StreamChoice] = []
    usage: _Usage | None = None
    error: Any = None


class _ErrorDetail(msgspec.Struct, frozen=True):
    type: Any = None
    code: Any = None


class _ErrorBody(msgspec.Struct, frozen=True):
    error: _ErrorDetail | None = None


_answer_dec = msgspec.json.Decoder(_Answer)
_chunk_dec = msgspec.json.Decoder(_StreamChunk)
_error_dec = msgspec.json.Decoder(_ErrorBody)
# the top level of a request body, each value kept as its JSON text: what is sent upstream is the
# client's body with model, stream and stream_options set, without decoding the messages again
# (half the CPU of a full decode and encode on a 10 kB body)
_fields_dec = msgspec.json.Decoder(dict[str, msgspec.Raw])
_enc = msgspec.json.Encoder()


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _prompt_tokens(call: UpstreamCall) -> int:
    from service.schemas import message_text

    return sum(estimate_tokens(message_text(m)) for m in call.request.messages)


class OpenAIUpstream:
    """Sends the client's request body (unknown fields kept) with ``model`` set to the upstream's."""

    def __init__(self, name: str, base_url: str, api_key_env: str = "", read_timeout_s: float = 60.0,
                 connect_timeout_s: float = 5.0, ttft_timeout_s: float = 30.0, max_connections: int = 256,
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ttft_timeout_s = ttft_timeout_s
        headers = {"content-type": "application/json"}
        key = (env if env is not None else os.environ).get(api_key_env, "") if api_key_env else ""
        if key:
            headers["authorization"] = f"Bearer {key}"
        self._pool = Http1Pool(self.base_url, headers, max_connections, connect_timeout_s, read_timeout_s)

    def __repr__(self) -> str:  # never the headers: they hold the key
        return f"OpenAIUpstream({self.name!r}, {self.base_url!r})"

    def _body(self, call: UpstreamCall, stream: bool) -> bytes:
        body: dict[str, Any] = _fields_dec.decode(call.raw)
        body["model"] = call.upstream_model
        body["stream"] = stream
        if stream:
            body["stream_options"] = {"include_usage": True}
        else:
            body.pop("stream_options", None)
        return _enc.encode(body)

    def _fail(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        detail = ""
        try:
            err = _error_dec.decode(body).error
            kinds = [str(v) for v in (err.type, err.code) if v] if err else []
            safe = [k for k in kinds if _SAFE_TOKEN.fullmatch(k)]
            detail = f" ({', '.join(safe)})" if safe else ""
        except msgspec.MsgspecError:
            pass
        return UpstreamError(f"{self.name}: HTTP {status}{detail}", status=status,
                             retry_after_s=parse_retry_after(headers), retryable=status not in _CLIENT_ERRORS)  # fmt: skip

    def _transport_error(self, exc: HttpError) -> UpstreamError:
        kind = {ReadTimeout: "timeout", ConnectError: "connect failed", Disconnected: "disconnected"}[type(exc)]
        return UpstreamError(f"{self.name}: {kind} ({exc})")

    async def complete(self, call: UpstreamCall) -> Completion:
        resp = None
        try:
            resp = await self._pool.post("/chat/completions", self._body(call, False))
            payload = await resp.read()
        except HttpError as exc:
            raise self._transport_error(exc) from None
        finally:
            if resp is not None:
                resp.release()
        if resp.status != 200:
            raise self._fail(resp.status, resp.headers, payload)
        try:
            answer = _answer_dec.decode(payload)
            choice = answer.choices[0]
        except (msgspec.MsgspecError, IndexError):
            raise UpstreamError(f"{self.name}: malformed response") from None
        text = choice.message.content or ""
        usage = answer.usage or _Usage()
        prompt = usage.prompt_tokens or _prompt_tokens(call)
        completion = usage.completion_tokens or estimate_tokens(text)
        lp = tuple(t.logprob for t in choice.logprobs.content or ()) if choice.logprobs else ()
        return Completion(text, int(prompt), int(completion), choice.finish_reason or "stop", lp)

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """Chunks of the answer; the first arrives within ``ttft_timeout_s`` or this raises."""
        state = _StreamState()
        resp: Response | None = None
        try:
            try:
                async with asyncio.timeout(self.ttft_timeout_s):
                    resp = await self._pool.post("/chat/completions", self._body(call, True))
                    if resp.status != 200:
                        raise self._fail(resp.status, resp.headers, await resp.read())
                    first = await self._next(resp, state)
            except TimeoutError:
                raise UpstreamError(f"{self.name}: no first token within {self.ttft_timeout_s:g} s") from None
            chunk = first
            while chunk is not None:
                yield chunk
                chunk = await self._next(resp, state)
            await resp.read()  # to the end, so the connection goes back to the pool
        except HttpError as exc:
            raise self._transport_error(exc) from None
        finally:
            if resp is not None:
                resp.release()  # closes the connection unless the answer was read to its end
        yield Chunk("", state.finish, state.prompt or _prompt_tokens(call),
                    state.completion or max(1, state.chars // 4))  # fmt: skip

    async def _next(self, resp: Response, state: "_StreamState") -> Chunk | None:
        """The next chunk with text, or None at the end of the stream."""
        while not state.done:
            line = await resp.readline()
            if not line:
                if not state.saw_done and not state.finish_seen:
                    raise UpstreamError(f"{self.name}: stream ended early")
                return None
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                state.done = state.saw_done = True
                return None
            try:
                data = _chunk_dec.decode(payload)
            except msgspec.MsgspecError:
                raise UpstreamError(f"{self.name}: malformed stream chunk") from None
            if data.error:
                raise UpstreamError(f"{self.name}: error in stream")
            if data.usage:
                state.prompt = data.usage.prompt_tokens or state.prompt
                state.completion = data.usage.completion_tokens or state.completion
            text = ""
            for ch in data.choices:
                if ch.finish_reason:
                    state.finish, state.finish_seen = ch.finish_reason, True
                text += ch.delta.content or ""
            if text:
                state.chars += len(text)
                return Chunk(text)
        return None

    async def aclose(self) -> None:
        await self._pool.aclose()


class _StreamState:
    __slots__ = ("finish", "finish_seen", "prompt", "completion", "chars", "done", "saw_done")

    def __init__(self) -> None:
        self.finish = "stop"
        self.finish_seen = False
        self.prompt = 0
        self.completion = 0
        self.chars = 0
        self.done = False
        self.saw_done = False
