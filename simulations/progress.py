"""A progress bar on stderr for long runs, drawn only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``with Progress(total, "replay") as bar: bar.advance(k)``; redraws at most 10 times a second."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.total = max(1, total)
        self.label = label
        self.done = 0
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._last = 0.0

    def advance(self, k: int = 1) -> None:
        self.done += k
        if self._enabled:
            now = time.monotonic()
            if now - self._last >= 0.1 or self.done >= self.total:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        frac = min(1.0, self.done / self.total)
        filled = int(30 * frac)
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        self._stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
            f"{elapsed:5.1f}s eta {eta:4.0f}s"
        )
        self._stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._enabled:
            self._draw(time.monotonic())
            self._stream.write("\n")
            self._stream.flush()
