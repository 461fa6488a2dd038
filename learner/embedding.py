"""The embedder port: text in, unit-norm float32 vectors out.

The router only needs ``embed`` and ``dim``. Adapters live beside this file, named for their
technology (``wordllama.py``); a remote ``/v1/embeddings`` endpoint, model2vec or ONNX can
replace the default without touching the core.
"""

from __future__ import annotations

import hashlib
from typing import Protocol, Sequence

import numpy as np

__all__ = ["Embedder", "HashingEmbedder", "normalize_rows", "prompt_hash"]


class Embedder(Protocol):
    """Maps texts to L2-normalised embeddings of shape (n, dim), float32."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Scale each row of ``x`` (n, d) to unit L2 norm; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def prompt_hash(text: str) -> str:
    """A stable hash of the prompt, logged instead of its text."""
    return hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=16).hexdigest()


class HashingEmbedder:
    """A dependency-free embedder: signed feature hashing of word unigrams and bigrams.

    Not a semantic model: it is the in-memory adapter of the port, for contract tests and for
    environments without the wordllama weights.
    """

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            words = text.lower().split()
            for tok in words + [a + " " + b for a, b in zip(words, words[1:])]:
                h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        return normalize_rows(out)
