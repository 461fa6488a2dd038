"""The chat-completions use case: parse, screen (rules), route, dispatch with failover, answer, record.

Per request ``ChatService`` decodes the body, detects the last user message's language and embeds
it, mixes in its conversation's earlier turns and the language step (``learner.language``; the
offline runs call ``routing_context``, the same without a conversation), runs the rules, takes
one Thompson decision from the live snapshot (``learner.routing.decide`` on the one view it read),
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
from learner.budget import tenant_budget_key
from learner.costs import request_tokens
from learner.embedding import Embedder
from learner.language import LanguageDetector, NoDetector, in_language
from service.bodies import decode_body
from service.caching import Ask, ResponseCache
from service.cascade import Cascades, run_cascade
from service.errors import ApiError
from service.evaluation import Evaluation
from service.failover import AllFailed, Attempt, Failover
from service.metrics import Registry
from service.conversations import Conversations, Thread
from service.records import Recorder, Routed, Turn
from service.rerequest import RerequestTracker
from learner.clusters import assign
from learner.cache import Hit
from learner.routing import RouteChoice, View, decide
from service.routing import Router
from service.rules import NoCandidate, Rules
from service.schemas import (
    ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChoiceMessage, ChunkChoice, Delta,
    Usage, message_text,
)  # fmt: skip
from service.tenants import ANONYMOUS, Caller
from service.upstream import Chunk, Completion, Upstream, UpstreamCall, UpstreamError

__all__ = ["Answer", "ChatParts", "ChatService", "PolicyWeights", "PoolModel", "Routed", "StreamAnswer"]

log = logging.getLogger("turnout.chat")

_chat_decoder = msgspec.json.Decoder(ChatRequest)
_enc = msgspec.json.Encoder()
_NO_HEADERS: Mapping[str, str] = {}


class PoolModel(msgspec.Struct, frozen=True):
    name: str
    upstream_model: str
    price_in_per_mtok: float
    price_out_per_mtok: float
    tier: float = 0.6
    context_window: int = 128_000
    price_cached_in_per_mtok: float | None = None  # a cached prompt prefix's price; None: no discount


class PolicyWeights(msgspec.Struct, frozen=True):
    cost_weight: float
    latency_weight: float = 0.0


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
        self.embedder = embedder
        self.router = router
        self.pool = pool
        self.by_name = {m.name: i for i, m in enumerate(pool)}
        self.upstreams = upstreams
        self.policies = policies
        self.failover = parts.failover
        self.rules = parts.rules
        self.rerequests = parts.rerequests
        self.session_header = parts.session_header
        self.log_requests = parts.log_requests
        self.cache = parts.cache
        self.language = parts.language
        self.language_weight = parts.language_weight
        self.conversations = parts.conversations
        self.cascades = parts.cascades
        self.evaluation = parts.evaluation
        self.records = records
        self.metrics = metrics
        self.rng = rng
        self._tenant_masks: dict[tuple[str, ...], np.ndarray] = {}

    # -- routing ---------------------------------------------------------------------------

    def parse(self, raw: bytes) -> ChatRequest:
        req = decode_body(_chat_decoder, raw, "request body")
        if req.model not in self.policies and req.model not in self.by_name and req.model not in self.rules.aliases:
            known = ", ".join(sorted(self.policies) + sorted(self.by_name))
            raise ApiError(404, f"unknown model '{req.model}'; known models and policies: {known}",
                           param="model", code="model_not_found")  # fmt: skip
        if not any(m.role == "user" and message_text(m).strip() for m in req.messages):
            raise ApiError(422, "messages must contain a user message with non-empty content",
                           param="messages", code="invalid_value")  # fmt: skip
        return req

    def route(self, req: ChatRequest, caller: Caller = ANONYMOUS, headers: Mapping[str, str] = _NO_HEADERS) -> Routed:
        """Language, embedding and rules, then one Thompson decision among the models the rules allow."""
        tenant = caller.tenant
        text = next(message_text(m) for m in reversed(req.messages) if m.role == "user")
        prompt_tokens = request_tokens([message_text(m) for m in req.messages])
        view = self.router.view  # read once: a swap meanwhile cannot mix two snapshots
        policy = req.model if req.model in self.policies else tenant.policy
        weights = self.policies[policy]
        cost_weight = weights.cost_weight if tenant.cost_weight is None else tenant.cost_weight
        if tenant.budget_usd > 0:  # the tenant's own budget: the weight the learner keeps for it
            cost_weight = view.cost_weight(tenant_budget_key(tenant.name), cost_weight)
        elif tenant.cost_weight is None:  # a policy's budget: the live snapshot's weight for this policy
            cost_weight = view.cost_weight(policy, cost_weight)
        language = self.language.detect(text)
        embedding = self.embedder.embed([text])[0]
        thread, context = None, None
        if self.conversations is not None:  # routed in its conversation's context
            thread, context = self.conversations.thread(req.messages, tenant.name, req.user or "",
                                                        headers.get(self.session_header, ""), embedding,
                                                        prompt_tokens)  # fmt: skip
        at = in_language(embedding if context is None else context, language, self.language_weight)
        context = None if at is embedding else at
        cluster, margin = assign(at, view.centroids)
        costs = view.costs(cluster, prompt_tokens)
        pool_costs = costs if self.cascades is None else costs[: len(self.pool)]  # the rules screen models
        try:
            screen = self.rules.screen(
                text=text, prompt_tokens=prompt_tokens, max_tokens=req.max_completion_tokens or req.max_tokens,
                costs=lambda: pool_costs, requested=req.model, tenant=tenant.name,
                tenant_models=self._tenant_mask(tenant.models), max_cost_usd=tenant.max_cost_usd, headers=headers,
                language=language,
            )  # fmt: skip
        except NoCandidate as exc:
            self.metrics.rejected.inc(exc.code)
            raise ApiError(400, str(exc), param=exc.param, code=exc.code) from None
        placed = (cluster, margin)
        if screen.pinned >= 0:  # logged with propensity 1
            only = np.zeros(len(view.models), dtype=bool)
            only[screen.pinned] = True
            choice = decide(view, at, prompt_tokens, 0.0, 0.0, only, 0, placed)
            policy = "passthrough" if screen.rule == "requested" else "pinned"
            name = self.pool[screen.pinned].name
            return Routed(choice, embedding, text, prompt_tokens, policy, (name,), view.snapshot.version,
                          view.snapshot.clustering, name, screen.safety_class, costs, context, thread, language)  # fmt: skip
        allowed = None if screen.allowed is self.rules.all else screen.allowed
        if self.cascades is not None:  # the routing axis: the models, then the cascades (not for streams)
            allowed = self.cascades.widen(allowed, req.stream)
        if thread is not None and thread.previous_model and self.conversations is not None:
            kept = self._keep(self.conversations, thread, view, placed, costs, cost_weight, weights.latency_weight,
                              screen.allowed, req.stream)  # fmt: skip
            if kept is not None:  # stays on the model of the turn before: propensity 1, logged ``sticky``
                names = self._names(view, kept)
                return Routed(kept, embedding, text, prompt_tokens, policy, names, view.snapshot.version,
                              view.snapshot.clustering, names[0], screen.safety_class, costs, context,
                              msgspec.structs.replace(thread, sticky=True), language)  # fmt: skip
        row = int(self.rng.integers(1 << 30))
        choice = decide(view, at, prompt_tokens, cost_weight, weights.latency_weight, allowed, row, placed)
        escalated = self.rules.escalate(screen.allowed, choice.margin)
        if escalated is not screen.allowed:  # unsure of the cluster: decide again among strong models
            allowed = escalated if self.cascades is None else self.cascades.widen(escalated, req.stream)
            choice = decide(view, at, prompt_tokens, cost_weight, weights.latency_weight, allowed, row, placed)
        if tenant.exploration_cap < 1.0:
            choice = self._cap_exploration(view, choice, costs, cost_weight, weights.latency_weight,
                                           allowed, tenant.exploration_cap)  # fmt: skip
        names = self._names(view, choice)
        return Routed(choice, embedding, text, prompt_tokens, policy, names, view.snapshot.version,
                      view.snapshot.clustering, names[0], screen.safety_class, costs, context, thread, language)

    def _names(self, view: View, choice: RouteChoice) -> tuple[str, ...]:
        """The candidates to try: the chosen arm (a model, or a cascade), then the fallbacks that are models."""
        names = tuple(view.models[i] for i in (choice.arm, *choice.fallback_order))
        if self.cascades is not None:
            names = names[:1] + tuple(n for n in names[1:] if n in self.by_name)
        return names

    def _keep(self, convs: Conversations, thread: Thread, view: View, placed: tuple[int, float], costs: np.ndarray,
              cost_weight: float, latency_weight: float, allowed: np.ndarray,
              stream: bool = False) -> RouteChoice | None:  # fmt: skip
        """A turn kept on its conversation's model, or None: the rules (escalation included) and the
        model's breaker may move it, and so may economics (``Conversations.keep``)."""
        allowed = self.rules.escalate(allowed, placed[1])
        if self.cascades is not None:
            allowed = self.cascades.widen(None if allowed is self.rules.all else allowed, stream)
            allowed = self.rules.all if allowed is None else allowed
        breaker = self.failover.breakers.get(thread.previous_model)
        available = breaker is None or (breaker.state == "closed" and breaker.retry_in_s() == 0.0)
        return convs.keep(thread, view, placed[0], placed[1], costs, cost_weight, latency_weight,
                          None if allowed is self.rules.all else allowed, available)  # fmt: skip

    def _tenant_mask(self, models: tuple[str, ...]) -> np.ndarray | None:
        if not models:
            return None
        mask = self._tenant_masks.get(models)
        if mask is None:
            mask = np.array([m.name in models for m in self.pool], dtype=bool)
            mask.setflags(write=False)
            self._tenant_masks[models] = mask
        return mask

    def _cap_exploration(self, view: View, choice: RouteChoice, costs: np.ndarray, cost_weight: float,
                         latency_weight: float, allowed: np.ndarray | None, cap: float) -> RouteChoice:  # fmt: skip
        """Mix the Thompson policy with the greedy one: with probability 1 - cap take the model of
        best posterior mean utility. Exploration (any other model) then takes at most ``cap`` of the
        traffic, and the logged propensity is the mixture's, exact: cap * p_ts + (1 - cap) * [greedy]."""
        utility = view.mean[choice.cluster] - (cost_weight * costs + latency_weight * view.latency_s)
        if allowed is not None:
            utility = np.where(allowed, utility, -np.inf)
        greedy = int(np.argmax(utility))
        props = cap * np.asarray(choice.propensities)
        props[greedy] += 1.0 - cap
        arm = choice.arm if self.rng.random() < cap else greedy
        order = tuple(int(j) for j in np.argsort(-utility) if j != arm and np.isfinite(utility[j]))
        return msgspec.structs.replace(choice, arm=arm, propensity=float(props[arm]),
                                       propensities=tuple(float(p) for p in props), fallback_order=order,
                                       expected_cost_usd=float(costs[arm]))  # fmt: skip

    # -- one request's turn ----------------------------------------------------------------

    def _begin(self, raw: bytes, caller: Caller, headers: Mapping[str, str], started: float | None) -> Turn:
        """Parse and route; then the decision id, re-request detection and the overhead metric."""
        started = started or time.perf_counter()
        req = self.parse(raw)
        routed = self.route(req, caller, headers)
        routed_on = routed.embedding if routed.context is None else routed.context
        turn = Turn(req, caller, routed, uuid7(), np.ascontiguousarray(routed_on, dtype="<f4").tobytes(),
                    started, req.user or headers.get(self.session_header, ""))  # fmt: skip
        if self.rerequests is not None:
            previous = self.rerequests.observe(caller.tenant.name, turn.asker, turn.decision_id, routed.embedding)
            if previous is not None:
                self.records.negative(previous, turn, "re_request")
                if self.cache is not None:  # the answer re-asked leaves the cache (before this lookup)
                    self.cache.rerequest(caller.tenant.name, previous)
        self.metrics.overhead.observe(time.perf_counter() - started)
        self.metrics.languages.inc(routed.language)
        return turn

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

    def _cached(self, turn: Turn, raw: bytes, headers: Mapping[str, str]) -> tuple[Ask | None, Hit | None]:
        """The request's way into the response cache, and a hit it may be served (recorded as a
        decision of model "cache", cost 0, naming the decision whose answer it serves)."""
        if self.cache is None:
            return None, None
        ask = self.cache.ask(raw, turn.req.temperature, turn.caller, turn.asker, headers)
        hit = None if ask is None else self.cache.lookup(ask, turn.routed, self.router.view)
        if hit is not None:
            self.cache.served(hit, turn.decision_id)
            self.records.emit(self.records.decision(
                turn, turn.decision_id, policy="cache", arm="cache", propensity=1.0, model="cache",
                prompt_tokens=turn.routed.prompt_tokens, completion_tokens=hit.entry.completion_tokens,
                cost_usd=0.0, latency_ms=(time.perf_counter() - turn.started) * 1000.0,
                source_decision_id=hit.entry.source_decision_id,
            ))  # fmt: skip
            self.metrics.requests.inc("cache", "cache", "ok")
        return ask, hit

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
        turn = self._begin(raw, caller, headers, started)
        ask, hit = self._cached(turn, raw, headers)
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
        turn = self._begin(raw, caller, headers, started)
        ask, hit = self._cached(turn, raw, headers)
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
