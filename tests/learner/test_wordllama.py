"""The WordLlama adapter: one prompt (the request path) embeds as a batch does, unit norm."""

from __future__ import annotations

import numpy as np

from simulations.pool import DEFAULT_TOPICS, make_prompt

ODD = ["", " ", "a", "x" * 5000, "日本語のテキスト", "🙂🙂 emoji", "\n\t", "def f(x):\n    return x"]


def test_one_prompt_embeds_as_in_a_batch(embedder):
    rng = np.random.default_rng(0)
    prompts = [make_prompt(DEFAULT_TOPICS[i % len(DEFAULT_TOPICS)], rng) for i in range(200)] + ODD
    batch = embedder.embed(prompts)
    one = np.vstack([embedder.embed([p]) for p in prompts])
    assert one.dtype == np.float32 and one.shape == batch.shape == (len(prompts), 256)
    np.testing.assert_allclose(one, batch, rtol=0, atol=1e-6)  # the same arithmetic, the last bit aside
    norms = np.linalg.norm(one, axis=1)
    assert np.allclose(norms[[p.strip() != "" for p in prompts]], 1.0, atol=1e-5)
    assert not one[prompts.index("")].any()  # no tokens: the zero vector, as a batch gives
