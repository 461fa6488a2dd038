"""Conversation identity and memory on the request path (service/conversations.py)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.routing import Prices, RoutingParams, View
from learner.snapshot import initial_snapshot
from learner.costs import request_tokens
from service.conversations import (
    Conversation, ConversationStore, Conversations, conversation_keys, last_user, pool_cache_saving,
)  # fmt: skip
from service.schemas import Message, message_text

SYS = Message(role="system", content="You are terse.")


def _chat(*turns: str, answers: bool = True) -> list[Message]:
    """A chat whose user turns are ``turns``: system, user, assistant, user, ... ending on a user turn."""
    out = [SYS]
    for i, t in enumerate(turns):
        if i and answers:
            out.append(Message(role="assistant", content=f"answer {i}"))
        out.append(Message(role="user", content=t))
    return out


def _keys(messages: list[Message], tenant: str, user: str, session: str):
    return conversation_keys(messages, tenant, user, session, last_user(messages))


def _thread(convs: Conversations, messages: list[Message], tenant: str, user: str, session: str, e: np.ndarray):
    return convs.thread(messages, tenant, user, session, e, request_tokens([message_text(m) for m in messages]))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_next_turn_looks_where_the_last_one_was_stored():
    _, store1 = _keys(_chat("hi"), "t", "u", "")
    lookup2, store2 = _keys(_chat("hi", "and more"), "t", "u", "")
    lookup3, _ = _keys(_chat("hi", "and more", "again"), "t", "u", "")
    assert _keys(_chat("hi"), "t", "u", "")[0] == ()  # a first turn looks nothing up
    assert lookup2 == store1 and lookup3 == store2 and lookup3 != lookup2
    # the answers sent back do not matter (clients trim or reformat them)
    assert _keys(_chat("hi", "and more", answers=False), "t", "u", "")[0] == lookup2
    # another user, another tenant or another earlier turn: another conversation
    assert _keys(_chat("hi", "and more"), "t", "v", "")[0] != lookup2
    assert _keys(_chat("hi", "and more"), "t2", "u", "")[0] != lookup2
    assert _keys(_chat("hello", "and more"), "t", "u", "")[0] != lookup2


def test_a_session_header_is_looked_up_first_and_kept_per_tenant():
    lookup, store = _keys(_chat("hi"), "t", "u", "s-1")
    assert len(lookup) == 1 and lookup[0] == store[0] and len(store) == 2
    lookup2, _ = _keys(_chat("hi", "more"), "t", "u", "s-1")
    assert lookup2[0] == lookup[0] and len(lookup2) == 2
    other, _ = _keys(_chat("hi"), "t2", "u", "s-1")
    assert other[0] != lookup[0] and other[0][0] == "t2"


def test_the_store_is_a_bounded_lru_whose_entries_expire():
    clock = Clock()
    store = ConversationStore(capacity=3, ttl_s=10.0, clock=clock)
    conv = lambda name: Conversation(name, "m", np.zeros(2, dtype=np.float32), 1, clock())  # noqa: E731
    for name in "abc":
        store.save([("t", name.encode())], conv(name))
    assert store.find([("t", b"a")]).conversation_id == "a"  # a is now the most recent
    store.save([("t", b"d")], conv("d"))
    assert len(store) == 3 and store.find([("t", b"b")]) is None  # b, the least recently used, went
    clock.now += 10.5
    store.save([("t", b"e")], conv("e"))
    assert store.find([("t", b"a"), ("t", b"e")]).conversation_id == "e"  # a expired, e found next
    assert store.find([("t", b"a")]) is None and len(store) == 2  # the expired entry is gone


def _view(prior_mean=(0.5, 0.6, 0.62)) -> View:
    models = ("cheap", "mid", "dear")
    snap = initial_snapshot(models=models, centroids=np.eye(4, dtype=np.float32)[:2], prior_mean=prior_mean,
                            completion_tokens=(100.0,) * 3, latency_s=(1.0,) * 3, prior_strength=2.0,
                            shrink_strength=0.0, created_at_ms=0)  # fmt: skip
    return View(snap, Prices(models, (0.1, 1.0, 1.0), (0.4, 4.0, 4.0)), RoutingParams(n_samples=64))


def _conversations(clock: Clock, sticky: bool = True) -> tuple[Conversations, View]:
    view = _view()
    saving = pool_cache_saving([0.1, 1.0, 1.0], [None, 0.1, None])
    return Conversations(ConversationStore(100, 60.0, clock), view.models, saving, 0.5, 0.05, sticky), view


def test_a_turn_stays_on_its_model_unless_moved_by_economics_a_rule_or_its_breaker():
    clock = Clock()
    convs, view = _conversations(clock)
    e = np.eye(4, dtype=np.float32)
    first, at = _thread(convs, _chat("hi"), "t", "u", "", e[0])
    assert first.turn == 1 and first.previous_model == "" and np.array_equal(at, e[0])
    convs.answered(first, "mid")
    second, at2 = _thread(convs, _chat("hi", "more"), "t", "u", "", e[1])
    assert second.turn == 2 and second.previous_model == "mid" and second.conversation_id == first.conversation_id
    assert np.allclose(at2, np.array([0.5, 1, 0, 0]) / np.sqrt(1.25))  # routed in context
    assert second.prefix_tokens > 0 and convs.discount_usd(second, "mid") == pytest.approx(second.prefix_tokens * 0.9e-6)
    assert convs.discount_usd(second, "dear") == 0.0
    costs = view.costs(0, 100)
    kept = convs.keep(second, view, 0, 0.2, costs, 0.0, 0.0, None, available=True)
    assert kept is not None and kept.arm == 1 and kept.propensity == 1.0  # dear's 0.02 is below the margin
    assert convs.keep(second, view, 0, 0.2, costs, 0.0, 0.0, None, available=False) is None  # breaker open
    assert convs.keep(second, view, 0, 0.2, costs, 0.0, 0.0, np.array([True, False, True]), True) is None  # a rule
    better = _view(prior_mean=(0.5, 0.6, 0.95))
    assert convs.keep(second, better, 0, 0.2, costs, 0.0, 0.0, None, True) is None  # clearly better: switch
    off, _ = _conversations(clock, sticky=False)
    assert off.keep(second, view, 0, 0.2, costs, 0.0, 0.0, None, True) is None


def test_state_expires_and_is_never_shared_between_tenants():
    clock = Clock()
    convs, _ = _conversations(clock)
    e = np.eye(4, dtype=np.float32)
    t1, _ = _thread(convs, _chat("hi"), "t1", "u", "", e[0])
    convs.answered(t1, "mid")
    assert _thread(convs, _chat("hi", "more"), "t2", "u", "", e[1])[0].turn == 1  # the other tenant starts afresh
    assert _thread(convs, _chat("hi", "more"), "t1", "u", "", e[1])[0].turn == 2
    clock.now += 61.0
    assert _thread(convs, _chat("hi", "more"), "t1", "u", "", e[1])[0].turn == 1  # expired
