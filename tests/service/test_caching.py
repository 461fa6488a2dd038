"""The response cache's keys and settings: what makes two requests the same, and bad [cache] values."""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np
import pytest

from service.caching import _NUMBER, _norm, request_keys
from service.settings import ConfigError, load_settings


def keys(**body) -> tuple[bytes, bytes]:
    body = {"model": "auto", "messages": [{"role": "user", "content": "Boil an egg"}], **body}
    return request_keys(msgspec.json.encode(body))


def test_whitespace_stream_and_user_do_not_change_the_key():
    base = keys(temperature=0)
    assert keys(messages=[{"role": "user", "content": "  Boil\n an   egg "}], temperature=0) == base
    assert keys(temperature=0, stream=True, stream_options={"include_usage": True}, user="ann") == base
    assert keys(temperature=0, messages=[{"role": "user", "content": [{"type": "text", "text": "Boil  an egg"}]}]
                )[1] == keys(temperature=0, messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}])[1]


@pytest.mark.parametrize("change", [
    {"model": "gpt-4o"}, {"temperature": 0.5}, {"max_tokens": 10}, {"seed": 3}, {"response_format": {"type": "json_object"}},
    {"messages": [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Boil an egg"}]},
])  # fmt: skip
def test_policy_sampling_unknown_fields_and_context_change_both_keys(change):
    base = keys(temperature=0)
    other = keys(**{"temperature": 0, **change})
    assert other[0] != base[0] and other[1] != base[1]


def test_the_last_user_message_changes_only_the_exact_key():
    a, b = keys(temperature=0), keys(temperature=0, messages=[{"role": "user", "content": "Boil two eggs"}])
    assert a[0] != b[0] and a[1] == b[1]


def test_cache_is_off_by_default_and_tenants_may_opt_out():
    s = load_settings(None, {"TURNOUT_CACHE__ENABLED": "true"})
    assert not load_settings(None, {}).cache.enabled and s.cache.enabled and s.cache.similarity == 0.95


@pytest.mark.parametrize("key, value", [
    ("ttl_s", "0"), ("max_entries", "0"), ("max_bytes", "0"), ("similarity", "1.5"), ("similarity", "0"),
    ("min_quality", "1"), ("evict_below", "0"), ("header", "x turnout"),
])  # fmt: skip
def test_bad_cache_settings_name_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        load_settings(None, {f"TURNOUT_CACHE__{key.upper()}": value})
    assert f"cache.{key}" in str(err.value)


def test_an_unknown_cache_key_is_refused(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text("[cache]\nenabled = true\nsimilarty = 0.9\n")
    with pytest.raises(ConfigError, match="similarty"):
        load_settings(path)


def test_the_numbers_of_the_question_are_part_of_the_context():
    a = keys(temperature=0, messages=[{"role": "user", "content": "Solve 3x + 7 = 22"}])
    b = keys(temperature=0, messages=[{"role": "user", "content": "Solve 3x + 7 = 25"}])
    c = keys(temperature=0, messages=[{"role": "user", "content": "Please solve 3x + 7 = 22"}])
    assert a[1] != b[1] and a[1] == c[1]  # cosine 0.97 between the first two (wordllama): never one answer


def _whole_body_keys(raw: bytes) -> tuple[bytes, bytes]:
    """The keys as first defined: the whole normalised body hashed, and again with the last user
    message replaced by its numbers (the reference the keys of ``request_keys`` must partition alike)."""
    enc = msgspec.json.Encoder(order="sorted")
    body = msgspec.json.decode(raw)
    for k in ("stream", "stream_options", "user"):
        body.pop(k, None)
    messages = [dict(m, content=_norm(m.get("content"))) for m in body["messages"]]
    body["messages"] = messages
    exact = hashlib.blake2b(enc.encode(body), digest_size=16).digest()
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    content = messages[last]["content"]
    numbers = _NUMBER.findall(content if isinstance(content, str) else enc.encode(content).decode())
    body["messages"] = messages[:last] + [{"role": "user", "content": None, "numbers": numbers}] + messages[last + 1 :]
    return exact, hashlib.blake2b(enc.encode(body), digest_size=16).digest()


def test_the_keys_make_the_same_requests_equal_as_hashing_the_whole_body():
    rng = np.random.default_rng(0)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    asked = ["Boil an egg", "Boil  an\negg ", "Boil 2 eggs", "Boil 3 eggs", "boil an egg",
             [{"type": "text", "text": "Boil an  egg"}], [{"type": "text", "text": "Boil 2 eggs"}]]  # fmt: skip
    system = [[], [{"role": "system", "content": "Be brief."}], [{"role": "system", "content": " Be  brief."}]]
    before = [[], [{"role": "user", "content": "Boil an egg"}, {"role": "assistant", "content": "Ten minutes."}],
              [{"role": "user", "content": "Boil 2 eggs"}, {"role": "assistant", "content": "Ten minutes."}]]  # fmt: skip
    after = [[], [{"role": "assistant", "content": "Boil an egg"}], [{"role": "tool", "content": "2", "tool_call_id": "t"}]]
    raws = []
    for _ in range(3000):
        body = {"model": pick(["auto", "gpt-4o"]), **pick([{}, {"temperature": 0}, {"seed": 2}]),
                **pick([{}, {"stream": True, "user": "ann"}]),
                "messages": pick(system) + pick(before) + [{"role": "user", "content": pick(asked)}] + pick(after)}  # fmt: skip
        raws.append(msgspec.json.encode(body))
    new = [request_keys(r) for r in raws]
    ref = [_whole_body_keys(r) for r in raws]
    assert [c for _, c in new] == [c for _, c in ref]  # the context key is the same bytes
    pairs = {(n, r) for (n, _), (r, _) in zip(new, ref)}  # one exact key for one reference key, both ways
    assert len(pairs) == len({n for n, _ in pairs}) == len({r for _, r in pairs}) > 100
