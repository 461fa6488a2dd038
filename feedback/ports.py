"""The port of the event path that is feedback's own: where events go (sink).

Its in-memory adapter (``memory.py``) sits beside the real ones (``inprocess.py``, ``kafka.py``).
The row store, snapshot store and learner log are the learner's ports (``learner/ports.py``);
the adapters here implement them.
"""

from __future__ import annotations

from typing import Protocol

from feedback.events import Event

__all__ = ["EventSink"]


class EventSink(Protocol):
    """Takes events off the request path; must never lose one it accepted."""

    def publish(self, event: Event) -> None: ...

    def flush(self, timeout_s: float = 10.0) -> bool: ...

    def close(self) -> None: ...
