"""The chat-completions use case: parse, screen (rules), route, dispatch with failover, answer, record.

Per request ``ChatService`` has the request parsed and routed by ``RequestRouter``
(``service/route_request.py``: language, embedding, conversation context, rules, one Thompson
decision on the live snapshot), then serves it from the response cache, runs a cascade, or
calls the provider (failing over by the posterior, ``service/failover.py``), encodes the answer
and records what happened. After routing, the request travels as one ``Turn``
(``service/records.py``). Nothing here waits on Kafka or ClickHouse: events go to the sink's
in-memory buffer. The rest of the HTTP layer (metrics, breakers, the live view, feedback) is
wired into ``service.app.Deps`` by the composition root, not reached through this service.
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Mapping

import msgspec
import numpy as np

from feedback.events import uuid7
from learner.cache import Hit
from learner.embedding import Embedder
from learner.language import LanguageDetector, NoDetector
from service.caching import Ask, ResponseCache
from service.cascade import Cascades, run_cascade
from service.conversations import Conversations
from service.errors import ApiError
from service.evaluation import Evaluation
from service.failover import AllFailed, Attempt, Failover
from service.metrics import Registry
from service.records import Recorder, Routed, Turn
from service.rerequest import RerequestTracker
from service.route_request import PolicyWeights, PoolModel, RequestRouter
from service.routing import Router
from service.rules import Rules
from service.schemas import ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChoiceMessage, ChunkChoice, Delta, Usage
from service.tenants import ANONYMOUS, Caller
from service.upstream import Chunk, Completion, Upstream, UpstreamCall, UpstreamError

__all__ = ["Answer", "ChatParts", "ChatService", "PolicyWeights", "PoolModel", "Routed", "StreamAnswer"]

log = logging.getLogger("turnout.chat")

_enc = msgspec.json.Encoder()
_NO_HEADERS: Mapping[str, str] = {}


class ChatParts(msgspec.Struct, frozen=True):
    """The gateway's parts of the request path; ``service.gateway.chat_parts`` builds them from settings."""

    failover: Failover
    rules: Rules
    rerequests: RerequestTracker | None = None  # None: re-requests are not detected
    session_header: str = "x-session-id"  # names the asker of a request without ``user``
    log_requests: bool = False
    cache: ResponseCache | None = None  # None: no response cache (service/caching.py)
    language: LanguageDetector = NoDetector()  # the prompt's language (learner/language.py)
    language_weight: float = 0.0  # [language] weight: its part in the routing context
    conversations: Conversations | None = None  # None: every request routed alone (service/conversations.py)
    cascades: Cascades | None = None  # None: no [[cascades]] (service/cascade.py)
    evaluation: Evaluation | None = None  # None: no judge, no shadow (service/evaluation.py)


class Answer(msgspec.Struct, frozen=True):
    """A complete JSON answer, for the HTTP layer to send as it is."""

    body: bytes
    headers: dict[str, str]


class StreamAnswer(msgspec.Struct, frozen=True):
    """A server-sent-event answer: headers now, then ``chunks`` (each a whole SSE frame)."""

    chunks: AsyncIterator[bytes]
    headers: dict[str, str]


def _cost(model: PoolModel, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * model.price_in_per_mtok + completion_tokens * model.price_out_per_mtok) / 1e6


class ChatService:
    def __init__(
        self,
        *,
        embedder: Embedder,
        router: Router,
        pool: tuple[PoolModel, ...],
        upstreams: Mapping[str, Upstream],
        policies: Mapping[str, PolicyWeights],
        parts: ChatParts,
        records: Recorder,
        metrics: Registry,
        rng: np.random.Generator,
    ) -> None:
        self.router = router
        self.pool = pool
        self.by_name = {m.name: i for i, m in enumerate(pool)}
        self.upstreams = upstreams
        self.failover = parts.failover
        self.rerequests = parts.rerequests
        self.session_header = parts.session_header
        self.log_requests = parts.log_requests
        self.cache = parts.cache
        self.conversations = parts.conversations
        self.cascades = parts.cascades
        self.evaluation = parts.evaluation
        self.records = records
        self.metrics = metrics
        self.routing = RequestRouter(embedder=embedder, router=router, pool=pool, policies=policies, parts=parts,
                                     metrics=metrics, rng=rng)  # fmt: skip
        self.parse = self.routing.parse
        self.route = self.routing.route


    # -- one request's turn ----------------------------------------------------------------

    def _begin(self, raw: bytes, caller: Caller, headers: Mapping[str, str],
               started: float | None) -> tuple[Turn, Ask | None]:  # fmt: skip
        """Parse, the cache's keys, route; then the decision id, re-request detection and the
        overhead metric. The keys are made from the body just decoded, while it and the JSON
        decoder are still in the CPU's caches: after routing has read the embedder's tables and
        the view's draws, the same work costs more (docs/cache.md)."""
        started = started or time.perf_counter()
        req = self.parse(raw)
        asker = req.user or headers.get(self.session_header, "")
        ask = None if self.cache is None else self.cache.ask(raw, req.temperature, caller, asker, headers)
        routed = self.route(req, caller, headers)
        routed_on = routed.embedding if routed.context is None else routed.context
        turn = Turn(req, caller, routed, uuid7(), np.ascontiguousarray(routed_on, dtype="<f4").tobytes(),
                    started, asker)  # fmt: skip
        if self.rerequests is not None:
            previous = self.rerequests.observe(caller.tenant.name, turn.asker, turn.decision_id, routed.embedding)
            if previous is not None:
                self.records.negative(previous, turn, "re_request")
                if self.cache is not None:  # the answer re-asked leaves the cache (before this lookup)
                    self.cache.rerequest(caller.tenant.name, previous)
        self.metrics.overhead.observe(time.perf_counter() - started)
        self.metrics.languages.inc(routed.language)
        return turn, ask

    def _failed(self, turn: Turn, exc: AllFailed) -> ApiError:
        """Record a request no model answered and the error the client gets."""
        self.records.attempts(turn, exc.attempts)
        errors = tuple(f"{a.model}: {a.error}" for a in exc.attempts)
        if exc.client_error is not None:
            errors += (str(exc.client_error),)
        self.records.outcome(turn, status="error", fallbacks=max(0, len(exc.attempts) - 1), errors=errors,
                             latency_ms=(time.perf_counter() - turn.started) * 1000.0)  # fmt: skip
        if self.rerequests is not None:
            self.rerequests.forget(turn.caller.tenant.name, turn.asker, turn.decision_id)
        self.metrics.requests.inc(turn.routed.policy, "", "error")
        log.warning("no model answered: %s", "; ".join(errors) or "all unavailable",
                    extra={"decision_id": turn.decision_id, "tenant": turn.caller.tenant.name})  # fmt: skip
        h = {"x-turnout-decision-id": turn.decision_id}
        if exc.client_error is not None:
            status = exc.client_error.status or 400
            return ApiError(status, f"the provider refused the request: {exc.client_error}",
                            code="upstream_rejected", headers=h)  # fmt: skip
        if exc.retry_after_s is not None:
            h["retry-after"] = str(int(np.ceil(exc.retry_after_s)))
            return ApiError(503, "every candidate model is unavailable (circuit open or rate limited)"
                            + (": " + "; ".join(errors) if errors else ""), code="upstream_unavailable", headers=h)  # fmt: skip
        return ApiError(502, "every candidate model failed: " + "; ".join(errors), code="upstream_error", headers=h)

    @staticmethod
    def _headers(turn: Turn, model: str, cost_usd: float, fallbacks: int) -> dict[str, str]:
        return {
            "x-turnout-decision-id": turn.decision_id,
            "x-turnout-model": model,
            "x-turnout-cluster": str(turn.routed.choice.cluster),
            "x-turnout-cost-usd": f"{cost_usd:.8f}",
            "x-turnout-fallbacks": str(fallbacks),
            "x-turnout-language": turn.routed.language,
        }

    def _cached(self, turn: Turn, ask: Ask | None) -> Hit | None:
        """A hit the request may be served, through its way into the response cache (recorded as
        a decision of model "cache", cost 0, naming the decision whose answer it serves)."""
        if ask is None or self.cache is None:
            return None
        hit = self.cache.lookup(ask, turn.routed, self.router.view)
        if hit is not None:
            self.cache.served(hit, turn.decision_id)
            self.records.emit(self.records.decision(
                turn, turn.decision_id, policy="cache", arm="cache", propensity=1.0, model="cache",
                prompt_tokens=turn.routed.prompt_tokens, completion_tokens=hit.entry.completion_tokens,
                cost_usd=0.0, latency_ms=(time.perf_counter() - turn.started) * 1000.0,
                source_decision_id=hit.entry.source_decision_id,
            ))  # fmt: skip
            self.metrics.requests.inc("cache", "cache", "ok")
        return hit

    def _hit_headers(self, turn: Turn, hit: Hit) -> dict[str, str]:
        h = self._headers(turn, "cache", 0.0, 0)
        h["x-turnout-cache"] = "hit-" + hit.kind
        h["x-turnout-cache-source"] = hit.entry.source_decision_id
        return h

    def _offer(self, ask: Ask | None, turn: Turn, model: str, text: str, finish: str, prompt_tokens: int,
               completion_tokens: int, cost_usd: float) -> None:  # fmt: skip
        if ask is not None and self.cache is not None:
            self.cache.offer(ask, turn.routed, self.router.view, turn.decision_id, model, text, finish,
                             prompt_tokens, completion_tokens, cost_usd)  # fmt: skip

    def _bill(self, turn: Turn, model: PoolModel, prompt_tokens: int, completion_tokens: int) -> float:
        """USD of an answer: its tokens at the model's prices, the conversation's cached prefix at
        its cached-input price when the model also answered the turn before (an estimate: the
        provider's own count of cached tokens is not read)."""
        cost = _cost(model, prompt_tokens, completion_tokens)
        if self.conversations is not None and turn.routed.thread is not None:
            cost -= self.conversations.discount_usd(turn.routed.thread, model.name, prompt_tokens)
        return cost

    def _call(self, req: ChatRequest, raw: bytes, model: str) -> UpstreamCall:
        return UpstreamCall(req, raw, self.pool[self.by_name[model]].upstream_model)

    # -- non-streaming ---------------------------------------------------------------------

    async def complete(self, raw: bytes, caller: Caller = ANONYMOUS, headers: Mapping[str, str] = _NO_HEADERS,
                       started: float | None = None) -> Answer:  # fmt: skip
        turn, ask = self._begin(raw, caller, headers, started)
        hit = self._cached(turn, ask)
        if hit is not None:  # answered without calling any provider
            body = ResponseCache.body(hit, turn.decision_id, turn.routed.prompt_tokens)
            return Answer(body, self._hit_headers(turn, hit))
        cascade = self.cascades.get(turn.routed.arm) if self.cascades is not None else None
        if cascade is not None:  # the cheap model, the gate, the strong one if it rejects (service/cascade.py)
            body, h = await run_cascade(self.cascades, self, turn, raw, ask, cascade[0])  # type: ignore[arg-type]
            return Answer(body, h)
        upstream_hist = self.metrics.upstream

        async def call(name: str) -> Completion:
            t = time.perf_counter()
            try:
                return await self.upstreams[name].complete(self._call(turn.req, raw, name))
            finally:
                upstream_hist.observe(time.perf_counter() - t, name)

        try:
            name, done, attempts = await self.failover.run(turn.routed.candidates, call)
        except AllFailed as exc:
            raise self._failed(turn, exc) from None
        model = self.pool[self.by_name[name]]
        cost = self._bill(turn, model, done.prompt_tokens, done.completion_tokens)
        latency_ms = (time.perf_counter() - turn.started) * 1000.0
        if attempts:
            self.records.attempts(turn, attempts)
            self.metrics.fallbacks.inc(name)
        self.records.outcome(
            turn, model=name, fallbacks=len(attempts), errors=tuple(f"{a.model}: {a.error}" for a in attempts),
            prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens, cost_usd=cost,
            latency_ms=latency_ms,
        )  # fmt: skip
        self.metrics.requests.inc(turn.routed.policy, name, "ok")
        if self.conversations is not None:
            self.conversations.answered(turn.routed.thread, name)
        self._offer(ask, turn, name, done.text, done.finish_reason, done.prompt_tokens, done.completion_tokens, cost)
        if self.evaluation is not None:  # draws only; a grade or a shadow runs in the background
            self.evaluation.answered(turn, name, done.text, cost)
        if self.log_requests:
            log.info("answered", extra={"decision_id": turn.decision_id, "tenant": turn.caller.tenant.name,
                                        "model": name, "fallbacks": len(attempts),
                                        "latency_ms": round(latency_ms, 2)})  # fmt: skip
        body = ChatCompletion(
            id="chatcmpl-" + turn.decision_id.replace("-", ""),
            created=int(time.time()),
            model=name,
            choices=[Choice(0, ChoiceMessage("assistant", done.text), done.finish_reason)],
            usage=Usage(done.prompt_tokens, done.completion_tokens, done.prompt_tokens + done.completion_tokens),
        )
        return Answer(_enc.encode(body), self._headers(turn, name, cost, len(attempts)))

    # -- streaming -------------------------------------------------------------------------

    async def stream(self, raw: bytes, caller: Caller = ANONYMOUS, headers: Mapping[str, str] = _NO_HEADERS,
                     started: float | None = None) -> StreamAnswer:  # fmt: skip
        """Fail over only until the first chunk: the response (and its headers) starts after it."""
        turn, ask = self._begin(raw, caller, headers, started)
        hit = self._cached(turn, ask)
        if hit is not None:  # replayed as a normal stream, without calling any provider
            usage = bool(turn.req.stream_options and turn.req.stream_options.include_usage)
            frames = ResponseCache.frames(hit, turn.decision_id, turn.routed.prompt_tokens, usage)
            return StreamAnswer(frames, self._hit_headers(turn, hit))

        async def call(name: str) -> tuple[Chunk, AsyncIterator[Chunk]]:
            agen = self.upstreams[name].stream(self._call(turn.req, raw, name))
            try:
                return await agen.__anext__(), agen
            except StopAsyncIteration:
                raise UpstreamError(f"{name}: empty stream") from None
            except BaseException:
                await agen.aclose()  # type: ignore[attr-defined]
                raise

        try:
            name, (first, agen), attempts = await self.failover.run(turn.routed.candidates, call)
        except AllFailed as exc:
            raise self._failed(turn, exc) from None
        if attempts:
            self.records.attempts(turn, attempts)
            self.metrics.fallbacks.inc(name)
        model = self.pool[self.by_name[name]]
        estimate = float(turn.routed.costs[self.by_name[name]])
        body = self._sse(turn, model, attempts, first, agen, ask)
        return StreamAnswer(body, self._headers(turn, name, estimate, len(attempts)))

    async def _sse(self, turn: Turn, model: PoolModel, attempts: list[Attempt], first: Chunk,
                   agen: AsyncIterator[Chunk], ask: Ask | None = None) -> AsyncIterator[bytes]:  # fmt: skip
        cid = "chatcmpl-" + turn.decision_id.replace("-", "")
        created = int(time.time())

        def frame(delta: Delta, finish: str | None = None, usage: Usage | None = None, empty: bool = False) -> bytes:
            choices = [] if empty else [ChunkChoice(0, delta, finish)]
            chunk = ChatCompletionChunk(id=cid, created=created, model=model.name, choices=choices, usage=usage)
            return b"data: " + _enc.encode(chunk) + b"\n\n"

        status, prompt_tokens, completion_tokens = "ok", 0, 0
        errors = [f"{a.model}: {a.error}" for a in attempts]
        texts: list[str] = []  # the answer, for the response cache
        yield frame(Delta(role="assistant", content=""))
        try:
            chunk: Chunk | None = first
            finish = "stop"
            while chunk is not None:
                if chunk.text:
                    texts.append(chunk.text)
                    yield frame(Delta(content=chunk.text))
                if chunk.finish_reason:
                    finish = chunk.finish_reason
                    prompt_tokens, completion_tokens = chunk.prompt_tokens, chunk.completion_tokens
                try:
                    chunk = await agen.__anext__()
                except StopAsyncIteration:
                    chunk = None
            yield frame(Delta(), finish)
        except UpstreamError as exc:  # after the first byte: end the stream with an error chunk
            status = "error"
            errors.append(f"{model.name}: {exc}")
            self.failover.breakers[model.name].failure(exc.retry_after_s)
            err = {"error": {"message": f"upstream {model.name} failed mid-stream: {exc}", "type": "api_error",
                             "code": "upstream_error"}}  # fmt: skip
            yield b"data: " + _enc.encode(err) + b"\n\n"
        finally:
            await agen.aclose()  # type: ignore[attr-defined]
            self.records.outcome(
                turn, model=model.name, status=status, fallbacks=len(attempts), errors=tuple(errors),
                prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                cost_usd=self._bill(turn, model, prompt_tokens, completion_tokens),
                latency_ms=(time.perf_counter() - turn.started) * 1000.0,
            )  # fmt: skip
            if status == "error":
                self.records.negative(turn.decision_id, turn, "upstream_error")
                log.warning("stream of %s failed mid-way", model.name,
                            extra={"decision_id": turn.decision_id, "tenant": turn.caller.tenant.name})  # fmt: skip
            self.metrics.requests.inc(turn.routed.policy, model.name, status)
        if status == "ok":  # streamed to its end (a client that left stops the generator above)
            if self.conversations is not None:
                self.conversations.answered(turn.routed.thread, model.name)
            self._offer(ask, turn, model.name, "".join(texts), finish, prompt_tokens, completion_tokens,
                        self._bill(turn, model, prompt_tokens, completion_tokens))  # fmt: skip
            if self.evaluation is not None:
                self.evaluation.answered(turn, model.name, "".join(texts),
                                         self._bill(turn, model, prompt_tokens, completion_tokens))  # fmt: skip
        req = turn.req
        if status == "ok" and req.stream_options and req.stream_options.include_usage:
            usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
            yield frame(Delta(), usage=usage, empty=True)
        yield b"data: [DONE]\n\n"
