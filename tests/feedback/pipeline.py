"""Helpers for the event-pipeline tests: events, a sink thread, waiting on exact counts."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Iterator

from feedback.events import DecisionMade, FeedbackGiven, uuid7
from feedback.sink import Sink
from learner.ports import RowStore

__all__ = ["FlakyRows", "decision", "events", "feedback", "running", "wait_for"]


def decision(i: int = 0) -> DecisionMade:
    return DecisionMade(event_id=uuid7(), decision_id=uuid7(), ts_ms=int(time.time() * 1000), cluster=i % 3,
                        model="sim-mini", arm="sim-mini", propensity=0.5,
                        embedding=bytes(range(16)))  # fmt: skip


def feedback(d: DecisionMade, reward: float = 1.0) -> FeedbackGiven:
    return FeedbackGiven(event_id=uuid7(), decision_id=d.decision_id, ts_ms=int(time.time() * 1000), reward=reward)


def events(n: int) -> list[DecisionMade | FeedbackGiven]:
    """``n`` decisions each followed by its feedback (2n events)."""
    out: list[DecisionMade | FeedbackGiven] = []
    for i in range(n):
        d = decision(i)
        out += [d, feedback(d, float(i % 2))]
    return out


def wait_for(cond: Callable[[], bool], timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll ``cond`` until true; fail with ``what`` after ``timeout_s`` (a bound, not a speed claim)."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def running(sink: Sink) -> Iterator[Sink]:
    """Run ``sink`` in a thread; stop it (as SIGTERM would) and join on exit."""
    stop = threading.Event()
    thread = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "sink did not stop"


class FlakyRows:
    """A row store whose ``insert`` fails for its first ``failures`` calls (ClickHouse down)."""

    def __init__(self, inner: RowStore, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0
        self.failed = 0
        self.on_fail: Callable[[], Any] = lambda: None

    def insert(self, events_: Any, streams: Any = None) -> None:
        self.calls += 1
        if self.failed < self.failures:
            self.failed += 1
            self.on_fail()
            raise ConnectionError("injected: ClickHouse is unreachable")
        self.inner.insert(events_, streams)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
