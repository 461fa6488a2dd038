"""The real openai SDK against the running service: change base_url, nothing else."""

from __future__ import annotations

import asyncio

import openai
import pytest


def test_sync_client_non_streaming(live, runtime):
    with openai.OpenAI(base_url=live + "/v1", api_key="unused") as client:
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Plan a three day itinerary for Lisbon."}]
        )
    completion = raw.parse()
    assert completion.model in runtime.prior.models
    assert completion.choices[0].message.content
    assert completion.usage.total_tokens > 0
    assert raw.headers["x-turnout-model"] == completion.model
    assert raw.headers["x-turnout-decision-id"]


def test_sync_client_streaming(live):
    with openai.OpenAI(base_url=live + "/v1", api_key="unused") as client:
        stream = client.chat.completions.create(
            model="auto", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "Write a Python function that merges two sorted arrays."}],
        )  # fmt: skip
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "simulated answer" in text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)


def test_async_client(live):
    async def go():
        client = openai.AsyncOpenAI(base_url=live + "/v1", api_key="unused")
        results = await asyncio.gather(*[
            client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"What is {i} + {i}?"}])
            for i in range(5)
        ])  # fmt: skip
        await client.close()
        return results

    results = asyncio.run(go())
    assert len({r.id for r in results}) == 5


def test_sdk_sees_errors_as_typed_exceptions(live):
    with openai.OpenAI(base_url=live + "/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError, match="unknown model"):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="auto", messages=[])


def test_models_list(live, runtime):
    with openai.OpenAI(base_url=live + "/v1", api_key="unused") as client:
        ids = {m.id for m in client.models.list()}
    assert "auto" in ids and set(runtime.prior.models) <= ids
