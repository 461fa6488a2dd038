"""The response cache's keys and settings: what makes two requests the same, and bad [cache] values."""

from __future__ import annotations

import msgspec
import pytest

from service.caching import request_keys
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
