"""Upstream adapter for any OpenAI-compatible HTTP endpoint (aiohttp, pooled keep-alive connections).

aiohttp rather than httpx: on the request path, against a local upstream, an httpx AsyncClient
call cost about 1.4 ms of CPU and an aiohttp call about 0.2 ms (bench/gateway.py, docs/gateway.md);
the provider call is most of what a gateway spends per request.

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

from service.simulated import estimate_tokens
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


class _Choice(msgspec.Struct, frozen=True):
    message: _Message = _Message()
    finish_reason: str | None = None


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
_dict_dec = msgspec.json.Decoder(dict)
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
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ttft_timeout_s = ttft_timeout_s
        self.max_connections = max_connections
        self._headers = {"content-type": "application/json", "accept-encoding": "identity"}
        key = (env if env is not None else os.environ).get(api_key_env, "") if api_key_env else ""
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:  # never the headers: they hold the key
        return f"OpenAIUpstream({self.name!r}, {self.url!r})"

    def _client(self) -> Any:
        """The pooled session of the running loop, made on first use (aiohttp binds to a loop)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            import aiohttp

            if self._session is not None:  # a previous loop ended: drop its pool without awaiting
                self._session.detach()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s,
                                              sock_read=self.read_timeout_s),  # fmt: skip
                headers=self._headers,
                skip_auto_headers=("User-Agent",),
            )
            self._loop = loop
        return self._session

    def _body(self, call: UpstreamCall, stream: bool) -> bytes:
        body: dict[str, Any] = _dict_dec.decode(call.raw)
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

    def _transport_error(self, exc: BaseException, what: str = "") -> UpstreamError:
        kind = "timeout" if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) else type(exc).__name__
        return UpstreamError(f"{self.name}: {what or kind}")

    async def complete(self, call: UpstreamCall) -> Completion:
        import aiohttp

        try:
            async with self._client().post(self.url, data=self._body(call, False)) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    raise self._fail(resp.status, resp.headers, payload)
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, OSError) as exc:
            raise self._transport_error(exc) from None
        try:
            answer = _answer_dec.decode(payload)
            choice = answer.choices[0]
        except (msgspec.MsgspecError, IndexError):
            raise UpstreamError(f"{self.name}: malformed response") from None
        text = choice.message.content or ""
        usage = answer.usage or _Usage()
        prompt = usage.prompt_tokens or _prompt_tokens(call)
        completion = usage.completion_tokens or estimate_tokens(text)
        return Completion(text, int(prompt), int(completion), choice.finish_reason or "stop")

    async def stream(self, call: UpstreamCall) -> AsyncIterator[Chunk]:
        """Chunks of the answer; the first arrives within ``ttft_timeout_s`` or this raises."""
        import aiohttp

        state = _StreamState()
        resp = None
        try:
            async with asyncio.timeout(self.ttft_timeout_s):
                resp = await self._client().post(self.url, data=self._body(call, True))
                if resp.status != 200:
                    raise self._fail(resp.status, resp.headers, await resp.read())
                first = await self._next(resp, state)
        except UpstreamError:
            if resp is not None:
                resp.close()
            raise
        except TimeoutError:
            if resp is not None:
                resp.close()
            raise UpstreamError(f"{self.name}: no first token within {self.ttft_timeout_s:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            if resp is not None:
                resp.close()
            raise self._transport_error(exc) from None
        drained = False
        try:
            chunk = first
            while chunk is not None:
                yield chunk
                chunk = await self._next(resp, state)
            await resp.content.read()  # to the end, so the connection goes back to the pool
            drained = True
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, OSError) as exc:
            raise self._transport_error(exc) from None
        finally:
            resp.release() if drained else resp.close()
        yield Chunk("", state.finish, state.prompt or _prompt_tokens(call),
                    state.completion or max(1, state.chars // 4))  # fmt: skip

    async def _next(self, resp: Any, state: "_StreamState") -> Chunk | None:
        """The next chunk with text, or None at the end of the stream."""
        while not state.done:
            line = await resp.content.readline()
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
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


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
