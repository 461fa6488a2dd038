"""Embedder adapter for WordLlama, whose weights ship inside its wheel (no download, CPU, ~60 us)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from learner.embedding import normalize_rows

__all__ = ["WordLlamaEmbedder"]


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

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.embed(list(texts), norm=False)
        return normalize_rows(np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1))
