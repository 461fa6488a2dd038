"""The skeleton's learning loop over real HTTP, with ``[events] backend = "kafka"``: the service's
events go through the producer, the Tansu broker and the sink into ClickHouse before each cycle."""

from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from tests.feedback.pipeline import wait_for
from tests.feedback.test_pipeline_faults import kafka_settings
from tests.servers import serve
from tests.service.learning import learn_preferences


@pytest.fixture
def kafka_runtime(settings, embedder, kafka_broker, unique_topics, tmp_path) -> Iterator[Any]:
    from service.runtime import Runtime

    rt = Runtime(kafka_settings(settings, kafka_broker.bootstrap, unique_topics, tmp_path / "spill"),
                 embedder=embedder, sim_latency_scale=0.0, embedded_sink=True)  # fmt: skip
    assert rt.settings.events.backend == "kafka" and rt.pipeline is not None
    rt.start_pipeline()
    yield rt
    rt.stop()


def _stored(rt: Any) -> int:
    q = "SELECT (SELECT uniqExact(event_id) FROM decisions) + (SELECT uniqExact(event_id) FROM feedback)"
    return int(rt.client.query(q).result_rows[0][0])


def _learn(rt: Any) -> Any:
    """A learning cycle once everything the service published is in ClickHouse."""

    def learn() -> Any:
        assert rt.sink.flush(30.0)
        accepted = rt.sink.accepted
        wait_for(lambda: _stored(rt) >= accepted, what=f"{accepted} events through Kafka")
        return rt.cycle.run()

    return learn


def test_each_topic_goes_mostly_to_its_preferred_model_through_kafka(kafka_runtime):
    with serve(kafka_runtime.app) as url:
        shares = learn_preferences(url, _learn(kafka_runtime))
    assert shares["code"] >= 0.7, shares
    assert shares["cooking"] >= 0.7, shares
    assert kafka_runtime.sink.stats()["sent"] == kafka_runtime.sink.accepted  # all of it went through Kafka


def test_router_state_moves_after_feedback_through_kafka(kafka_runtime):
    with serve(kafka_runtime.app) as url, httpx.Client(base_url=url) as c:
        before = c.get("/v1/router/state").json()
        for _ in range(20):
            r = c.post("/v1/chat/completions", json={"model": "sim-mini", "messages": [
                {"role": "user", "content": "Give me a recipe for banana bread."}]})  # fmt: skip
            c.post("/v1/feedback", json={"decision_id": r.headers["x-turnout-decision-id"], "rating": "up"})
        _learn(kafka_runtime)()
        after = c.get("/v1/router/state").json()
    assert after["version"] == before["version"] + 1
    cluster = int(r.headers["x-turnout-cluster"])
    m_before = before["clusters"][cluster]["models"]["sim-mini"]
    m_after = after["clusters"][cluster]["models"]["sim-mini"]
    assert m_after["evidence"] == m_before["evidence"] + 20
    assert m_after["decisions"] == 20
    assert after["events"]["sent"] == 40 and after["sink"]["events"] >= 40
