"""The response cache on the request path: which requests may use it, their keys, hits and offers.

The cache itself is ``learner.cache`` (pure, shared with ``turnout simulate --cache``); this
module decides, per request:

- **whether** the cache is used: ``[cache] enabled``, the tenant's ``cache`` not turned off, and
  the request deterministic (``temperature`` 0) or opted in by the client with the header
  ``x-turnout-cache: on``; ``x-turnout-cache: off`` skips it for one request. With
  ``per_user`` a request without a user (``user`` or the session header) is not cached.
- **where**: the namespace of the authenticated caller's tenant (and user), nothing else.
- **the keys**: the request body without ``stream``, ``stream_options`` and ``user``, message
  texts with their whitespace collapsed, encoded with sorted keys (exact key); the same with the
  last user message left out but its numbers kept (context key: semantic hits must agree on
  everything else, and on every number asked about: embeddings barely see a changed digit).
- **admission**: an answer is offered only when it finished (``stop``), and kept only when the
  model that gave it has a posterior mean of at least ``min_quality`` in the prompt's cluster of
  the live view. A hit is served only if its model is still among the request's candidates (rules,
  tenant models) and still above the bar (else it is evicted, reason ``quality``).
- **eviction by verdict**: explicit feedback below ``evict_below`` on the hit or on the decision
  that stored the answer, a re-request of either, or a judge grade below it (``judge``,
  ``service/evaluation.py``).
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any, AsyncIterator, Callable, Mapping

import msgspec
import numpy as np

from learner.cache import AnswerCache, Entry, Hit, Space
from learner.clusters import assign
from learner.routing import View
from service.metrics import Registry
from service.records import Routed
from service.schemas import ChatCompletion, ChatCompletionChunk, Choice, ChoiceMessage, ChunkChoice, Delta, Usage
from service.tenants import Caller

__all__ = ["Ask", "ResponseCache"]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_dict_dec = msgspec.json.Decoder(dict)
_enc = msgspec.json.Encoder(order="sorted")
_NOT_KEYED = ("stream", "stream_options", "user")
_FRAME_CHARS = 256  # text per SSE frame when a hit is replayed as a stream


class Ask(msgspec.Struct, frozen=True):
    """One request's way into the cache: its namespace and keys."""

    space: Space
    exact_key: bytes
    context_key: bytes


def _norm(content: Any) -> Any:
    if isinstance(content, str):
        return " ".join(content.split())
    if isinstance(content, list):
        return [dict(p, text=_norm(p["text"])) if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                for p in content]  # fmt: skip
    return content


def request_keys(raw: bytes) -> tuple[bytes, bytes]:
    """(exact key, context key) of a request body that decoded as a ``ChatRequest``.

    The context key hashes the body with the last user message replaced by its numbers; the exact
    key hashes the same and then that message (one hash carried on: JSON texts delimit
    themselves, so the pair is read back from their concatenation). Two bodies get one exact key
    exactly when they are equal (the message goes back in place of the last message of role
    user), as when the whole body was hashed, for one encoding of the body rather than two. The
    decoded body is this function's own: its messages are normalised in place."""
    body = _dict_dec.decode(raw)
    for k in _NOT_KEYED:
        body.pop(k, None)
    messages = body["messages"]
    for m in messages:
        if isinstance(m, dict):
            m["content"] = _norm(m.get("content"))
    for last in range(len(messages) - 1, -1, -1):  # most often the last message is the user's
        asked = messages[last]
        if isinstance(asked, dict) and asked.get("role") == "user":
            break
    else:
        raise ValueError("a request without a user message has no cache keys")
    # the numbers of the question stay in the context: "3x + 7 = 22" and "3x + 7 = 25" embed alike
    content = asked["content"]
    numbers = _NUMBER.findall(content if isinstance(content, str) else _enc.encode(content).decode())
    messages[last] = {"role": "user", "content": None, "numbers": numbers}
    h = hashlib.blake2b(_enc.encode(body), digest_size=16)
    context = h.digest()
    h.update(_enc.encode(asked))
    return h.digest(), context


def posterior_mean(view: View, model: str, routed: Routed) -> float:
    """The model's posterior mean quality in the prompt's cluster of ``view`` (0 outside the pool)."""
    if model not in view.models:
        return 0.0
    cluster = routed.choice.cluster
    if view.snapshot.clustering != routed.clustering or cluster >= len(view.centroids):
        cluster, _ = assign(routed.embedding if routed.context is None else routed.context, view.centroids)
    return float(view.mean[cluster, view.models.index(model)])


class ResponseCache:
    """The service's use of one ``AnswerCache``: eligibility, keys, hits, offers, verdicts, metrics."""

    def __init__(self, cache: AnswerCache, *, min_quality: float, evict_below: float, per_user: bool,
                 header: str, metrics: Registry, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.cache = cache
        self.min_quality = min_quality
        self.evict_below = evict_below
        self.per_user = per_user
        self.header = header.lower()
        self.metrics = metrics
        self.clock = clock
        metrics.add_gauge("turnout_cache_entries", "Answers in the response cache.", (), lambda: [((), len(cache))])
        metrics.add_gauge("turnout_cache_bytes", "Bytes the response cache holds (text, embeddings, keys).", (),
                          lambda: [((), cache.bytes)])  # fmt: skip

    def ask(self, raw: bytes, temperature: float | None, caller: Caller, asker: str,
            headers: Mapping[str, str]) -> Ask | None:  # fmt: skip
        """The request's namespace and keys, or None when it may not use the cache."""
        if not caller.tenant.cache:
            return None
        wish = headers.get(self.header, "").strip().lower()
        if wish == "off" or (wish != "on" and temperature != 0):
            return None
        if self.per_user and not asker:
            return None
        exact, context = request_keys(raw)
        return Ask(self.cache.space(caller.tenant.name, asker if self.per_user else ""), exact, context)

    def lookup(self, ask: Ask, routed: Routed, view: View) -> Hit | None:
        """A cached answer this request may be served, or None (counted either way)."""
        hit = ask.space.lookup(ask.exact_key, ask.context_key, routed.clustering, routed.choice.cluster,
                               routed.embedding, self.clock())  # fmt: skip
        if hit is not None and hit.entry.model not in routed.candidates:
            hit = None  # the rules (or the tenant's models) do not allow its model for this request
        elif hit is not None and posterior_mean(view, hit.entry.model, routed) < self.min_quality:
            ask.space.drop(hit.entry.source_decision_id, "quality")
            hit = None
        self.metrics.cache_lookups.inc("miss" if hit is None else "hit_" + hit.kind)
        if hit is not None:
            self.metrics.cache_saved.inc(by=hit.entry.cost_usd)
        return hit

    def served(self, hit: Hit, decision_id: str) -> None:
        self.cache.served(decision_id, hit.entry.source_decision_id)

    def offer(self, ask: Ask, routed: Routed, view: View, decision_id: str, model: str, text: str,
              finish_reason: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> bool:  # fmt: skip
        """Keep a fresh answer if it finished and its model is good enough in this cluster."""
        if finish_reason != "stop" or not text:
            self.metrics.cache_admissions.inc("unfinished")
            return False
        if posterior_mean(view, model, routed) < self.min_quality:
            self.metrics.cache_admissions.inc("below_quality")
            return False
        entry = Entry(
            source_decision_id=decision_id, exact_key=ask.exact_key, context_key=ask.context_key,
            clustering=routed.clustering, cluster=routed.choice.cluster,
            embedding=np.asarray(routed.embedding, dtype=np.float32), model=model, text=text,
            finish_reason=finish_reason, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            cost_usd=cost_usd, stored_at_s=self.clock(),
        )  # fmt: skip
        stored = ask.space.store(entry)
        self.metrics.cache_admissions.inc("stored" if stored else "present")
        return stored

    def feedback(self, tenant: str, decision_id: str, reward: float) -> None:
        """Explicit feedback on a decision of ``tenant``: below ``evict_below``, its entry leaves."""
        if reward < self.evict_below:
            self.cache.verdict(tenant, decision_id, "feedback")

    def rerequest(self, tenant: str, decision_id: str) -> None:
        """The asker asked again: the answer of ``decision_id`` (a hit, or one stored) did not do."""
        self.cache.verdict(tenant, decision_id, "re_request")

    def judge(self, tenant: str, decision_id: str, score: float) -> None:
        """A judge's grade of a stored answer (``service/evaluation.py``): a score in [0, 1] below
        ``evict_below`` evicts it."""
        if score < self.evict_below:
            self.cache.verdict(tenant, decision_id, "judge")

    # -- answers ---------------------------------------------------------------------------

    @staticmethod
    def body(hit: Hit, decision_id: str, prompt_tokens: int) -> bytes:
        """The hit as a ``chat.completion`` (``model``: the pool model whose answer it is)."""
        e = hit.entry
        return _plain.encode(ChatCompletion(
            id="chatcmpl-" + decision_id.replace("-", ""), created=int(time.time()), model=e.model,
            choices=[Choice(0, ChoiceMessage("assistant", e.text), e.finish_reason)],
            usage=Usage(prompt_tokens, e.completion_tokens, prompt_tokens + e.completion_tokens),
        ))  # fmt: skip

    @staticmethod
    async def frames(hit: Hit, decision_id: str, prompt_tokens: int, include_usage: bool) -> AsyncIterator[bytes]:
        """The hit replayed as the server-sent events of a normal stream, ending with ``[DONE]``."""
        e = hit.entry
        cid, created = "chatcmpl-" + decision_id.replace("-", ""), int(time.time())

        def frame(delta: Delta, finish: str | None = None, usage: Usage | None = None, empty: bool = False) -> bytes:
            chunk = ChatCompletionChunk(id=cid, created=created, model=e.model, usage=usage,
                                        choices=[] if empty else [ChunkChoice(0, delta, finish)])  # fmt: skip
            return b"data: " + _plain.encode(chunk) + b"\n\n"

        yield frame(Delta(role="assistant", content=""))
        for i in range(0, len(e.text), _FRAME_CHARS):
            yield frame(Delta(content=e.text[i : i + _FRAME_CHARS]))
        yield frame(Delta(), e.finish_reason)
        if include_usage:
            yield frame(Delta(), usage=Usage(prompt_tokens, e.completion_tokens, prompt_tokens + e.completion_tokens),
                        empty=True)  # fmt: skip
        yield b"data: [DONE]\n\n"


_plain = msgspec.json.Encoder()
