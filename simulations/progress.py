"""Progress of long runs on stderr: a bar on a terminal, a plain line every few seconds elsewhere.

A CI log or a file gets ``replay: 1200/10000 (12%), 35 s, eta 256 s`` every ``every_s`` seconds
(none for a run shorter than that), so a long run is never silent for minutes.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

__all__ = ["Progress"]


class Progress:
    """``with Progress(total, "replay") as bar: bar.advance(k)``.

    ``enabled``: True draws the bar, False nothing, None (default) the bar on a terminal and
    lines elsewhere. The bar redraws at most 10 times a second; ``clock`` is injected for tests.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None,
                 every_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.total = max(1, total)
        self.label = label
        self.done = 0
        self._stream = stream or sys.stderr
        tty = self._stream.isatty()
        self._bar = tty if enabled is None else enabled
        self._lines = enabled is None and not tty
        self._every_s = every_s
        self._clock = clock
        self._start = clock()
        self._last = self._start if self._lines else 0.0
        self._printed = 0  # lines written (line mode)

    def advance(self, k: int = 1) -> None:
        self.done += k
        if not (self._bar or self._lines):
            return
        now = self._clock()
        if self._bar and (now - self._last >= 0.1 or self.done >= self.total):
            self._last = now
            self._draw(now)
        elif self._lines and now - self._last >= self._every_s:
            self._last = now
            self._line(now)

    def _eta(self, now: float) -> tuple[float, float, float]:
        frac = min(1.0, self.done / self.total)
        elapsed = now - self._start
        return frac, elapsed, (elapsed / frac - elapsed if frac > 0 else 0.0)

    def _draw(self, now: float) -> None:
        frac, elapsed, eta = self._eta(now)
        filled = int(30 * frac)
        self._stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
            f"{elapsed:5.1f}s eta {eta:4.0f}s"
        )
        self._stream.flush()

    def _line(self, now: float) -> None:
        frac, elapsed, eta = self._eta(now)
        self._stream.write(f"{self.label}: {self.done}/{self.total} ({frac:.0%}), {elapsed:.0f} s, eta {eta:.0f} s\n")
        self._stream.flush()
        self._printed += 1

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar:
            self._draw(self._clock())
            self._stream.write("\n")
            self._stream.flush()
        elif self._printed:  # a run long enough to have said where it was says that it finished
            self._line(self._clock())
