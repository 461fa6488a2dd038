"""The chat-completions request path: parse, route, dispatch with failover, answer, emit.

Nothing here waits on Kafka or ClickHouse: events go to the sink's in-memory buffer.
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator

import msgspec
import numpy as np
from litestar import Response
from litestar.response import Stream

from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.ports import DecisionRef, EventSink
from learner.embedding import Embedder, prompt_hash
from learner.reward import reward_from_rating, reward_from_score
from service.decisions import DecisionIndex
from service.errors import ApiError, validation_error
from service.routing import RouteChoice, Router
from service.schemas import (
    ChatCompletion, ChatCompletionChunk, ChatRequest, Choice, ChoiceMessage, ChunkChoice, Delta,
    FeedbackAccepted, FeedbackRequest, Usage, message_text,
)  # fmt: skip
from service.simulated import estimate_tokens
from service.upstream import Chunk, Upstream, UpstreamCall, UpstreamError

__all__ = ["ChatService", "PoolModel", "PolicyWeights"]

log = logging.getLogger("turnout.chat")

_chat_decoder = msgspec.json.Decoder(ChatRequest)
_feedback_decoder = msgspec.json.Decoder(FeedbackRequest)
_enc = msgspec.json.Encoder()


class PoolModel(msgspec.Struct, frozen=True):
    name: str
    upstream_model: str
    price_in_per_mtok: float
    price_out_per_mtok: float


class PolicyWeights(msgspec.Struct, frozen=True):
    cost_weight: float
    latency_weight: float = 0.0


def _cost(model: PoolModel, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * model.price_in_per_mtok + completion_tokens * model.price_out_per_mtok) / 1e6


class ChatService:
    def __init__(
        self,
        *,
        embedder: Embedder,
        router: Router,
        sink: EventSink,
        upstreams: dict[str, Upstream],
        pool: tuple[PoolModel, ...],
        policies: dict[str, PolicyWeights],
        decisions: DecisionIndex,
        rng: np.random.Generator,
        max_attempts: int,
        store_prompts: bool,
    ) -> None:
        self.embedder = embedder
        self.router = router
        self.sink = sink
        self.upstreams = upstreams
        self.pool = pool
        self.by_name = {m.name: i for i, m in enumerate(pool)}
        self.policies = policies
        self.decisions = decisions
        self.rng = rng
        self.max_attempts = max_attempts
        self.store_prompts = store_prompts

    # -- routing ---------------------------------------------------------------------------

    def parse(self, raw: bytes) -> ChatRequest:
        try:
            req = _chat_decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise validation_error(exc, "request body") from None
        if req.model not in self.policies and req.model not in self.by_name:
            known = ", ".join(sorted(self.policies) + sorted(self.by_name))
            raise ApiError(404, f"unknown model '{req.model}'; known models and policies: {known}",
                           param="model", code="model_not_found")  # fmt: skip
        if not any(m.role == "user" and message_text(m).strip() for m in req.messages):
            raise ApiError(422, "messages must contain a user message with non-empty content",
                           param="messages", code="invalid_value")  # fmt: skip
        return req

    def route(self, req: ChatRequest) -> tuple[RouteChoice, np.ndarray, str, int]:
        text = next(message_text(m) for m in reversed(req.messages) if m.role == "user")
        prompt_tokens = sum(estimate_tokens(message_text(m)) + 4 for m in req.messages)
        embedding = self.embedder.embed([text])[0]
        if req.model in self.by_name:  # pass-through: logged with propensity 1
            view = self.router.view
            arm = view.index[req.model]
            allowed = np.zeros(len(view.models), dtype=bool)
            allowed[arm] = True
            choice = self.router.decide(embedding, prompt_tokens, 0.0, 0.0, allowed, 0)
        else:
            w = self.policies[req.model]
            row = int(self.rng.integers(1 << 30))
            choice = self.router.decide(embedding, prompt_tokens, w.cost_weight, w.latency_weight, None, row)
        return choice, embedding, text, prompt_tokens

    def _attempts(self, choice: RouteChoice, req: ChatRequest) -> list[int]:
        if req.model in self.by_name:
            return [choice.arm]
        return [choice.arm, *choice.fallback_order][: self.max_attempts]

    def _decision(self, req: ChatRequest, choice: RouteChoice, embedding: np.ndarray, text: str,
                  decision_id: str, **fields) -> DecisionMade:  # fmt: skip
        view = self.router.view
        return DecisionMade(
            event_id=uuid7(),
            decision_id=decision_id,
            ts_ms=int(time.time() * 1000),
            user=req.user or "",
            policy=req.model if req.model in self.policies else "passthrough",
            requested_model=req.model,
            snapshot_version=view.snapshot.version,
            clustering=view.snapshot.clustering,
            cluster=choice.cluster,
            margin=choice.margin,
            arm=self.pool[choice.arm].name,
            propensity=choice.propensity,
            prompt_hash=prompt_hash(text),
            stream=req.stream,
            embedding=np.ascontiguousarray(embedding, dtype="<f4").tobytes(),
            prompt_text=text if self.store_prompts else "",
            **fields,
        )

    def _emit(self, decision: DecisionMade) -> None:
        self.sink.publish(decision)
        self.decisions.remember(
            DecisionRef(decision.decision_id, decision.tenant, decision.cluster, decision.model, decision.snapshot_version)
        )

    @staticmethod
    def _headers(decision_id: str, model: str, cluster: int, cost_usd: float) -> dict[str, str]:
        return {
            "x-turnout-decision-id": decision_id,
            "x-turnout-model": model,
            "x-turnout-cluster": str(cluster),
            "x-turnout-cost-usd": f"{cost_usd:.8f}",
        }

    # -- non-streaming ---------------------------------------------------------------------

    async def complete(self, raw: bytes) -> Response:
        req = self.parse(raw)
        choice, embedding, text, _ = self.route(req)
        decision_id = uuid7()
        started = time.perf_counter()
        errors: list[str] = []
        for attempt, arm in enumerate(self._attempts(choice, req)):
            model = self.pool[arm]
            call = UpstreamCall(req, raw, model.upstream_model)
            try:
                done = await self.upstreams[model.name].complete(call)
            except UpstreamError as exc:
                errors.append(f"{model.name}: {exc}")
                log.warning("upstream %s failed (decision %s): %s", model.name, decision_id, exc)
                continue
            latency_ms = (time.perf_counter() - started) * 1000.0
            cost = _cost(model, done.prompt_tokens, done.completion_tokens)
            self._emit(self._decision(
                req, choice, embedding, text, decision_id, model=model.name, fallbacks=attempt,
                errors=tuple(errors), prompt_tokens=done.prompt_tokens,
                completion_tokens=done.completion_tokens, cost_usd=cost, latency_ms=latency_ms,
            ))  # fmt: skip
            body = ChatCompletion(
                id="chatcmpl-" + decision_id.replace("-", ""),
                created=int(time.time()),
                model=model.name,
                choices=[Choice(0, ChoiceMessage("assistant", done.text), done.finish_reason)],
                usage=Usage(done.prompt_tokens, done.completion_tokens, done.prompt_tokens + done.completion_tokens),
            )
            return Response(
                content=_enc.encode(body),
                media_type="application/json",
                headers=self._headers(decision_id, model.name, choice.cluster, cost),
            )
        self._emit(self._decision(req, choice, embedding, text, decision_id, status="error",
                                  fallbacks=len(errors) - 1, errors=tuple(errors)))  # fmt: skip
        raise ApiError(502, "every candidate model failed: " + "; ".join(errors), code="upstream_error",
                       headers={"x-turnout-decision-id": decision_id})  # fmt: skip

    # -- streaming -------------------------------------------------------------------------

    async def stream(self, raw: bytes) -> Stream:
        req = self.parse(raw)
        choice, embedding, text, prompt_tokens = self.route(req)
        decision_id = uuid7()
        started = time.perf_counter()
        errors: list[str] = []
        for attempt, arm in enumerate(self._attempts(choice, req)):
            model = self.pool[arm]
            agen = self.upstreams[model.name].stream(UpstreamCall(req, raw, model.upstream_model))
            try:  # fail over only before the first byte reaches the client
                first = await agen.__anext__()
            except (UpstreamError, StopAsyncIteration) as exc:
                errors.append(f"{model.name}: {exc or 'empty stream'}")
                continue
            view = self.router.view
            est = float(view.costs(prompt_tokens)[view.index[model.name]])
            body = self._sse(req, choice, embedding, text, decision_id, model, attempt, errors, first, agen, started)
            return Stream(body, media_type="text/event-stream",
                          headers=self._headers(decision_id, model.name, choice.cluster, est))  # fmt: skip
        self._emit(self._decision(req, choice, embedding, text, decision_id, status="error",
                                  fallbacks=len(errors) - 1, errors=tuple(errors)))  # fmt: skip
        raise ApiError(502, "every candidate model failed: " + "; ".join(errors), code="upstream_error",
                       headers={"x-turnout-decision-id": decision_id})  # fmt: skip

    async def _sse(self, req: ChatRequest, choice: RouteChoice, embedding: np.ndarray, text: str,
                   decision_id: str, model: PoolModel, attempt: int, errors: list[str], first: Chunk,
                   agen: AsyncIterator[Chunk], started: float) -> AsyncIterator[bytes]:  # fmt: skip
        cid = "chatcmpl-" + decision_id.replace("-", "")
        created = int(time.time())

        def frame(delta: Delta, finish: str | None = None, usage: Usage | None = None, empty: bool = False) -> bytes:
            choices = [] if empty else [ChunkChoice(0, delta, finish)]
            chunk = ChatCompletionChunk(id=cid, created=created, model=model.name, choices=choices, usage=usage)
            return b"data: " + _enc.encode(chunk) + b"\n\n"

        status, prompt_tokens, completion_tokens, finish = "ok", 0, 0, "stop"
        yield frame(Delta(role="assistant", content=""))
        try:
            chunk: Chunk | None = first
            while chunk is not None:
                if chunk.text:
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
            err = {"error": {"message": f"upstream {model.name} failed mid-stream: {exc}", "type": "api_error",
                             "code": "upstream_error"}}  # fmt: skip
            yield b"data: " + _enc.encode(err) + b"\n\n"
        finally:
            usage = Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
            self._emit(self._decision(
                req, choice, embedding, text, decision_id, model=model.name, status=status,
                fallbacks=attempt, errors=tuple(errors), prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens, cost_usd=_cost(model, prompt_tokens, completion_tokens),
                latency_ms=(time.perf_counter() - started) * 1000.0,
            ))  # fmt: skip
        if status == "ok" and req.stream_options and req.stream_options.include_usage:
            yield frame(Delta(), usage=usage, empty=True)
        yield b"data: [DONE]\n\n"

    # -- feedback --------------------------------------------------------------------------

    def parse_feedback(self, raw: bytes) -> FeedbackRequest:
        try:
            body = _feedback_decoder.decode(raw)
        except msgspec.MsgspecError as exc:
            raise validation_error(exc, "feedback body") from None
        if (body.rating is None) == (body.score is None):
            raise ApiError(422, "give exactly one of 'rating' ('up' or 'down') or 'score' (0..1)",
                           param="rating", code="invalid_value")  # fmt: skip
        return body

    def feedback(self, body: FeedbackRequest, ref: DecisionRef | None) -> FeedbackAccepted:
        if ref is None:
            raise ApiError(404, f"unknown decision_id '{body.decision_id}'", param="decision_id",
                           code="decision_not_found")  # fmt: skip
        reward = reward_from_rating(body.rating) if body.rating else reward_from_score(float(body.score or 0.0))
        event = FeedbackGiven(
            event_id=uuid7(),
            decision_id=body.decision_id,
            ts_ms=int(time.time() * 1000),
            reward=reward,
            kind="explicit",
            tenant=ref.tenant,
            rating=body.rating or "",
            comment=body.comment or "",
        )
        self.sink.publish(event)
        return FeedbackAccepted(event.event_id, body.decision_id, reward)
