"""Conversations on the request path: which chat a request continues, and what it remembers of it.

*Identity, without client changes.* A request continues a conversation found under either key:

- its session header (``x-session-id``, ``[rerequest] session_header``) when present;
- its tenant, ``user`` and a hash of the conversation before its last user message (the system,
  developer and user messages; assistant and tool messages are left out, so a client that trims
  or reformats the answers it sends back is still recognised).

After a turn is answered its state is stored under the hash of the conversation *through* its
last user message, which is what the next turn's prefix hashes to, and under the session key of
the conversation (this request's, or one an earlier turn came with: a turn without the header
still moves its session on).
A first turn without a session header looks nothing up. Keys start with the tenant's name, so
two tenants' identical conversations never share state.

*Memory.* One LRU of at most ``capacity`` keys (each an entry of a few hundred bytes plus the
``(d,)`` float32 context), each entry expiring ``ttl_s`` after its last turn (clock injected).
Nothing of the prompt is kept beyond digests and the decayed sum of its turns' embeddings
(decisions already record embeddings). Lookups are O(1) dict operations after one BLAKE2b pass
over the request's messages.

The routing decision itself (context, stickiness) is the core's: ``learner.conversation``.
"""

from __future__ import annotations

import collections
import hashlib
import time
from typing import Callable, Sequence

import msgspec
import numpy as np

from feedback.events import uuid7
from learner.conversation import kept_choice, routed_on, switch_gain
from learner.costs import request_tokens
from learner.routing import RouteChoice, View
from service.schemas import Message, message_text

__all__ = [
    "Conversation", "ConversationStore", "Conversations", "Thread", "conversation_keys", "last_user", "pool_cache_saving",
]  # fmt: skip

Key = tuple[str, bytes]  # (tenant, digest)
_COUNTED = ("system", "developer", "user")  # the messages a conversation's identity hashes


class Conversation(msgspec.Struct, frozen=True):
    """What is remembered of one conversation after its last answered turn."""

    conversation_id: str
    model: str  # the model that answered the last turn
    context: np.ndarray  # (d,) float32: decayed sum of the user turns' embeddings (learner.conversation)
    turns: int  # turns answered
    seen_s: float  # clock reading when the last turn was answered
    session: Key | None = None  # its session key, once a turn came with the header


class Thread(msgspec.Struct, frozen=True):
    """One request's place in its conversation, from routing to the answer."""

    lookup: tuple[Key, ...]  # where its conversation was looked for
    store: tuple[Key, ...]  # where the next turn will look
    conversation_id: str
    turn: int  # 1 for a first turn
    previous_model: str  # "" for a first turn
    context: np.ndarray  # the running sum including this turn: (d,) float32
    prefix_tokens: int  # tokens before the last user message: what a provider may hold cached
    sticky: bool = False  # kept on ``previous_model`` (propensity 1) rather than routed afresh
    session: Key | None = None  # the conversation's session key: this request's, else one seen before


def last_user(messages: Sequence[Message]) -> int:
    """Index of the last user message (the request has one: ``ChatService.parse`` checked)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user":
            return i
    raise ValueError("no user message")


def conversation_keys(messages: Sequence[Message], tenant: str, user: str, session: str,
                      last: int) -> tuple[tuple[Key, ...], tuple[Key, ...]]:  # fmt: skip
    """(lookup keys, store keys) of a request whose last user message is ``messages[last]``: its
    session's, then its conversation hash's (a first turn, with no user message before, looks
    up no hash)."""
    h = hashlib.blake2b(b"h\0" + user.encode() + b"\0", digest_size=16)
    before = None
    earlier = False  # a user message before the last: else a first turn, nothing to look up
    for i in range(last + 1):
        m = messages[i]
        if i == last and earlier:
            before = h.copy()
        if m.role in _COUNTED:
            earlier = earlier or m.role == "user"
            h.update(f"{m.role}\0{message_text(m)}\x1e".encode())
    lookup: list[Key] = []
    store: list[Key] = []
    if session:
        key = (tenant, hashlib.blake2b(b"s\0" + session.encode(), digest_size=16).digest())
        lookup.append(key)
        store.append(key)
    if before is not None:
        lookup.append((tenant, before.digest()))
    store.append((tenant, h.digest()))
    return tuple(lookup), tuple(store)


class ConversationStore:
    """LRU of conversations by key, each expiring ``ttl_s`` after its last answered turn."""

    def __init__(self, capacity: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: collections.OrderedDict[Key, Conversation] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, keys: Sequence[Key]) -> Conversation | None:
        now = self.clock()
        for key in keys:
            got = self._entries.get(key)
            if got is None:
                continue
            if now - got.seen_s > self.ttl_s:
                del self._entries[key]
                continue
            self._entries.move_to_end(key)
            return got
        return None

    def save(self, keys: Sequence[Key], conversation: Conversation) -> None:
        for key in keys:
            self._entries[key] = conversation
            self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


class Conversations:
    """The request path's conversations: recall a request's conversation, route it in context,
    keep it on its model when switching does not pay, remember the model that answered.

    cache_saving_per_token: (m,) USD per prompt token a model's cached-input price saves (0 for
    a model without one), in the pool's order.
    """

    def __init__(self, store: ConversationStore, models: Sequence[str], cache_saving_per_token: np.ndarray,
                 context_decay: float, switch_margin: float, sticky: bool = True) -> None:  # fmt: skip
        self.store = store
        self.index = {name: i for i, name in enumerate(models)}
        self.cache_saving_per_token = np.asarray(cache_saving_per_token, dtype=np.float64)
        self.context_decay = context_decay
        self.switch_margin = switch_margin
        self.sticky = sticky

    def thread(self, messages: Sequence[Message], tenant: str, user: str, session: str, embedding: np.ndarray,
               prompt_tokens: int) -> tuple[Thread, np.ndarray]:  # fmt: skip
        """The request's thread and the vector to route it on: (d,) unit norm.

        prompt_tokens: ``learner.costs.request_tokens`` of all its messages (the prefix's are
        what precedes the last user message)."""
        last = last_user(messages)
        lookup, store = conversation_keys(messages, tenant, user, session, last)
        found = self.store.find(lookup)
        if found is None:
            summed, at = routed_on(None, embedding, self.context_decay)
            return Thread(lookup, store, uuid7(), 1, "", summed, 0, session=store[0] if session else None), at
        prefix_tokens = prompt_tokens - request_tokens([message_text(m) for m in messages[last:]])
        summed, at = routed_on(found.context, embedding, self.context_decay)
        thread = Thread(lookup, store, found.conversation_id, found.turns + 1, found.model, summed, prefix_tokens,
                        session=store[0] if session else found.session)  # fmt: skip
        return thread, at

    def discount_usd(self, thread: Thread, model: str, prompt_tokens: int | None = None) -> float:
        """What ``model`` saves on this turn by the conversation's cached prefix (0 unless it
        answered the previous turn); ``prompt_tokens``: the provider's count, which caps the prefix."""
        if not thread.previous_model or model != thread.previous_model:
            return 0.0
        cached = thread.prefix_tokens if prompt_tokens is None else min(thread.prefix_tokens, prompt_tokens)
        return cached * float(self.cache_saving_per_token[self.index[model]])

    def keep(self, thread: Thread, view: View, cluster: int, margin: float, costs: np.ndarray, cost_weight: float,
             latency_weight: float, allowed: np.ndarray | None, available: bool) -> RouteChoice | None:  # fmt: skip
        """The kept decision when the turn stays on its previous model, else None (route afresh).

        It moves when stickiness is off, the model is gone from the pool, a rule does not allow
        it, it is unavailable (``available`` False: breaker open, Retry-After), or the best other
        model's expected utility beats it by more than ``switch_margin`` after the lost discount.
        """
        previous = self.index.get(thread.previous_model, -1)
        if not self.sticky or previous < 0 or not available or (allowed is not None and not allowed[previous]):
            return None
        discount = self.discount_usd(thread, thread.previous_model)
        gain = switch_gain(view, cluster, costs, cost_weight, latency_weight, allowed, previous, discount)
        if gain > self.switch_margin:
            return None
        return kept_choice(view, cluster, margin, costs, cost_weight, latency_weight, allowed, previous, discount)

    def answered(self, thread: Thread | None, model: str) -> None:
        """Remember that ``model`` answered this turn: the next turn looks for it."""
        if thread is None:
            return
        keys = thread.store
        if thread.session is not None and thread.session not in keys:  # a turn without the header moves it on too
            keys += (thread.session,)
        self.store.save(keys, Conversation(thread.conversation_id, model, thread.context, thread.turn,
                                           self.store.clock(), thread.session))  # fmt: skip


def pool_cache_saving(price_in_per_mtok: Sequence[float], price_cached_in_per_mtok: Sequence[float | None]) -> np.ndarray:
    """(m,) USD per token a cached prompt token saves: input price minus cached price (0 unknown)."""
    return np.array([0.0 if c is None else max(0.0, p - c) / 1e6
                     for p, c in zip(price_in_per_mtok, price_cached_in_per_mtok)])  # fmt: skip
