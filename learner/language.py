"""The language port: a prompt's language, and the routing context that carries it.

``LanguageDetector.detect`` maps a text to an ISO 639-1 code ("en", "zh", ...) or "" when it
cannot tell. ``Cld2Detector`` is the shipped adapter (pycld2: Chromium's compact language
detector, its model compiled into the wheel, about 20 us a short prompt, chosen by
``python -m bench.language``); ``NoDetector`` is the off switch and the in-memory adapter.

``in_language`` is the language step of the routing context: the prompt's embedding moved
toward a fixed direction of its language, ``normalize(e + weight * u_lang)``. Prompts of one
language then sit closer to each other than to any prompt of another, so the learner's k-means
keeps its clusters within one language, with no other change to clustering or routing. ``u_lang``
is a pseudo-random unit vector seeded by the language code alone, so every replica and every
offline run moves a prompt the same way; an unknown language ("") is not moved.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

import numpy as np

from learner.embedding import Embedder

__all__ = [
    "Cld2Detector", "LanguageDetector", "NoDetector", "build_detector", "direction", "in_language", "routing_context",
]

# Japanese writes with kana; CLD2 takes some short kana-less Chinese (Han only) for Japanese
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")


class LanguageDetector(Protocol):
    """text -> ISO 639-1 code, or "" when the language is not known."""

    def detect(self, text: str) -> str: ...


class NoDetector:
    """Detects nothing: every prompt's language is "" (the language step off)."""

    def detect(self, text: str) -> str:
        return ""


class Cld2Detector:
    """CLD2 through pycld2. Reads at most ``max_chars`` of the prompt (its start), so a long
    prompt costs what a short one does. CLD2's best guess is taken even when CLD2 calls it
    unreliable (on short prompts it mostly is, and mostly right: ``bench.language``); where it
    finds no language, its best-effort mode (no minimum of text) is asked once more."""

    def __init__(self, max_chars: int = 400) -> None:
        import pycld2

        self._detect = pycld2.detect
        self._error = pycld2.error
        self.max_chars = max_chars

    def detect(self, text: str) -> str:
        head = text[: self.max_chars]
        try:
            code = self._detect(head)[2][0][1]
            if code == "un":  # too little text for CLD2's usual threshold: its best effort
                code = self._detect(head, bestEffort=True)[2][0][1]
        except (self._error, ValueError, UnicodeError):  # lone surrogates, invalid UTF-8
            return ""
        if code == "un":
            return ""
        code = code.split("-")[0]  # zh-Hant -> zh
        if code == "ja" and not _KANA.search(head):
            return "zh"
        return code


def routing_context(text: str, embedder: Embedder, detector: LanguageDetector, weight: float,
                    ) -> tuple[str, np.ndarray, np.ndarray]:  # fmt: skip
    """What routing reads of a prompt, as the service and the offline runs compute it:
    (language, the text's embedding (d,), the routing context (d,): ``in_language`` of both)."""
    language = detector.detect(text)
    embedding = embedder.embed([text])[0]
    return language, embedding, in_language(embedding, language, weight)


def build_detector(name: str) -> LanguageDetector:
    """The detector named in ``[language] detector``: "cld2" or "none"."""
    if name == "none":
        return NoDetector()
    if name == "cld2":
        return Cld2Detector()
    raise ValueError(f"unknown language detector '{name}' (cld2, none)")


_DIRECTIONS: dict[tuple[str, int], np.ndarray] = {}


def direction(language: str, dim: int) -> np.ndarray:
    """The language's unit vector in the embedding space: (dim,) float32, read-only, the same for
    every process (seeded by a hash of the code)."""
    got = _DIRECTIONS.get((language, dim))
    if got is None:
        seed = int.from_bytes(hashlib.blake2b(language.encode(), digest_size=8).digest(), "little")
        v = np.random.default_rng(seed).standard_normal(dim)
        got = (v / np.linalg.norm(v)).astype(np.float32)
        got.setflags(write=False)
        _DIRECTIONS[(language, dim)] = got
    return got


def in_language(embedding: np.ndarray, language: str, weight: float) -> np.ndarray:
    """The routing context of a prompt: embedding (d,) unit norm, moved toward its language's
    direction by ``weight`` and renormalised, (d,) float32. ``weight`` 0 or language "": the
    embedding itself."""
    if weight <= 0 or not language:
        return embedding
    v = embedding + np.float32(weight) * direction(language, embedding.shape[0])
    return (v / np.linalg.norm(v)).astype(np.float32, copy=False)
