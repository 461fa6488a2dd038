"""The real openai SDK against the gateway while a provider fails, and with keys and rate limits."""

from __future__ import annotations

import asyncio

import openai
import pytest

from service.settings import load_settings
from service.tenants import hash_key
from tests.service.fleet import Fleet

KEY = "sk-sdk-tenant-4d9e2b7c"
TENANTS = [{"name": "sdk", "api_key_sha256": [hash_key(KEY)], "rate_limit_rps": 0.01, "rate_limit_burst": 8}]
MSG = [{"role": "user", "content": "Write a Python function that merges two sorted lists."}]


@pytest.fixture(scope="module")
def fleet():
    with Fleet() as f:
        yield f


@pytest.fixture
def gw(fleet, embedder):
    with fleet.gateway(load_settings(None, {}), embedder, tenants=TENANTS) as g:
        fleet.providers["a"].mode = "500"  # the bandit's favourite fails on every request
        yield g


def test_sync_async_and_streaming_see_no_error_while_a_provider_fails(gw):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
        completion = raw.parse()
        assert completion.model in ("b", "c") and completion.choices[0].message.content.startswith("answer from")
        assert raw.headers["x-turnout-fallbacks"] == "1" and raw.headers["x-turnout-model"] == completion.model
        chunks = list(client.chat.completions.create(model="auto", messages=MSG, stream=True,
                                                     stream_options={"include_usage": True}))  # fmt: skip
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text in ("answer from b", "answer from c") and chunks[-1].usage.completion_tokens == 3

    async def many() -> list:
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
            return await asyncio.gather(*[client.chat.completions.create(model="auto", messages=MSG) for _ in range(4)])

    assert all(r.model in ("b", "c") for r in asyncio.run(many()))


def test_sdk_errors_auth_rate_limit_and_every_provider_down(gw, fleet):
    with openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="auto", messages=MSG)
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0) as client:
        for p in fleet.providers.values():
            p.mode = "500"
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="auto", messages=MSG)
        assert info.value.status_code == 502 and info.value.response.headers["x-turnout-decision-id"]
        for _ in range(8):  # the burst is used up...
            try:
                client.chat.completions.create(model="auto", messages=MSG)
            except openai.InternalServerError:
                pass
            except openai.RateLimitError:
                break
        with pytest.raises(openai.RateLimitError) as info:  # ...then 429 with a Retry-After the SDK can honour
            client.chat.completions.create(model="auto", messages=MSG)
        assert int(info.value.response.headers["retry-after"]) >= 1


def test_sdk_stream_failing_mid_way_raises_an_api_error_and_does_not_hang(gw, fleet):
    a = fleet.providers["a"]
    a.mode = "stall"
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY, max_retries=0, timeout=10) as client:
        stream = client.chat.completions.create(model="a", messages=MSG, stream=True)
        got = []
        with pytest.raises(openai.APIError, match="failed mid-stream"):
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) == "answer"
