"""Shared fixtures: settings on a temporary chDB directory, the real embedder, a running service."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import msgspec
import pytest

from learner.embedding import Embedder
from service.settings import Settings, load_settings
from tests.kafka_broker import broker_factory, kafka_broker, unique_topics  # noqa: F401  (Kafka fixtures)


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real wordllama embedder (weights from its wheel), loaded once per session."""
    from learner.wordllama import WordLlamaEmbedder

    return WordLlamaEmbedder(256)


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One chDB engine path for the whole session (chDB allows one per process)."""
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def ch_database(request: pytest.FixtureRequest) -> str:
    """A fresh ClickHouse database name per test: tests share the engine, not the data."""
    return "t_" + uuid.uuid4().hex[:12]


@pytest.fixture
def settings(tmp_path: Path, chdb_dir: Path, ch_database: str) -> Settings:
    """Default settings on the session's embedded ClickHouse, in a database of this test's own."""
    base = load_settings(None, {})
    return msgspec.structs.replace(
        base,
        storage=msgspec.structs.replace(
            base.storage, data_dir=str(tmp_path / "turnout"), clickhouse_dsn=f"chdb://{chdb_dir}",
            clickhouse_database=ch_database,
        ),
        learner=msgspec.structs.replace(base.learner, grace_s=0.0),
    )


@pytest.fixture
def runtime(settings: Settings, embedder: Embedder) -> Iterator:
    """A wired runtime (service, in-process bus, chDB, learner) with zero simulated latency.

    The scheduler is not started: tests run learning cycles themselves.
    """
    from service.runtime import Runtime

    rt = Runtime(settings, embedder=embedder, sim_latency_scale=0.0)
    yield rt
    rt.stop()


@pytest.fixture
def live(runtime) -> Iterator[str]:
    """The runtime's app served over real HTTP; yields the base URL."""
    from tests.servers import serve

    with serve(runtime.app) as url:
        yield url
