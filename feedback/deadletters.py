"""Dead letters: messages from Kafka that are not valid events, kept with the reason and the bytes.

The sink sends each one to the dead-letter topic and to a ``DeadLetterStore`` (a ClickHouse
table in production, a list in tests), then goes on with the stream behind it.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Protocol, Sequence

import msgspec

__all__ = ["DeadLetter", "DeadLetterStore", "MemoryDeadLetterStore", "letter_id"]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """One message that could not be stored as an event: where it was read, why, its bytes."""

    letter_id: str
    topic: str
    partition: int
    offset: int
    key: bytes
    error: str
    payload: bytes
    received_ms: int


def letter_id(topic: str, partition: int, offset: int, payload: bytes) -> str:
    """Stable id of a dead letter: the same message read twice gets the same id."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{topic}\x00{partition}\x00{offset}\x00".encode())
    h.update(payload)
    return h.hexdigest()


class DeadLetterStore(Protocol):
    """Keeps dead letters; idempotent by ``letter_id``."""

    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]: ...


class MemoryDeadLetterStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._letters: dict[str, DeadLetter] = {}

    def insert_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        with self._lock:
            for letter in letters:
                self._letters.setdefault(letter.letter_id, letter)

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        with self._lock:
            return list(self._letters.values())[-limit:]
