"""A gateway in front of three local fake providers, with small timeouts so faults resolve fast.

``Fleet`` serves three ``FakeProvider``s (a, b, c) for a whole test module; each test builds its
own runtime (fresh breakers, in-memory event store) with ``fleet.gateway(...)``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import msgspec

from feedback.events import DecisionMade, FeedbackGiven
from feedback.memory import MemoryRowStore, MemorySnapshotStore
from service.settings import Settings
from tests.servers import free_port, serve
from tests.service.providers import FakeProvider

__all__ = ["Fleet", "Gateway"]

# a is the best by far (the bandit sends it nearly everything), so failing a exercises failover.
# Timeouts are 1 s; a misbehaving provider stalls 5 s (it stops as soon as the gateway hangs up).
TIERS = {"a": 0.97, "b": 0.4, "c": 0.3}


class Gateway:
    def __init__(self, url: str, runtime: Any, rows: MemoryRowStore) -> None:
        self.url = url
        self.runtime = runtime
        self.rows = rows

    def events(self) -> list[DecisionMade | FeedbackGiven]:
        self.runtime.sink.flush()
        with self.rows._lock:
            return [e for _, e in self.rows._decisions.values()] + [e for _, e in self.rows._feedback.values()]

    def decisions(self) -> list[DecisionMade]:
        return [e for e in self.events() if isinstance(e, DecisionMade)]

    def feedback(self) -> list[FeedbackGiven]:
        return [e for e in self.events() if isinstance(e, FeedbackGiven)]

    def breaker(self, model: str) -> Any:
        return self.runtime.failover.breakers[model]

    def freeze_breakers(self) -> "FakeClock":
        """Put every breaker on a clock that moves only when told to (open_s without sleeping)."""
        clock = FakeClock()
        for b in self.runtime.failover.breakers.values():
            b.clock = clock
        return clock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


class Fleet:
    def __init__(self) -> None:
        self.providers = {name: FakeProvider(name) for name in TIERS}
        self.urls: dict[str, str] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "Fleet":
        for name, p in self.providers.items():
            self.urls[name] = self._stack.enter_context(serve(p))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def reset(self) -> None:
        for p in self.providers.values():
            p.mode, p.remaining, p.retry_after_s, p.delay_s = "ok", None, 1, 5.0
            p.requests, p.bodies[:], p.auth[:] = 0, [], []

    def settings(self, base: Settings, *, refused: tuple[str, ...] = (), **sections: dict) -> Settings:
        models = [{
            "name": name, "base_url": (f"http://127.0.0.1:{free_port()}" if name in refused else self.urls[name]) + "/v1",
            "upstream_model": f"up-{name}", "tier": tier, "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0,
            "timeout_s": 1.0, "connect_timeout_s": 1.0, "ttft_timeout_s": 1.0, "api_key_env": "FLEET_PROVIDER_KEY",
        } for name, tier in TIERS.items()]  # fmt: skip
        raw = msgspec.to_builtins(base)
        raw["models"] = models
        raw["router"]["embedder"] = "wordllama"
        raw["breaker"] = {"failure_threshold": 3, "open_s": 0.3, "half_open_probes": 1, "close_after": 1}
        raw["retry"] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retry_after_s": 0.5}
        for key, value in sections.items():
            raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
        return msgspec.convert(raw, Settings)

    @contextlib.contextmanager
    def gateway(self, base: Settings, embedder: Any, snapshots: MemorySnapshotStore | None = None,
                **kw: Any) -> Iterator[Gateway]:  # fmt: skip
        """``snapshots``: a store holding snapshots already (the newest goes live); else an empty one."""
        from service.runtime import Runtime

        self.reset()
        rows = MemoryRowStore()
        rt = Runtime(self.settings(base, **kw), embedder=embedder, rows=rows,
                     snapshots=snapshots if snapshots is not None else MemorySnapshotStore(), learner=False)  # fmt: skip
        try:
            with serve(rt.app) as url:
                yield Gateway(url, rt, rows)
        finally:
            rt.stop()
