"""Conversations over HTTP with the real openai SDK: a chat stays on its model while switching does
not pay, moves when another model is clearly better or its model fails, is recognised with and
without the session header, and two tenants' identical chats never share state."""

from __future__ import annotations

import msgspec
import openai
import pytest

from service.settings import load_settings
from service.tenants import hash_key
from tests.service.fleet import Fleet

KEYS = {"acme": "sk-conv-acme-5c1f", "globex": "sk-conv-globex-9a2e"}
TENANTS = [{"name": name, "api_key_sha256": [hash_key(key)]} for name, key in KEYS.items()]
# a and b within the switch margin of each other, c far behind; a and b bill a cached prefix at a tenth
TIERS = {"a": 0.72, "b": 0.70, "c": 0.3}
QUESTIONS = ["Write a Python function that merges two sorted lists.", "Now make it handle duplicates.",
             "Add type hints.", "And a docstring.", "Write a unit test for it.", "Make the test use pytest.",
             "Add a property test with hypothesis.", "Explain the complexity.", "Could it be a generator?",
             "Show the final version."]  # fmt: skip


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


def _models(fleet: Fleet) -> list[dict]:
    return [{"name": name, "base_url": fleet.urls[name] + "/v1", "upstream_model": f"up-{name}", "tier": tier,
             "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0, "price_cached_in_per_mtok": 0.1,
             "timeout_s": 1.0, "connect_timeout_s": 1.0, "ttft_timeout_s": 1.0}
            for name, tier in TIERS.items()]  # fmt: skip


@pytest.fixture
def gw(fleet, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, models=_models(fleet),
                       router={"switch_margin": 0.05}) as g:  # fmt: skip
        yield g


def _client(gw, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS[tenant], max_retries=0)


def _turn(client: openai.OpenAI, messages: list[dict], question: str, **kw) -> str:
    """Ask ``question`` after ``messages`` (appending both it and the answer); the model that answered."""
    messages.append({"role": "user", "content": question})
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages, **kw)
    messages.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
    return raw.headers["x-turnout-model"]


def _requests(gw) -> list:
    """The decisions of requests (not of failed attempts), in order."""
    return sorted((d for d in gw.decisions() if d.policy != "failover"), key=lambda d: d.ts_ms)


def test_a_ten_turn_chat_stays_on_one_model_while_switching_gains_less_than_the_margin(gw):
    messages: list[dict] = [{"role": "system", "content": "You are a careful programmer."}]
    with _client(gw) as client:
        models = [_turn(client, messages, q, user="ana") for q in QUESTIONS]
    assert len(set(models)) == 1, models
    ds = _requests(gw)
    assert [d.turn for d in ds] == list(range(1, 11)) and len({d.conversation_id for d in ds}) == 1
    assert not ds[0].sticky and all(d.sticky and d.propensity == 1.0 for d in ds[1:])
    assert all(d.policy == "auto" for d in ds)  # the policy's name stays: its budget sees every turn
    # kept turns bill the conversation's earlier tokens at the cached price
    first, later = ds[0], ds[-1]
    assert later.cost_usd < (later.prompt_tokens * 1.0 + later.completion_tokens * 2.0) / 1e6
    assert first.cost_usd == pytest.approx((first.prompt_tokens * 1.0 + first.completion_tokens * 2.0) / 1e6)


def test_a_chat_switches_when_another_model_becomes_clearly_better(gw):
    messages: list[dict] = []
    with _client(gw) as client:
        before = {_turn(client, messages, q, user="bo") for q in QUESTIONS[:3]}
        assert len(before) == 1
        kept = before.pop()
        other = "b" if kept == "a" else "a"
        snap = gw.runtime.router.view.snapshot
        prior = tuple(0.99 if m == other else 0.2 for m in snap.models)
        assert gw.runtime.router.swap(msgspec.structs.replace(snap, version=snap.version + 1, prior_mean=prior))
        assert _turn(client, messages, QUESTIONS[3], user="bo") == other
        assert _turn(client, messages, QUESTIONS[4], user="bo") == other  # and stays there
    ds = _requests(gw)
    assert [d.sticky for d in ds] == [False, True, True, False, True]
    assert ds[3].arm == other  # routed afresh: the policy's own propensity, not a kept turn's 1
    assert len({d.conversation_id for d in ds}) == 1


def test_a_chat_moves_when_its_model_fails_and_stays_where_it_moved(gw, fleet):
    messages: list[dict] = []
    with _client(gw) as client:
        kept = {_turn(client, messages, q, user="cy") for q in QUESTIONS[:2]}.pop()
        fleet.providers[kept].mode, fleet.providers[kept].remaining = "500", 1
        moved = _turn(client, messages, QUESTIONS[2], user="cy")
        assert moved != kept
        assert _turn(client, messages, QUESTIONS[3], user="cy") == moved  # healed, but the chat is on `moved` now
    ds = _requests(gw)
    assert [d.turn for d in ds] == [1, 2, 3, 4] and ds[2].sticky and ds[2].arm == kept and ds[2].model == moved
    assert ds[3].sticky and ds[3].arm == moved


def test_a_chat_is_recognised_with_and_without_the_session_header(gw):
    messages: list[dict] = []
    session = {"x-session-id": "chat-77"}
    with _client(gw) as client:
        _turn(client, messages, QUESTIONS[0], extra_headers=session)  # no user: the header names the chat
        _turn(client, messages, QUESTIONS[1])  # no header: recognised by its history
        # the header alone, with a history the hash has never seen: recognised by the session
        _turn(client, [], QUESTIONS[2], extra_headers=session)
    ds = _requests(gw)
    assert [d.turn for d in ds] == [1, 2, 3] and len({d.conversation_id for d in ds}) == 1


def test_two_tenants_identical_chats_never_share_state(gw):
    history = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": "answer from a"}]
    with _client(gw, "acme") as acme, _client(gw, "globex") as globex:
        _turn(acme, [], QUESTIONS[0], user="dee", extra_headers={"x-session-id": "same"})
        # globex sends acme's chat's second turn, with the same user and the same session id: a new chat
        _turn(globex, list(history), QUESTIONS[1], user="dee", extra_headers={"x-session-id": "same"})
        _turn(acme, list(history), QUESTIONS[1], user="dee")
    ds = {(d.tenant, d.turn): d for d in _requests(gw)}
    assert set(ds) == {("acme", 1), ("acme", 2), ("globex", 1)}
    assert ds["globex", 1].conversation_id not in (ds["acme", 1].conversation_id, "")
    assert ds["acme", 2].conversation_id == ds["acme", 1].conversation_id and ds["acme", 2].sticky
    assert not ds["globex", 1].sticky


def test_a_follow_up_is_routed_in_its_conversation_s_cluster_and_alone_elsewhere(fleet, embedder):
    from simulations.pool import topic_examples

    router = {"cluster_examples": topic_examples(), "n_clusters": 4}
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS, models=_models(fleet), router=router) as gw:
        follow_up = "and now the same in Rust"
        with _client(gw) as client:
            first = client.chat.completions.with_raw_response.create(
                model="auto", user="eve", messages=[{"role": "user", "content": QUESTIONS[0]}])
            chat = [{"role": "user", "content": QUESTIONS[0]},
                    {"role": "assistant", "content": first.parse().choices[0].message.content},
                    {"role": "user", "content": follow_up}]  # fmt: skip
            in_context = client.chat.completions.with_raw_response.create(model="auto", user="eve", messages=chat)
            alone = client.chat.completions.with_raw_response.create(
                model="auto", user="eve", messages=[{"role": "user", "content": follow_up}])
        code = first.headers["x-turnout-cluster"]
        assert in_context.headers["x-turnout-cluster"] == code
        assert alone.headers["x-turnout-cluster"] != code
        ds = _requests(gw)
        assert [d.turn for d in ds] == [1, 2, 1]
        # the follow-up's recorded embedding is the context it was routed on, not its text's alone
        assert ds[1].embedding != ds[2].embedding and ds[1].prompt_hash == ds[2].prompt_hash


def test_a_streamed_turn_moves_its_chat_on_too(gw):
    with _client(gw) as client:
        chunks = list(client.chat.completions.create(model="auto", user="fay", stream=True,
                                                     messages=[{"role": "user", "content": QUESTIONS[0]}]))  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        _turn(client, [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": text}],
              QUESTIONS[1], user="fay")
    ds = _requests(gw)
    assert [d.turn for d in ds] == [1, 2] and ds[1].sticky and ds[1].model == ds[0].model
