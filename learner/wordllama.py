"""Embedder adapter for WordLlama, whose weights ship inside its wheel (no download, CPU, ~50 us a prompt)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from learner.embedding import normalize_rows

__all__ = ["WordLlamaEmbedder"]

_add = np.add.reduce
_TINY = np.float32(1e-12)


class WordLlamaEmbedder:
    """WordLlama token-embedding average, truncated (Matryoshka) to ``dim`` and L2-normalised."""

    def __init__(self, dim: int = 256) -> None:
        if not 1 <= dim <= 256:
            raise ValueError(f"wordllama dim must be in 1..256, got {dim}")
        import wordllama
        from wordllama import WordLlama

        self._model = WordLlama.load(
            cache_dir=Path(wordllama.__file__).parent,
            disable_download=True,
            dim=256,
            trunc_dim=None if dim == 256 else dim,
        )
        self.dim = dim

        self._table = self._model.embedding  # (vocab, dim) float32 token vectors
        self._tokenizer = self._model.tokenizer

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1:  # the request path: one prompt
            return self._embed_one(texts[0])
        vectors = self._model.embed(list(texts), norm=False)
        return normalize_rows(np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1))

    def _embed_one(self, text: str) -> np.ndarray:
        """WordLlama's own arithmetic for a batch of one (token vectors averaged, then scaled to
        unit norm), without the batch machinery (padding, masks, a 3-d gather)."""
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            return np.zeros((1, self._table.shape[1]), dtype=np.float32)
        # the ufuncs and methods themselves, not numpy's Python wrappers (``np.take``, ``.sum``)
        vector = _add(self._table.take(ids, axis=0, mode="clip"), axis=0, dtype=np.float32)
        vector /= np.float32(len(ids))
        norm = np.sqrt(np.dot(vector, vector))
        return (vector / (_TINY if _TINY > norm else norm))[None, :]  # max(norm, tiny), NaN kept
